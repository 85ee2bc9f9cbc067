"""CelebA as distributed ("Deep Learning Face Attributes in the Wild", Liu et al., 2015): a folder holding
`img_align_celeba/` (000001.jpg, ...), `list_attr_celeba.txt` and `list_eval_partition.txt`.

list_attr_celeba.txt: line 1 the number of images, line 2 the attribute names, then one line per image:
its file name and one value per attribute, 1 (present) or -1 (absent), separated by spaces.
list_eval_partition.txt: one line per image: its file name and 0 (train), 1 (valid) or 2 (test).

Each attribute becomes a condition: its label is a readable answer ("smiling" / "not smiling") and its
instructions are generated from the name ("is the person smiling?"). Both files are checked line by line;
images are only listed here, and decoded on access (`ImageFiles`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from indexes.errors import UserError
from indexes.files import regular_file
from vision.datasets import ImageFiles, ImageSet, select_columns

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
SPLITS = {"train": "0", "valid": "1", "test": "2"}  # split -> its code in list_eval_partition.txt
_PRESENT, _VALUES = ("1", "+1"), frozenset({"1", "+1", "-1"})
# Names the rules below would garble; every other name is read by the rules (see `describe`).
_READABLE = {
    "5_o_Clock_Shadow": ("has", "a five o'clock shadow"),
    "Eyeglasses": ("is", "wearing eyeglasses"),
    "Goatee": ("has", "a goatee"),
    "Mouth_Slightly_Open": ("has", "the mouth slightly open"),
    "Mustache": ("has", "a mustache"),
    "No_Beard": ("is", "beardless"),
}
_MASS_NOUNS = frozenset({"hair", "skin", "makeup", "lipstick"})  # no article: "has black hair"


@dataclass(frozen=True)
class Attributes:
    """list_attr_celeba.txt: attribute names, image file names, and which image has which attribute."""

    names: list[str]
    files: list[str]
    present: np.ndarray  # (images, attributes) bool
    lines: list[int]  # each image's line in the file, for messages


def celeba_root(path: str | Path) -> Path | None:
    """The CelebA folder `path` is (it holds list_attr_celeba.txt) or is the image folder of; else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    for root in (path, path.parent) if path.name == IMAGE_DIR else (path,):
        if (root / ATTR_FILE).exists():
            return root
    return None


def load_celeba(root: str | Path, split: str | None = None, attributes: Sequence[str] | None = None) -> ImageSet:
    """The images of `split` (all of them for None), labelled with the chosen attributes' answers; none decoded."""
    root = Path(root)
    table = read_attributes(root)
    names = select_columns(table.names, attributes, root / ATTR_FILE)
    rows = np.arange(len(table.files)) if split is None else _split_rows(root, table, split)
    files = [table.files[i] for i in rows]
    folder = root / IMAGE_DIR
    paths = [folder / f for f in files]
    present = pl.DataFrame({a: table.present[rows, table.names.index(a)] for a in names})
    labels = present.select(pl.when(pl.col(a)).then(pl.lit(answers(a)[0])).otherwise(pl.lit(answers(a)[1])).alias(a)
                            for a in names)
    return ImageSet(ImageFiles(paths), files, labels.insert_column(0, pl.Series("id", files)), paths)


