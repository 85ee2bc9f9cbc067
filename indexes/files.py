"""How ragcli touches a user's files: one overwrite policy, atomic replacement, one writer at a time,
and reads of regular files only.

A directory ragcli writes (an index, a model, a dataset) is published under its name as a symlink onto a
hidden version directory beside it (`.NAME.v-<stamp>`), holding a marker file (`.ragcli.json`). Replacing
it writes a new version, then flips the symlink with one `rename`: a reader (or a crash) sees the old
version or the new one, never neither. The previous version is kept until the next replace, so a
reader that resolved the name just before the flip can finish loading it. `--overwrite` only ever replaces such a directory (or an older
ragcli index with a valid manifest), never anything else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import threading
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexes.errors import UserError

MARKER_FILE = ".ragcli.json"
KINDS = ("index", "model", "dataset")
_held_locks: dict[tuple[int, Path], tuple[int, int]] = {}  # (thread, lock path) -> (fd, depth): re-entrant per thread
_held_locks_guard = threading.Lock()


def expand(path: str | os.PathLike) -> Path:
    """`path` with a leading `~` or `~user` expanded; an unknown user is a UserError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise UserError(f"cannot expand {str(path)[:80]!r}: no such user home") from None


def _absolute(target: str | os.PathLike) -> Path:
    """The target with its parent resolved (the last component may itself be our symlink)."""
    target = expand(target)
    if target.name in ("", ".", ".."):
        raise UserError(f"{target} cannot be used as an output name")
    return target.parent.resolve() / target.name


def _versions(target: Path) -> list[Path]:
    """`target`'s own version directories (an anchored match: `.foo.v-1.v-*` is not foo's)."""
    return _siblings(target, r"v-(?:\d{8}T\d{6}-[0-9a-f]{8}|0-legacy-[0-9a-f]{8})")


def _siblings(target: Path, suffix: str) -> list[Path]:
    pattern = re.compile(re.escape(f".{target.name}.") + suffix)
    entries = os.listdir(target.parent) if target.parent.is_dir() else []
    return sorted(target.parent / name for name in entries if pattern.fullmatch(name))


def _marker(directory: Path) -> dict[str, Any] | None:
    """The ragcli marker of a directory, or None when it has none (or a broken one)."""
    try:
        marker = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("written_by") == "ragcli" else None


def written_by_ragcli(target: str | os.PathLike) -> bool:
    """True when `target` is a directory ragcli wrote: our symlink onto a marked version, a marked
    directory, or an index directory with a valid manifest (indexes written before markers existed)."""
    target = _absolute(target)
    if target.is_symlink():
        link = os.readlink(target)
        inside = Path(link).parent == Path(".") and link.startswith(f".{target.name}.v-")
        return inside and target.is_dir() and _marker(target) is not None
    if not target.is_dir():
        return False
    if _marker(target) is not None:
        return True
    from indexes.index import read_manifest

    try:
        read_manifest(target)
    except UserError:
        return False
    return True


