"""The family registry, as timm keeps `register_model` / `create_model` / `list_models`: each family
(statutes, items, images) registers its corpus builders and its index opener here; `build_index` and
`open_index` are the one library entry point the CLI, batch runs and `ragcli serve` all go through.

Families are found through the `ragcli.families` entry-point group (pyproject.toml), imported the
first time the registry is asked, so `ragcli --help` imports none of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from indexes.errors import UserError
from indexes.requests import BuildRequest

if TYPE_CHECKING:
    from indexes.engine import Engine
    from indexes.index import ManifestIndex

Builder = Callable[[BuildRequest, Path], "ManifestIndex | None"]  # None: one shard written
Opener = Callable[["ManifestIndex", str], "Engine"]
# BuildRequest fields every family takes; the others must be named in a family's `build_options`
COMMON_OPTIONS = frozenset({"corpus", "kind", "metric", "device", "seed", "overwrite", "backend", "uri", "shard",
                            "shard_dir", "from_shards"})


@dataclass(frozen=True)
class Family:
    """What a family plugs in: its name (recorded in every index manifest it builds), corpus builders by
    corpus name, an opener turning a loaded index into a warm `Engine`, and the build options it takes."""

    name: str
    corpora: Mapping[str, Builder]
    opener: Opener
    build_options: frozenset[str] = field(default_factory=frozenset)
    accepts_path: bool = False  # a corpus given as a path to a dataset belongs to this family


_FAMILIES: dict[str, Family] = {}
_loaded_entry_points = False


def register_family(family: Family) -> Family:
    """Add (or replace) a family; returns it, so a module can write `FAMILY = register_family(Family(...))`."""
    unknown = set(family.build_options) - {f.name for f in fields(BuildRequest)}
    if unknown:
        raise ValueError(f"family {family.name!r} names unknown build options {sorted(unknown)}")
    _FAMILIES[family.name] = family
    return family


def _families() -> dict[str, Family]:
    global _loaded_entry_points
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for point in entry_points(group="ragcli.families"):
            if point.name not in _FAMILIES:
                point.load()  # the module registers itself
    return _FAMILIES


def list_families() -> list[str]:
    return sorted(_families())


def list_corpora() -> list[str]:
    """Every corpus name a family builds (a recsys dataset can also be given as a path)."""
    return sorted(name for family in _families().values() for name in family.corpora)


def family_for_corpus(corpus: str) -> tuple[Family, Builder]:
    """The family and builder for a corpus name; a path that exists goes to the family taking paths."""
    for family in _families().values():
        if corpus in family.corpora:
            return family, family.corpora[corpus]
    if "/" in corpus or os.path.exists(corpus):
        for family in _families().values():
            if family.accepts_path:
                return family, next(iter(family.corpora.values()))
    raise UserError(f"unknown corpus {corpus!r}: use one of {', '.join(list_corpora())} or a path to a dataset")


def check_build_options(family: Family, request: BuildRequest) -> None:
    """Options a family does not take are refused, not silently ignored."""
    defaults = BuildRequest(corpus=request.corpus)
    given = {f.name for f in fields(BuildRequest) if getattr(request, f.name) != getattr(defaults, f.name)}
    refused = sorted(given - COMMON_OPTIONS - family.build_options)
    if refused:
        names = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise UserError(f"corpus {request.corpus!r} does not take {names}")


def build_index(request: BuildRequest, name_or_path: str | os.PathLike, overwrite: bool = False) -> Engine:
    """Build `request.corpus` into the index `name_or_path` (a name under $RAGCLI_HOME, or a path) and
    return it opened. Another build of the same name at once is refused; replacing needs `overwrite`."""
    from indexes.backends import check_backend
    from indexes.files import check_output, output_lock
    from indexes.store import index_path

    if request.shard is not None or request.shard_dir is not None:
        raise UserError("--shard and --shard-dir embed one shard (no index is built); drop --name / --overwrite")
    family, builder = family_for_corpus(request.corpus)
    check_build_options(family, request)
    check_backend(request.backend, request.uri)
    out = index_path(name_or_path)
    with output_lock(out):  # a second build of the same name fails now, not after encoding the corpus
        check_output(out, overwrite, "index")
        request.overwrite = overwrite
        builder(request, out)
    return open_index(out, device=request.device)


def build_shard(request: BuildRequest) -> dict[str, object]:
    """Embed shard `request.shard` of `request.corpus` into `request.shard_dir` (see `indexes.shards`);
    `build_index` with `request.from_shards` then assembles the index from every shard."""
    import numpy as np

    from indexes.files import output_lock
    from indexes.shards import shard_path

    if request.shard is None or request.shard_dir is None or request.from_shards is not None:
        raise UserError("a shard build takes --shard I/N and --shard-dir DIR (and no --from-shards)")
    family, builder = family_for_corpus(request.corpus)
    check_build_options(family, request)
    out = shard_path(request.shard_dir, request.shard)
    with output_lock(out):
        builder(request, out)
    with np.load(out, allow_pickle=False) as archive:
        rows, dim = archive["embeddings"].shape
    return {"shard": f"{request.shard[0]}/{request.shard[1]}", "file": str(out), "rows": int(rows), "dim": int(dim)}


def open_index(name_or_path: str | os.PathLike, device: str = "auto", shard: bool = False) -> Engine:
    """Load an index and everything its family needs to answer (models, BM25) once: a warm `Engine`."""
    from indexes.backends import load_vectors
    from indexes.store import index_path

    path = index_path(name_or_path)
    index = load_vectors(path, device=device, shard=shard)
    family = index.encoder.get("family")
    if family not in _families():
        raise UserError(f"index {str(name_or_path)!r} was built by an unknown family {family!r}")
    engine = _families()[family].opener(index, device)
    engine.name = Path(str(name_or_path)).name
    return engine

