"""Where named indexes live: `$RAGCLI_HOME/indexes/NAME`, else the platform's user data dir."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import platformdirs

from indexes.errors import UserError
from indexes.files import expand
from indexes.index import MANIFEST_FILE, read_manifest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def ragcli_home() -> Path:
    """The root for ragcli's named indexes and downloaded data."""
    return Path(os.environ.get("RAGCLI_HOME") or platformdirs.user_data_dir("ragcli"))


def looks_like_path(text: str) -> bool:
    """A path must look like one (contains '/', or starts with '.' or '~'); anything else is a name,
    whatever files happen to be in the working directory."""
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def index_path(name_or_path: str | os.PathLike) -> Path:
    """A name means `<home>/indexes/NAME`; a path (see `looks_like_path`) is taken as it is."""
    text = str(name_or_path)
    if isinstance(name_or_path, os.PathLike) or looks_like_path(text):
        return expand(text)
    if not _NAME.match(text) or len(text) > 200:
        raise UserError(f"bad index name {text!r}: use letters, digits, '.', '_' and '-'")
    return ragcli_home() / "indexes" / text


def list_indexes() -> list[dict[str, Any]]:
    """Name, rows, kind, metric and encoder of every named index under the home."""
    root = ragcli_home() / "indexes"
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name.startswith(".") or not (entry / MANIFEST_FILE).is_file():  # hidden: versions, locks
            continue
        try:
            manifest = read_manifest(entry)
        except UserError as err:
            found.append({"name": entry.name, "error": str(err)})
            continue
        found.append({"name": entry.name, "rows": manifest["rows"], "kind": manifest["kind"],
                      "metric": manifest["metric"], "encoder": manifest.get("encoder", {}).get("name", "")})
    return found