def check_output(target: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """Refuse, before any work, to write `target` when that would replace something: it must not exist,
    or `overwrite` is given and it is a directory ragcli wrote. Returns the absolute target."""
    path = _absolute(target)
    if not (path.exists() or path.is_symlink()):
        return path
    if not written_by_ragcli(path):
        raise UserError(f"{target} exists and was not written by ragcli; refusing to replace it "
                        f"(choose another {what} name or remove it yourself)")
    if not overwrite:
        raise UserError(f"{what} {target} exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold `.NAME.lock` beside the target for the duration: a second writer of the same name (another
    process) gets a UserError at once instead of silently racing. Re-entrant within one process; the
    lock file is removed on release (a killed process releases the lock but leaves the file)."""
    lock_path = _absolute(target).parent / f".{_absolute(target).name}.lock"
    key = (threading.get_ident(), lock_path)
    with _held_locks_guard:
        held = _held_locks.get(key)
        if held is not None:
            _held_locks[key] = (held[0], held[1] + 1)
    if held is not None:
        try:
            yield
        finally:
            with _held_locks_guard:
                fd, depth = _held_locks[key]
                _held_locks[key] = (fd, depth - 1)
        return
    created = _make_parents(lock_path.parent)
    fd = _acquire(lock_path, target)  # another thread of this process holding it is refused too (flock)
    with _held_locks_guard:
        _held_locks[key] = (fd, 1)
    try:
        yield
    finally:
        with _held_locks_guard:
            del _held_locks[key]
        lock_path.unlink(missing_ok=True)  # while still locked: the next writer creates a fresh file
        os.close(fd)
        for folder in created:  # folders made for an output that was never written
            with contextlib.suppress(OSError):
                folder.rmdir()


def _make_parents(folder: Path) -> list[Path]:
    """`mkdir -p folder`; returns the folders it created, deepest first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _acquire(lock_path: Path, target: str | os.PathLike) -> int:
    """Lock `lock_path` without waiting; retry when the file we locked was unlinked by its last holder."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"another ragcli process is writing {target}; wait for it to finish") from None
            raise
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh directory to fill; on success publish it under `target` in one atomic rename.

    On any exception (or a kill) `target` keeps its previous version, untouched. `kind` (index, model,
    dataset) is recorded in the marker; replacing an existing `target` needs `overwrite`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    target = _absolute(target)
    with output_lock(target):
        recover(target)
        check_output(target, overwrite, kind)
        previous = target.resolve() if target.is_symlink() else None
        version = _new_version(target)
        try:
            yield version
            (version / MARKER_FILE).write_text(json.dumps({"written_by": "ragcli", "kind": kind}) + "\n",
                                               encoding="utf-8")
            _fsync_tree(version)
            _publish(target, version)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        _remove_stale(target, keep={version, previous})  # a reader may still be loading the previous one


def _new_version(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    version = target.parent / f".{target.name}.v-{stamp}-{secrets.token_hex(4)}"
    version.mkdir()  # mode from the umask, as any file the user makes
    return version


def _publish(target: Path, version: Path) -> None:
    """Point `target` at `version` with one rename. A real directory there (an index from before
    versioned directories) is first moved aside as a marked version, which `recover` can restore."""
    if target.exists() and not target.is_symlink():
        if _marker(target) is None:
            (target / MARKER_FILE).write_text(json.dumps({"written_by": "ragcli", "kind": "index"}) + "\n",
                                              encoding="utf-8")
        os.replace(target, target.parent / f".{target.name}.v-0-legacy-{secrets.token_hex(4)}")
    link = target.parent / f".{target.name}.link-{secrets.token_hex(4)}"
    os.symlink(version.name, link)
    os.replace(link, target)
    _fsync_dir(target.parent)


def recover(target: str | os.PathLike) -> None:
    """If a writer was killed while moving an old-style directory aside, `target` is missing: point it
    back at the newest complete version. Does nothing while another process holds the lock."""
    target = _absolute(target)
    if target.exists() or not target.parent.is_dir():
        return
    complete = [v for v in _versions(target) if _marker(v) is not None]
    if not complete:
        return
    with contextlib.suppress(UserError), output_lock(target):
        if not target.exists():
            newest = max(complete, key=lambda v: (v / MARKER_FILE).stat().st_mtime)
            link = target.parent / f".{target.name}.link-{secrets.token_hex(4)}"
            os.symlink(newest.name, link)
            os.replace(link, target)


def _remove_stale(target: Path, keep: set[Path]) -> None:
    """Older versions, unfinished versions and temp links of `target` (we hold its lock)."""
    for leftover in [*_versions(target), *_siblings(target, r"link-[0-9a-f]{8}")]:
        if leftover in keep:
            continue
        if leftover.is_symlink() or leftover.is_file():
            leftover.unlink(missing_ok=True)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file() and not file.is_symlink():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- single files --------------------------------------------------------------------------------
def writable_file(path: str | os.PathLike) -> Path:
    """Where writing `path` lands: through a symlink to its target. An existing target that is not a
    regular file (a directory, device, FIFO or socket) is refused, never replaced."""
    real = expand(path).resolve()
    if real.exists() and not real.is_file():
        raise UserError(f"{path} is not a regular file; refusing to write over it")
    if not real.parent.is_dir():
        raise UserError(f"cannot write {path}: no folder {real.parent}")
    return real


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temp file and rename, so readers never see half of it (mode from the
    umask, or the replaced file's)."""
    real = writable_file(path)
    mode = stat.S_IMODE(real.stat().st_mode) if real.exists() else 0o666 & ~_umask()
    tmp = real.parent / f".{real.name}.tmp-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, real)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- reading -------------------------------------------------------------------------------------
def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` if it is a readable regular file; a FIFO, device or folder is an error (a FIFO would hang)."""
    path = expand(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} is not readable")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; missing, unreadable or malformed is one-line UserError naming it."""
    file = regular_file(path, what)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{what} {path} is not valid JSON: {str(err).splitlines()[0]}") from None


def inside(root: str | os.PathLike, relative: Any, what: str = "path") -> Path:
    """`root / relative`, refusing anything (absolute, `..`, a symlink out) that leaves `root`."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UserError(f"{root}: {what} must be a relative path inside it, got {relative!r}")
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise UserError(f"{root}: {what} {relative!r} points outside the directory")
    return candidate