def _split_rows(root: Path, table: Attributes, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise UserError(f"CelebA has the splits {', '.join(SPLITS)}, not {split!r}")
    rows = np.flatnonzero(read_partition(root, table) == SPLITS[split])
    if not len(rows):
        raise UserError(f"{root / PARTITION_FILE} puts no image in the {split!r} split")
    return rows


def read_attributes(root: Path) -> Attributes:
    """Parse and check list_attr_celeba.txt: the header, every row's width and values, and that each row
    names an image in img_align_celeba/ once."""
    path = root / ATTR_FILE
    images = root / IMAGE_DIR
    if not images.is_dir():
        raise UserError(f"{root} has {ATTR_FILE} but no {IMAGE_DIR}/ folder of images")
    on_disk = set(os.listdir(images))
    lines = _lines(path)
    count, names = _header(path, lines)
    files, values, numbers, seen = [], [], [], set()
    for number, parts in lines:
        if len(parts) != len(names) + 1:
            raise UserError(f"{path} line {number}: expected a file name and {len(names)} values, got {len(parts)} columns")
        name = parts[0]
        if not _VALUES.issuperset(parts[1:]):
            bad = next(v for v in parts[1:] if v not in _VALUES)
            raise UserError(f"{path} line {number}: attribute values must be 1 or -1, got {bad!r}")
        if name not in on_disk:
            raise UserError(f"{path} line {number}: no image {name!r} in {images}")
        if name in seen:
            raise UserError(f"{path} line {number}: {name!r} is listed twice")
        seen.add(name)
        files.append(name)
        values.extend(parts[1:])
        numbers.append(number)
    if not files:
        raise UserError(f"{path} lists no images")
    if count != len(files):
        raise UserError(f"{path} line 1: says {count} images but lists {len(files)}")
    present = np.isin(np.asarray(values), _PRESENT).reshape(len(files), len(names))
    return Attributes(names, files, present, numbers)


def _header(path: Path, lines: Iterator[tuple[int, list[str]]]) -> tuple[int, list[str]]:
    """Line 1 (the number of images) and line 2 (unique attribute names) of list_attr_celeba.txt."""
    number, first = next(lines, (1, []))
    if len(first) != 1 or not first[0].isdigit():
        raise UserError(f"{path} line {number}: expected the number of images, got {' '.join(first)!r}")
    number, names = next(lines, (2, []))
    if not names:
        raise UserError(f"{path} line {number}: expected the attribute names")
    if duplicate := next((n for n in names if names.count(n) > 1 or n == "id"), None):
        raise UserError(f"{path} line {number}: attribute {duplicate!r} is repeated or reserved")
    return int(first[0]), names


def read_partition(root: Path, table: Attributes) -> np.ndarray:
    """Each image's split code ("0", "1", "2") from list_eval_partition.txt, which must list every image once."""
    path = root / PARTITION_FILE
    where = {name: i for i, name in enumerate(table.files)}
    codes = np.full(len(table.files), "", dtype="<U1")
    for number, parts in _lines(path):
        if len(parts) != 2 or parts[1] not in SPLITS.values():
            raise UserError(f"{path} line {number}: expected a file name and 0, 1 or 2, got {' '.join(parts)!r}")
        if parts[0] not in where:
            raise UserError(f"{path} line {number}: {parts[0]!r} is not an image of {ATTR_FILE}")
        if codes[where[parts[0]]]:
            raise UserError(f"{path} line {number}: {parts[0]!r} is listed twice")
        codes[where[parts[0]]] = parts[1]
    if len(missing := np.flatnonzero(codes == "")):
        i = missing[0]
        raise UserError(f"{path} gives no split for {len(missing)} images, e.g. {table.files[i]!r} "
                        f"({ATTR_FILE} line {table.lines[i]})")
    return codes


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line; unreadable text is a UserError."""
    try:
        with regular_file(path, "CelebA file").open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if parts := line.split():
                    yield number, parts
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from None


def describe(name: str) -> tuple[str, str]:
    """("is" | "has", readable phrase) of an attribute: `Wearing_Hat` -> ("is", "wearing a hat"),
    `Smiling` -> ("is", "smiling"), `Black_Hair` -> ("has", "black hair"), else the name's words."""
    if name in _READABLE:
        return _READABLE[name]
    words = name.replace("_", " ").lower().split() or [name]
    if words[0] == "wearing" and len(words) > 1:
        return "is", "wearing " + _with_article(words[1:])
    if len(words) == 1 and not words[0].endswith("s"):  # an adjective or a state: Young, Smiling
        return "is", words[0]
    return "has", _with_article(words)


def _with_article(words: list[str]) -> str:
    """'a' / 'an' before a singular count noun phrase; none before plurals, mass nouns, 'no ...'."""
    text = " ".join(words)
    if words[-1].endswith("s") or words[-1] in _MASS_NOUNS or words[0] in ("a", "an", "the", "no"):
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


def phrasings(name: str) -> tuple[str, ...]:
    """Instructions asking about attribute `name`: "focus on whether the person is smiling", ..."""
    verb, phrase = describe(name)
    if verb == "is":
        return (f"focus on whether the person is {phrase}", f"is the person {phrase}?",
                f"is the person in the photo {phrase} or not?")
    return (f"focus on whether the person has {phrase}", f"does the person have {phrase}?",
            f"does the person in the photo have {phrase} or not?")


def answers(name: str) -> tuple[str, str]:
    """The (present, absent) answers of attribute `name`: ("smiling", "not smiling"), ("with bangs", "without bangs")."""
    verb, phrase = describe(name)
    return (phrase, f"not {phrase}") if verb == "is" else (f"with {phrase}", f"without {phrase}")
