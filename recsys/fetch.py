"""Download the GroupLens MovieLens archives: checksum-verified, resumable (HTTP Range), with a progress
bar, unpacked atomically into `<data dir>/<name>/`. A failed fetch leaves nothing behind that it made,
except the partial download of a transfer cut off midway (kept so that the next run resumes it)."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from indexes import UserError, ragcli_home
from indexes.files import atomic_dir, expand, output_lock, regular_file
from indexes.runtime import progress
from indexes.samples import sample_dir

CHUNK = 1 << 16


@dataclass(frozen=True)
class Archive:
    """Where a dataset's zip lives and its checksum, as `algorithm:hexdigest`."""

    url: str
    checksum: str


# GroupLens publishes MD5 sums; SHA-256 where one is pinned (the ml-20m one is GroupLens's MD5).
DATASETS: dict[str, Archive] = {
    "ml-100k": Archive("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                       "sha256:50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": Archive("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                     "sha256:a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-20m": Archive("https://files.grouplens.org/datasets/movielens/ml-20m.zip",
                      "md5:cd245b17a1ae2cc31bb14903e1204af3"),
}


SAMPLE = "recsys-sample"  # bundled with ragcli (indexes.samples): 300 synthetic users over 60 items


def data_home() -> Path:
    """Default folder for downloaded datasets: `$RAGCLI_HOME/data`."""
    return ragcli_home() / "data"


def resolve_data(name_or_path: str | Path, data_dir: Path | None = None) -> Path:
    """A dataset path, a fetched dataset's folder by name (ml-100k, ml-1m, ml-20m), or the bundled
    `recsys-sample`."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if str(name_or_path) == SAMPLE:
        return sample_dir(SAMPLE)
    if str(name_or_path) in DATASETS:
        folder = (data_dir or data_home()) / str(name_or_path)
        if folder.exists():
            return folder
        raise UserError(f"{name_or_path} is not downloaded: run `ragcli data fetch {name_or_path}` (looked in {folder})")
    raise UserError(f"no such file or folder: {name_or_path}")


def fetch(name: str, root: Path | None = None) -> Path:
    """Download (or finish downloading) dataset `name`, verify it and unpack it; returns its folder.

    One fetch of a name at a time (its lock). On failure, the folders it made and the `NAME.zip.part`
    file are removed (a bad archive or checksum removes the download), with one exception on purpose: a
    transfer cut off midway (connection lost, Ctrl-C) keeps its `.part` file, which the next run resumes."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    root = _data_folder(expand(root) if root else data_home())
    target = root / name
    if target.is_dir():
        return target
    archive = DATASETS[name]
    part = root / f"{name}.zip.part"
    with output_lock(target):  # also removes the folders it made, if they stay empty
        download(archive.url, part)
        try:
            if not verify(part, archive.checksum):
                raise UserError(f"{archive.url}: checksum mismatch (download removed; run again)")
            unpack(part, target)
        except UserError:
            part.unlink(missing_ok=True)
            raise
        part.unlink()
    return target


def _data_folder(root: Path) -> Path:
    """`root` if it is, or can be made, a folder: an existing file there or above it is a UserError."""
    existing = next(p for p in [root, *root.parents] if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot use {root} as the data folder: {existing} is not a folder")
    return root


def download(url: str, dest: Path) -> None:
    """Fetch `url` into `dest`, continuing a partial `dest` with a Range request when the server allows."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = regular_file(dest, "partial download").stat().st_size if dest.exists() or dest.is_symlink() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # nothing left to fetch: the part file is complete
            return
        raise UserError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"cannot download {url}: {getattr(err, 'reason', err)}") from None
    with response:
        resumed = have and getattr(response, "status", 200) == 206
        declared = response.headers.get("Content-Length", "")
        length = int(declared) if declared.isdigit() else 0
        try:
            with open(dest, "ab" if resumed else "wb") as out, \
                    progress(total=(have if resumed else 0) + length or None, initial=have if resumed else 0,
                             unit="B", unit_scale=True, desc=Path(url).name) as bar:
                received = 0
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
            if received < length:  # the server hung up early
                raise http.client.IncompleteRead(b"", length - received)
        except (OSError, http.client.HTTPException) as err:  # cut off midway: the part file stays, to resume
            if dest.is_file() and not dest.stat().st_size:
                dest.unlink()
            raise UserError(f"download of {url} interrupted ({type(err).__name__}); run again to resume") from None


def verify(path: Path, checksum: str) -> bool:
    """Whether `path` matches `algorithm:hexdigest`."""
    algorithm, _, expected = checksum.partition(":")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == expected


def unpack(zip_path: Path, target: Path) -> None:
    """Extract the archive's top folder (ml-1m/...) as `target`, atomically; refuses unsafe member paths."""
    try:
        with zipfile.ZipFile(zip_path) as archive, atomic_dir(target, "dataset") as tmp:
            for member in archive.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts:
                    raise UserError(f"{zip_path}: unsafe path {member.filename!r} in the archive")
                if member.is_dir() or len(parts) < 2:
                    continue
                out = tmp.joinpath(*parts[1:])
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile:
        raise UserError(f"{zip_path}: not a zip archive") from None
