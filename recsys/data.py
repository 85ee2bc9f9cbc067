"""Interaction data: readers for the formats the field uses, k-core filtering, id remapping, the
leave-one-out split and the padded sequence tensors SASRec trains on.

Every reader returns one Polars table `user, item, timestamp` (raw ids as strings; `timestamp` orders a
user's interactions, ties keep file order) plus, when the data has it, an item table (`item, title,
genres, ...`) that becomes the index payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from indexes.errors import UserError
from indexes.files import regular_file
from recsys.fetch import resolve_data

FORMATS = ("auto", "sasrec", "csv", "tsv", "parquet", "movielens", "recbole")
USER_COLUMNS = ("user", "user_id", "userid", "userId", "uid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "itemId", "movieId", "movie_id", "iid")
TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date")
EXPECTED = {"sasrec": "a space-separated `user item` text file", "csv": "a CSV file with user and item columns",
            "tsv": "a tab-separated file with user and item columns", "parquet": "a parquet file",
            "movielens": "a MovieLens folder or ratings file", "recbole": "a RecBole .inter file or folder"}
SNIFF_BYTES = 8192
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")


@dataclass
class RawData:
    """Interactions as read, before any filtering: `user, item, timestamp` (+ optional item table)."""

    interactions: pl.DataFrame
    items: pl.DataFrame | None = None


# ---- readers ------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """Guess the format from a file's suffix or a folder's contents."""
    if path.is_dir():
        if any(path.glob("*.inter")):
            return "recbole"
        if any((path / name).exists() for name in ("ratings.dat", "u.data", "ratings.csv")):
            return "movielens"
        raise UserError(f"{path}: no .inter, ratings.dat, u.data or ratings.csv inside; pass --format")
    suffix = path.suffix.lower()
    by_suffix = {".inter": "recbole", ".dat": "movielens", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv",
                 ".txt": "sasrec"}
    if path.name == "u.data":
        return "movielens"
    if suffix not in by_suffix:
        raise UserError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format")
    return by_suffix[suffix]


def read_interactions(path: str | Path, fmt: str = "auto") -> RawData:
    """Read an interactions file or dataset folder (or a fetched dataset by name) in any supported format.

    Whatever is wrong with the data (a FIFO, a folder where a file belongs, binary or non-UTF-8 bytes, a
    parquet file read as text, missing columns, no rows) is one UserError line naming the file."""
    path = resolve_data(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {"sasrec": _read_sasrec, "movielens": _read_movielens, "recbole": _read_recbole,
               **{table: lambda p, table=table: _read_table(p, table) for table in ("csv", "tsv", "parquet")}}
    if fmt not in readers:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt in ("sasrec", "csv", "tsv", "parquet") or not path.is_dir():
        regular_file(path, "interactions file")
    try:
        raw = readers[fmt](path)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, ValueError, OSError) as err:
        raise UserError(f"{path} is not {EXPECTED[fmt]}: {_one_line(str(err))}") from None
    if raw.interactions.is_empty():
        raise UserError(f"{path}: no interactions")
    return raw


def _one_line(text: str, limit: int = 200) -> str:
    """An error detail fit for one terminal line: first line, printable characters only, truncated."""
    line = "".join(c if c.isprintable() else "?" for c in (text.strip().splitlines() or [""])[0])
    return line[:limit] + ("..." if len(line) > limit else "")


def _text_file(path: Path, fmt: str) -> Path:
    """`path` if it is a regular file that looks like text; binary data (a parquet file given as CSV, say)
    is refused before any parser can echo its bytes."""
    with open(regular_file(path, "interactions file"), "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if head.startswith(b"PAR1"):
        raise UserError(f"{path} is a parquet file, not {EXPECTED[fmt]} (pass --format parquet)")
    if b"\x00" in head:
        raise UserError(f"{path} holds binary data, not {EXPECTED[fmt]}")
    return path


def _finish(frame: pl.DataFrame, user: str, item: str, time: str | None) -> pl.DataFrame:
    """Select and type the three columns; without a time column the file order is the time order."""
    timestamp = _timestamp(frame[time]) if time else pl.Series(np.arange(frame.height, dtype=np.float64))
    return pl.DataFrame({"user": frame[user].cast(pl.String), "item": frame[item].cast(pl.String),
                         "timestamp": timestamp}).drop_nulls(["user", "item"])


def _timestamp(col: pl.Series) -> pl.Series:
    if col.dtype.is_temporal():
        return col.cast(pl.Datetime("ms")).dt.epoch("ms").cast(pl.Float64)
    numbers = col.cast(pl.Float64, strict=False)
    if col.dtype == pl.String and numbers.null_count() > col.null_count():  # dates written as text
        return col.str.to_datetime(strict=True).dt.epoch("ms").cast(pl.Float64)
    return numbers


def _read_sasrec(path: Path) -> RawData:
    frame = pl.read_csv(_text_file(path, "sasrec"), separator=" ", has_header=False, infer_schema=False)
    if frame.width != 2:
        raise UserError(f"{path}: expected 2 space-separated columns (user item), found {frame.width}")
    return RawData(_finish(frame, *frame.columns, None))


def _pick(columns: list[str], names: tuple[str, ...], what: str, path: Path, required: bool = True) -> str | None:
    lowered = {c.lower(): c for c in columns}
    found = next((lowered[n.lower()] for n in names if n.lower() in lowered), None)
    if found is None and required:
        raise UserError(f"{path}: no {what} column (looked for {', '.join(names)}; "
                        f"found {_one_line(', '.join(columns), 120)})")
    return found


def _read_table(path: Path, fmt: str) -> RawData:
    if fmt == "parquet":
        frame = pl.read_parquet(path)
    else:
        frame = pl.read_csv(_text_file(path, fmt), separator="\t" if fmt == "tsv" else ",", infer_schema_length=10_000,
                            schema_overrides={c: pl.String for c in USER_COLUMNS + ITEM_COLUMNS})
    cols = frame.columns
    return RawData(_finish(frame, _pick(cols, USER_COLUMNS, "user", path), _pick(cols, ITEM_COLUMNS, "item", path),
                           _pick(cols, TIME_COLUMNS, "timestamp", path, required=False)))


def _split_lines(path: Path, sep: str, names: list[str]) -> pl.DataFrame:
    """Split a latin-1 text file on a (multi-character) separator (MovieLens `::`); every line must have
    all the fields."""
    lines = pl.Series("line", _text_file(path, "movielens").read_bytes().decode("latin-1").splitlines())
    parts = lines.filter(lines.str.len_chars() > 0).str.splitn(sep, len(names)).struct.rename_fields(names)
    frame = parts.struct.unnest()
    if frame[names[-1]].null_count():
        raise UserError(f"{path}: expected {len(names)} fields separated by {sep!r} on every line")
    return frame


def _read_movielens(path: Path) -> RawData:
    """MovieLens as GroupLens ships it: ml-100k (u.data, u.item), ml-1m / 10m (ratings.dat, movies.dat),
    ml-20m and later (ratings.csv, movies.csv). `path` is the folder or its ratings file."""
    folder = path if path.is_dir() else path.parent
    if (folder / "ratings.dat").exists():
        ratings = _split_lines(folder / "ratings.dat", "::", ["user", "item", "rating", "timestamp"])
        movies = folder / "movies.dat"
        items = _split_lines(movies, "::", ["item", "title", "genres"]) if movies.exists() else None
    elif (folder / "u.data").exists():
        ratings = _split_lines(folder / "u.data", "\t", ["user", "item", "rating", "timestamp"])
        items = _ml100k_items(folder / "u.item") if (folder / "u.item").exists() else None
    elif (folder / "ratings.csv").exists():
        ratings = pl.read_csv(_text_file(folder / "ratings.csv", "movielens")).rename({"userId": "user", "movieId": "item"})
        movies = folder / "movies.csv"
        items = pl.read_csv(_text_file(movies, "movielens")).rename({"movieId": "item"}) if movies.exists() else None
    else:
        raise UserError(f"{folder}: not a MovieLens folder (no ratings.dat, u.data or ratings.csv)")
    if items is not None and "genres" in items.columns:
        items = items.with_columns(pl.col("genres").str.replace_all("|", ", ", literal=True))
    if items is not None:
        items = items.with_columns(pl.col("item").cast(pl.String))
    return RawData(_finish(ratings, "user", "item", "timestamp"), items)


def _ml100k_items(path: Path) -> pl.DataFrame:
    names = ["item", "title", "release", "video", "url", *ML100K_GENRES]
    frame = _split_lines(path, "|", names)
    flags = pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES]).list.drop_nulls()
    return frame.select("item", "title", flags.list.join("|").alias("genres"))


def _read_recbole(path: Path) -> RawData:
    """RecBole atomic files: `<name>.inter` (+ `<name>.item` beside it), headers typed like `item_id:token`."""
    inter = path if not path.is_dir() else next(path.glob("*.inter"), None)
    if inter is None:
        raise UserError(f"{path}: no .inter file inside")
    frame = _read_atomic(inter)
    items_file = inter.with_suffix(".item")
    items = _read_atomic(items_file) if items_file.exists() else None
    if items is not None:
        item_col = _pick(items.columns, ITEM_COLUMNS, "item", items_file)
        title = next((c for c in items.columns if "title" in c.lower()), None)
        genres = next((c for c in items.columns if c.lower() in ("class", "genre", "genres", "categories")), None)
        renames = {item_col: "item", **({title: "title"} if title else {}), **({genres: "genres"} if genres else {})}
        items = items.rename(renames).with_columns(pl.col("item").cast(pl.String))
    cols = frame.columns
    return RawData(_finish(frame, _pick(cols, USER_COLUMNS, "user", inter), _pick(cols, ITEM_COLUMNS, "item", inter),
                           _pick(cols, TIME_COLUMNS, "timestamp", inter, required=False)), items)


def _read_atomic(path: Path) -> pl.DataFrame:
    with open(_text_file(path, "recbole"), encoding="utf-8", errors="replace") as fh:
        header = [field.split(":") for field in fh.readline().rstrip("\r\n").split("\t")]
    frame = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None, encoding="utf8-lossy",
                        new_columns=[name for name, *_ in header])
    numeric = [name for name, *typed in header if typed == ["float"]]
    return frame.with_columns(pl.col(numeric).cast(pl.Float64, strict=False))


# ---- sequences ----------------------------------------------------------------------------------
@dataclass
class Sequences:
    """Each user's items in time order, stored CSR-style: user u's items are
    `items[offsets[u]:offsets[u+1]]`, as contiguous ids 1..n_items (0 is padding).
    `item_ids[i - 1]` is the raw id of item i."""

    items: np.ndarray
    offsets: np.ndarray
    item_ids: list[str]
    user_ids: list[str]

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def k_core(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    """Keep only users and items with at least k interactions each, repeating until stable."""
    while k > 1:
        kept = frame.filter((pl.len().over("user") >= k) & (pl.len().over("item") >= k))
        if kept.height == frame.height:
            return kept
        frame = kept
    return frame


def _sorted_ids(values: pl.Series) -> list[str]:
    """Unique raw ids, numerically sorted when they are all integers (so "2" < "10")."""
    unique = values.unique()
    as_int = unique.cast(pl.Int64, strict=False)
    order = as_int.arg_sort() if as_int.null_count() == 0 else unique.arg_sort()
    return unique.gather(order).to_list()


def build_sequences(raw: RawData, k: int = 0, min_len: int = 1, item_ids: list[str] | None = None) -> Sequences:
    """Filter (k-core, minimum length), remap ids and order each user's items by time.

    With `item_ids` (a trained model's id map) items the model does not know are dropped instead of
    getting new ids, so evaluation data lines up with the model.
    """
    frame = raw.interactions.with_row_index("_order")
    if item_ids is not None:
        frame = frame.filter(pl.col("item").is_in(item_ids))
    frame = k_core(frame, k)
    frame = frame.filter(pl.len().over("user") >= min_len)
    if frame.is_empty():
        raise UserError(f"no user has {max(k, min_len)} or more interactions after filtering")
    item_ids = item_ids if item_ids is not None else _sorted_ids(frame["item"])
    user_ids = _sorted_ids(frame["user"])
    lookup = pl.DataFrame({"item": item_ids, "item_idx": np.arange(1, len(item_ids) + 1)})
    users = pl.DataFrame({"user": user_ids, "user_idx": np.arange(len(user_ids))})
    frame = (frame.join(lookup, on="item").join(users, on="user")
             .sort(["user_idx", "timestamp", "_order"]))
    counts = np.bincount(frame["user_idx"].to_numpy(), minlength=len(user_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Sequences(frame["item_idx"].to_numpy().astype(np.int64), offsets, list(item_ids), list(user_ids))


def load_sequences(path: str | Path, fmt: str = "auto", k: int = 0, min_len: int = 1,
                   item_ids: list[str] | None = None) -> Sequences:
    """Read and prepare in one call (what the CLI uses)."""
    return build_sequences(read_interactions(path, fmt), k=k, min_len=min_len, item_ids=item_ids)


def dataset_stats(path: str | Path, fmt: str = "auto") -> dict[str, object]:
    """Users, items, interactions and sequence-length percentiles of the data as read (no filtering)."""
    raw = read_interactions(path, fmt)
    lengths = raw.interactions.group_by("user").len()["len"].to_numpy()
    quantiles = dict(zip(("p25", "p50", "p75", "p90", "p99"), np.percentile(lengths, [25, 50, 75, 90, 99]).tolist()))
    return {
        "users": len(lengths), "items": raw.interactions["item"].n_unique(), "interactions": raw.interactions.height,
        "length": {"min": int(lengths.min()), **quantiles, "max": int(lengths.max()), "mean": float(lengths.mean())},
        "item_columns": [] if raw.items is None else [c for c in raw.items.columns if c != "item"],
    }


# ---- split and tensors --------------------------------------------------------------------------
def windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, maxlen: int) -> np.ndarray:
    """The last `maxlen` items of each slice items[start:end], left-padded with 0: a (n, maxlen) array."""
    pos = ends[:, None] - maxlen + np.arange(maxlen)[None, :]
    valid = pos >= starts[:, None]
    return np.where(valid, items[np.clip(pos, 0, max(len(items) - 1, 0))], 0)


def ragged(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten the slices items[start:end] into (row of each value, value), without a Python loop."""
    lengths = ends - starts
    rows = np.repeat(np.arange(len(lengths)), lengths)
    first = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return rows, items[np.arange(lengths.sum()) + first]


@dataclass
class EvalCase:
    """One evaluation stage of a leave-one-out split: predict `targets[q]` from `inputs[q]`.

    `history` (CSR over `items`: starts..ends) is what ranking excludes; `seen_ends` extends it to the
    user's whole sequence, which sampled negatives avoid."""

    inputs: torch.Tensor
    targets: np.ndarray
    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    seen_ends: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, keep: np.ndarray) -> EvalCase:
        """The queries where the boolean mask `keep` is true."""
        return EvalCase(self.inputs[torch.from_numpy(keep)], self.targets[keep], self.items, self.starts[keep],
                        self.ends[keep], self.seen_ends[keep])

    def histories(self) -> list[np.ndarray]:
        """Each query's history as an array (for callers that need lists, e.g. index exclusion)."""
        _, values = ragged(self.items, self.starts, self.ends)
        return np.split(values, np.cumsum(self.ends - self.starts)[:-1])


