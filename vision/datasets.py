"""Image dataset readers: a folder of images, IDX/ubyte(.gz) files (MNIST family), NPZ arrays.

`load_images(path)` returns an `ImageSet`: lazily decoded PIL images, their ids (and file paths), and a
polars DataFrame with one row per image: `id` plus label / factor columns.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from indexes.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
LABEL_FILES = ("labels.csv",)
# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/ file format).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_PATTERN = re.compile(r"idx\d-ubyte(\.gz)?$")


class ImageFiles(Sequence[Image.Image]):
    """Images decoded from files on access; an unreadable file is a `UserError` naming it."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, i: int) -> Image.Image: ...
    @overload
    def __getitem__(self, i: slice) -> list[Image.Image]: ...

    def __getitem__(self, i: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(i, slice):
            return [self._open(p) for p in self.paths[i]]
        return self._open(self.paths[i])

    @staticmethod
    def _open(path: Path) -> Image.Image:
        try:
            with Image.open(path) as image:
                image.load()
                return image
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise UserError(f"cannot read image {path}: {err}") from None


class ImageArray(Sequence[Image.Image]):
    """Images held in a (N, H, W) or (N, H, W, C) array, turned into PIL images on access."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = _as_uint8(array)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(i, slice):
            return [Image.fromarray(a) for a in self.array[i]]
        return Image.fromarray(self.array[i])


@dataclass
class ImageSet:
    """Images with their ids, file paths (None for arrays) and a per-image label / factor table."""

    images: Sequence[Image.Image]
    ids: list[str]
    labels: pl.DataFrame
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def load_images(path: str | Path, labels: str | Path | None = None) -> ImageSet:
    """Read an image folder, an IDX images file or an NPZ archive.

    Folder labels come from `labels` (a CSV), else a `labels.csv` inside the folder, else the sub-folder names.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such image folder or file: {path}")
    if path.is_dir():
        return _load_folder(path, None if labels is None else Path(labels))
    if path.suffix == ".npz":
        return _load_npz(path)
    if IDX_PATTERN.search(path.name):
        return _load_idx_images(path)
    raise UserError(f"{path}: expected an image folder, an .npz file or an IDX (…idx3-ubyte[.gz]) file")


def _load_folder(root: Path, labels_csv: Path | None) -> ImageSet:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    ids = [p.relative_to(root).as_posix() for p in paths]
    table = pl.DataFrame({"id": ids})
    labels_csv = labels_csv or next((root / n for n in LABEL_FILES if (root / n).is_file()), None)
    if labels_csv is not None:
        table = table.join(_read_label_csv(labels_csv, ids), on="id", how="left")
    elif any("/" in i for i in ids):
        table = table.with_columns(label=pl.Series([i.split("/")[0] if "/" in i else None for i in ids]))
    return ImageSet(ImageFiles(paths), ids, table, paths)


def _read_label_csv(path: Path, ids: list[str]) -> pl.DataFrame:
    """A CSV whose `id` (or `path` / `file` / `filename`) column names images relative to the folder."""
    try:
        table = pl.read_csv(path, infer_schema_length=10_000)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise UserError(f"cannot read labels {path}: {err}") from None
    key = next((c for c in ("id", "path", "file", "filename") if c in table.columns), None)
    if key is None:
        raise UserError(f"{path}: needs an id, path, file or filename column naming each image")
    table = table.rename({key: "id"}).with_columns(pl.col("id").cast(pl.Utf8))
    unknown = set(table["id"]) - set(ids)
    if unknown:
        raise UserError(f"{path}: {len(unknown)} rows name no image in the folder, e.g. {sorted(unknown)[0]!r}")
    return table


def _load_npz(path: Path) -> ImageSet:
    """`images` (or the only array with >= 3 dims), optional `ids` (or `id`), and 1-D arrays of the same
    length as label columns."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    candidates = ["images"] if "images" in arrays else [k for k, a in arrays.items() if a.ndim >= 3]
    if len(candidates) != 1:
        raise UserError(f"{path}: needs an 'images' array (N, H, W[, C]); found {sorted(arrays)}")
    images = arrays.pop(candidates[0])
    n = len(images)
    id_key = next((k for k in ("ids", "id") if k in arrays), None)
    ids = [str(i) for i in (arrays.pop(id_key) if id_key else range(n))]
    if len(ids) != n:
        raise UserError(f"{path}: {len(ids)} ids for {n} images")
    columns = {k: a for k, a in arrays.items() if a.ndim == 1 and len(a) == n}
    return ImageSet(ImageArray(images), ids, pl.DataFrame({"id": ids, **columns}))


def _load_idx_images(path: Path) -> ImageSet:
    """An IDX images file; the labels file beside it (`…images-idx3…` -> `…labels-idx1…`, or with dots) if present."""
    images = read_idx(path)
    if images.ndim not in (3, 4):
        raise UserError(f"{path}: an IDX images file holds (N, H, W[, C]) arrays, got shape {images.shape}")
    ids = [str(i) for i in range(len(images))]
    table = pl.DataFrame({"id": ids})
    labels_path = path.with_name(re.sub(r"images([.-])idx3", r"labels\1idx1", path.name))
    if labels_path != path and labels_path.exists():
        labels = read_idx(labels_path)
        if labels.shape != (len(images),):
            raise UserError(f"{labels_path}: {labels.shape} labels for {len(images)} images")
        table = table.with_columns(label=pl.Series(labels.astype(np.int64)))
    return ImageSet(ImageArray(images), ids, table)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): 2 zero bytes, a type code, the rank, big-endian sizes, data."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    rank = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    offset = 4 + 4 * rank
    if len(data) - offset != dtype.itemsize * int(np.prod(shape)):
        raise UserError(f"{path}: header says shape {shape} but the data has {len(data) - offset} bytes")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; floats in [0, 1] scaled to 0..255; a trailing channel axis of 1 dropped."""
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (3, 4)):
        raise UserError(f"image arrays must be (N, H, W) or (N, H, W, 3|4), got {array.shape}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0 and array.max() <= 1:
        return (array * 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise UserError(f"image arrays must be uint8, or floats in [0, 1]; got {array.dtype}")
