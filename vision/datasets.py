"""Image dataset readers: a folder of images, IDX/ubyte(.gz) files (MNIST family), NPZ arrays, CelebA.

`load_images(path)` returns an `ImageSet`: lazily decoded PIL images, their ids (and file paths), and a
polars DataFrame with one row per image: `id` plus label / factor columns.

Every image size is checked from its header before anything is decoded: at most `max_image_pixels()`
pixels (50 megapixels; `RAGCLI_MAX_IMAGE_PIXELS` overrides it) and sides at most `MAX_ASPECT_RATIO`
times apart (resizing the short side of a 1 x 20,000 strip to a model's input would need gigabytes).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np
import polars as pl
from PIL import Image

from indexes.errors import UserError
from indexes.files import regular_file

MAX_IMAGE_PIXELS = 50_000_000  # per image (width x height); RAGCLI_MAX_IMAGE_PIXELS overrides it
MAX_PIXELS_ENV = "RAGCLI_MAX_IMAGE_PIXELS"
MAX_ASPECT_RATIO = 100  # longer side / shorter side
# What PIL raises on a corrupt, truncated or hostile file while reading its header or decoding it.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError,
                 KeyError, Image.DecompressionBombError)
LABEL_KINDS = "biufU"  # label arrays: bool, integers, floats or strings
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
        return decode_image(regular_file(path, "image"), path)  # a FIFO would block forever


_PIL_LIMIT = threading.Lock()


def decode_image(source: Path | BinaryIO, name: str | Path) -> Image.Image:
    """Read an image file's (or an upload's) header, check the size, then decode; PIL's own bomb check
    is replaced by ours. Anything unreadable is a UserError naming `name`."""
    with _PIL_LIMIT:  # PIL's limit is process-wide: one swap at a time (the server decodes on several threads)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(source) as image:
                check_image_size(image.width, image.height, name)
                image.load()
                return image
        except DECODE_ERRORS as err:
            raise UserError(f"cannot read image {name}: {_first_line(err)}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def max_image_pixels() -> int:
    """The per-image pixel limit: `RAGCLI_MAX_IMAGE_PIXELS` when set, else `MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {raw!r}")
    return int(raw)


def check_image_size(width: int, height: int, where: str | Path) -> None:
    """Refuse, before decoding, an image with no pixels, more than `max_image_pixels()`, or sides more
    than `MAX_ASPECT_RATIO` times apart."""
    limit = max_image_pixels()
    if width < 1 or height < 1:
        raise UserError(f"{where}: the image has no pixels ({width} x {height})")
    if width * height > limit:
        raise UserError(f"{where}: a {width} x {height} image is over the {limit:,}-pixel limit "
                        f"(set {MAX_PIXELS_ENV} to raise it)")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UserError(f"{where}: a {width} x {height} image is too elongated "
                        f"(sides more than {MAX_ASPECT_RATIO} times apart)")


def check_image_stack(shape: tuple[int, ...], where: str | Path) -> None:
    """An (N, H, W) or (N, H, W, 1|3|4) images array: at least one image, each within the size limits."""
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3, 4)):
        raise UserError(f"{where}: images must be an (N, H, W) or (N, H, W, 1|3|4) array, got shape {shape}")
    if shape[0] < 1:
        raise UserError(f"{where}: holds no images")
    check_image_size(shape[2], shape[1], where)


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
    """Read an image folder, an IDX images file, an NPZ archive or a CelebA folder (`vision.celeba`).

    Folder labels come from `labels` (a CSV), else a `labels.csv` inside the folder, else the sub-folder names.
    """
    # imported here, not above: vision.celeba builds on this module
    from vision.celeba import celeba_root, load_celeba

    path = Path(path)
    if not path.exists():
        raise UserError(f"no such image folder or file: {path}")
    if labels is None and (root := celeba_root(path)) is not None:
        return load_celeba(root)
    if path.is_dir():
        return _load_folder(path, None if labels is None else Path(labels))
    if path.suffix == ".npz":
        return _load_npz(path)
    if IDX_PATTERN.search(path.name):
        return _load_idx_images(path)
    raise UserError(f"{path}: expected an image folder, an .npz file or an IDX (…idx3-ubyte[.gz]) file")


def select_columns(available: Sequence[str], wanted: Sequence[str] | None, where: str | Path) -> list[str]:
    """`wanted` (in its order, repeats dropped), all of them in `available`; None: all of `available`."""
    if wanted is None:
        return list(available)
    chosen = list(dict.fromkeys(w.strip() for w in wanted if w.strip()))
    if not chosen:
        raise UserError("no attributes chosen; name at least one, e.g. --attributes Smiling")
    if unknown := [w for w in chosen if w not in available]:
        raise UserError(f"{where} has no attribute {unknown[0]!r}; it has {', '.join(available)}")
    return chosen


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
    length as label columns. Shapes and dtypes are checked from the array headers before any data is read."""
    if not zipfile.is_zipfile(regular_file(path, "NPZ archive")):
        raise UserError(f"{path} is not an NPZ archive (a zip of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            headers = _npz_headers(archive, path)
            key, id_key, labels = _npz_layout(headers, path)
            check_memory(sum(_nbytes(*headers[k]) for k in (key, id_key, *labels) if k), f"{path}'s arrays")
            images = ImageArray(archive[key])
            ids = [str(i) for i in (archive[id_key] if id_key else range(len(images)))]
            columns = {k: archive[k] for k in labels}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as err:
        raise UserError(f"cannot read {path}: {_first_line(err)}") from None  # RuntimeError: an encrypted member
    return ImageSet(images, ids, pl.DataFrame({"id": ids, **columns}))


def _npz_layout(headers: dict[str, tuple[tuple[int, ...], np.dtype]], path: Path) -> tuple[str, str | None, list[str]]:
    """(images array, ids array or None, label arrays) of an archive, every shape and dtype checked."""
    candidates = ["images"] if "images" in headers else [k for k, (shape, _) in headers.items() if len(shape) >= 3]
    if len(candidates) != 1:
        raise UserError(f"{path}: needs an 'images' array (N, H, W[, C]); found {sorted(headers)}")
    key = candidates[0]
    check_image_stack(headers[key][0], f"{path} ({key})")
    _check_image_dtype(headers[key][1], f"{path} ({key})")
    n = headers[key][0][0]
    id_key = next((k for k in ("ids", "id") if k in headers), None)
    if id_key and (headers[id_key][0] != (n,) or headers[id_key][1].kind not in "iuU"):
        raise UserError(f"{path}: '{id_key}' must be {n} integers or strings, one per image; "
                        f"got shape {headers[id_key][0]} of {headers[id_key][1]}")
    labels = [k for k, (shape, _) in headers.items() if shape == (n,) and k not in (key, id_key)]
    if bad := [k for k in labels if headers[k][1].kind not in LABEL_KINDS]:
        raise UserError(f"{path}: label array {bad[0]!r} has dtype {headers[bad[0]][1]}; "
                        "labels must be numbers or strings")
    return key, id_key, labels


def _npz_headers(archive: np.lib.npyio.NpzFile, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's (shape, dtype) from its .npy header, without reading its data."""
    headers = {}
    for name in archive.files:
        member = name if name in archive.zip.namelist() else f"{name}.npy"
        with archive.zip.open(member) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            except ValueError:
                raise UserError(f"{path}: {member} is not a NumPy array (.npy)") from None
        headers[name] = (tuple(shape), dtype)
    return headers


def _load_idx_images(path: Path) -> ImageSet:
    """An IDX images file; the labels file beside it (`…images-idx3…` -> `…labels-idx1…`, or with dots) if present."""
    images = read_idx(path, lambda shape: check_image_stack(shape, path))
    ids = [str(i) for i in range(len(images))]
    table = pl.DataFrame({"id": ids})
    labels_path = path.with_name(re.sub(r"images([.-])idx3", r"labels\1idx1", path.name))
    if labels_path != path and labels_path.exists():
        labels = read_idx(labels_path, lambda shape: _check_labels(shape, len(images), labels_path))
        table = table.with_columns(label=pl.Series(labels.astype(np.int64)))
    return ImageSet(ImageArray(images), ids, table)


def _check_labels(shape: tuple[int, ...], n: int, where: Path) -> None:
    if shape != (n,):
        raise UserError(f"{where}: {shape} labels for {n} images")


def read_idx(path: str | Path, check: Callable[[tuple[int, ...]], None] | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped): 2 zero bytes, a type code, the rank, big-endian sizes, data.

    `check(shape)` vets the header's shape before the data is read; no more bytes than the header
    promises are ever decompressed."""
    path = regular_file(path, "IDX file")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES:
                raise UserError(f"{path} is not an IDX file (bad magic number)")
            sizes = fh.read(4 * head[3])
            if len(sizes) < 4 * head[3]:
                raise UserError(f"{path}: the IDX header is cut short")
            shape = struct.unpack(f">{head[3]}I", sizes)
            if check is not None:
                check(shape)
            dtype = np.dtype(IDX_DTYPES[head[2]])
            expected = _nbytes(shape, dtype)
            check_memory(expected, f"{path}'s data")
            data = _read_at_most(fh, expected + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"cannot read {path}: {_first_line(err)}") from None
    if len(data) != expected:
        raise UserError(f"{path}: header says shape {shape} ({expected} bytes) but the data has "
                        f"{'more' if len(data) > expected else len(data)} bytes")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return dtype.itemsize * int(np.prod(shape, dtype=object))


def check_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, data that cannot fit in this machine's memory (a zip bomb, a lying
    header, or a request for millions of large images)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if nbytes > memory:
        raise UserError(f"{what} would need {nbytes / 2**30:,.1f} GiB, more than this machine's "
                        f"{memory / 2**30:,.1f} GiB of memory")


def _read_at_most(fh: BinaryIO, size: int, chunk: int = 1 << 24) -> bytes:
    """Up to `size` bytes, read in chunks so a lying header cannot make us allocate more than the file holds."""
    parts, left = [], size
    while left > 0 and (part := fh.read(min(chunk, left))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; floats in [0, 1] scaled to 0..255; a trailing channel axis of 1 dropped."""
    check_image_stack(array.shape, "image array")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    _check_image_dtype(array.dtype, "image array")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" and array.min() >= 0 and array.max() <= 1:  # False for NaN
        return (array * 255).round().astype(np.uint8)
    if array.dtype.kind in "iu" and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise UserError(f"image arrays must be uint8, or floats in [0, 1]; got {array.dtype} values "
                    f"outside that range")


def _check_image_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "uif":
        raise UserError(f"{where}: image arrays must be uint8, or floats in [0, 1]; got {dtype}")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