class LeaveOneOut:
    """Last item of each user for test, second-to-last for validation, the rest for training.

    Users with fewer than 3 interactions only train (as in the SASRec paper's code)."""

    def __init__(self, seqs: Sequences, maxlen: int):
        self.seqs, self.maxlen = seqs, maxlen
        self.starts = seqs.offsets[:-1]
        self.evaluated = np.flatnonzero(seqs.lengths >= 3)
        self.train_ends = seqs.offsets[1:] - 2 * (seqs.lengths >= 3)

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), both (users, maxlen) long: targets are inputs shifted by one; users with a
        single training item (no target) are left out."""
        keep = self.train_ends - self.starts >= 2
        starts, ends = self.starts[keep], self.train_ends[keep]
        inputs = windows(self.seqs.items, starts, ends - 1, self.maxlen)
        targets = windows(self.seqs.items, starts + 1, ends, self.maxlen)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def case(self, stage: str) -> EvalCase:
        """`valid`: predict the second-to-last item from the training items; `test`: the last from all before it."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        if not len(self.evaluated):
            raise UserError("no user has the 3 interactions leave-one-out evaluation needs")
        users = self.evaluated
        starts, ends = self.starts[users], self.train_ends[users] + (stage == "test")
        inputs = torch.from_numpy(windows(self.seqs.items, starts, ends, self.maxlen))
        return EvalCase(inputs, self.seqs.items[ends], self.seqs.items, starts, ends, self.seqs.offsets[1:][users])
