"""The samples ragcli ships (written for this project): `coliee-sample` and `recsys-sample`, found as
package data of `ragcli.data` (the repository's `data/` folder), wherever ragcli is installed."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from indexes.errors import UserError

SAMPLES = ("coliee-sample", "recsys-sample")


def sample_dir(name: str) -> Path:
    """The folder of the bundled sample `name`."""
    if name not in SAMPLES:
        raise UserError(f"unknown sample {name!r}; the bundled ones are {', '.join(SAMPLES)}")
    folder = Path(str(files("ragcli.data") / name))
    if not folder.is_dir():
        raise UserError(f"the bundled sample {name} is missing from this installation (looked in {folder})")
    return folder
