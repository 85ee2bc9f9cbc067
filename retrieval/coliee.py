"""COLIEE Task 3 data: the English Civil Code as article records, and the riteval XML query files.

The civil code text is line based: `Part/Chapter/Section/Subsection/Division` headings, an optional
caption line in parentheses, then `Article N  text` (N may carry branch numbers, `398-2`) followed by
paragraph lines `(2) ...` and item lines `(i) ...`. Deleted articles (`Article 208  Deleted`,
`Articles 38 to 84  Deleted`) have no text and are skipped: they are not retrievable.
A query is a riteval `<pair>` under the `<dataset>` root: `<t2>` is the question, the `Article N` lines
of `<t1>` its gold articles. Every reader refuses what it cannot use (a binary or non-UTF-8 file, a FIFO,
a file without articles or questions) with one UserError naming the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexes.errors import UserError
from indexes.files import regular_file
from indexes.samples import sample_dir

SAMPLE = "coliee-sample"  # bundled with ragcli (indexes.samples)
HEADING_LEVELS = ("Part", "Chapter", "Section", "Subsection", "Division")

_ARTICLE_ID = r"\d+(?:-\d+)*"
_ARTICLE_LINE = re.compile(rf"^Articles?\s+({_ARTICLE_ID})(?![\d-])\s*(.*)$")
_HEADING_LINE = re.compile(rf"^({'|'.join(HEADING_LEVELS)})\s+[IVXLC\d]+\b")
_CAPTION_LINE = re.compile(r"^\((.+)\)$")
_PARAGRAPH_MARK = re.compile(r"^\((\d+)\)\s*")
_ITEM_MARK = re.compile(r"^\(([ivxlc]+|[a-z])\)\s*")
_DELETED = re.compile(r"^Deleted\.?$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z(\"'])")
_YEAR = re.compile(r"^([HR])(\d{1,2})$")
_LAST_HEISEI = 30  # Heisei 31 is Reiwa 1 (R01)


@dataclass(frozen=True)
class Article:
    """One Civil Code article. `text` is the caption plus every body line (what retrievers index)."""

    id: str
    caption: str
    headings: tuple[str, ...]
    paragraphs: tuple[str, ...]
    sentences: tuple[str, ...]
    text: str

    @property
    def search_text(self) -> str:
        """What BM25 and the dense encoder index: the heading path, then `text`. Headings name the
        topic ('Section 3 Sales', 'Chapter V Torts') that an article's own words often leave implicit."""
        return "\n".join((*self.headings, self.text))

    @property
    def title(self) -> str:
        """How people cite it: 'Article 5 (Juridical Acts by Minors)'."""
        return f"Article {self.id} ({self.caption})" if self.caption else f"Article {self.id}"

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Article:
        """The inverse of `dataclasses.asdict` (JSON lists back to tuples)."""
        return cls(str(record["id"]), record["caption"], tuple(record["headings"]), tuple(record["paragraphs"]),
                   tuple(record["sentences"]), record["text"])


@dataclass(frozen=True)
class Query:
    """A bar-exam question and the ids of the articles that decide it."""

    id: str
    text: str
    gold: tuple[str, ...]
    year: str


@dataclass(frozen=True)
class Coliee:
    """A COLIEE data folder: the articles, and the query files found beside them by year."""

    articles: list[Article]
    query_files: dict[str, Path]

    @property
    def years(self) -> list[str]:
        return sorted(self.query_files, key=_year_key)

    def queries(self, years: Sequence[str]) -> list[Query]:
        """The queries of `years` in order; an unknown year is a UserError listing the known ones."""
        missing = [y for y in years if y not in self.query_files]
        if missing:
            raise UserError(f"no query file for {', '.join(missing)}; available years: {', '.join(self.years) or 'none'}")
        return [q for y in years for q in read_query_file(self.query_files[y], y)]


# ---- civil code ---------------------------------------------------------------------------------
def read_civil_code(path: str | Path) -> list[Article]:
    """Parse the civil code text file into articles in file order (deleted articles skipped)."""
    path = Path(path)
    lines = [line.strip() for line in _read_text(path).splitlines()]
    articles: list[Article] = []
    headings: list[str] = []
    caption = ""
    current: tuple[str, str, tuple[str, ...], list[str]] | None = None  # id, caption, headings, body lines

    def close() -> None:
        if current is not None:
            articles.append(_article(*current))

    for line in lines:
        if not line:
            continue
        if heading := _HEADING_LINE.match(line):
            close()
            current, caption = None, ""
            level = HEADING_LEVELS.index(heading.group(1))
            headings = headings[:level] + [line]
        elif article := _ARTICLE_LINE.match(line):
            close()
            first = article.group(2).strip()
            deleted = not first or _DELETED.match(first) or line.startswith("Articles")
            current = None if deleted else (article.group(1), caption, tuple(headings), [first])
            caption = ""
        elif (cap := _CAPTION_LINE.match(line)) and not (_PARAGRAPH_MARK.match(line) or _ITEM_MARK.match(line)):
            close()
            current, caption = None, cap.group(1).strip()
        elif current is not None:
            current[3].append(line)
        # anything before the first article (the title line) is not part of any article
    close()
    if not articles:
        raise UserError(f"{path}: no articles found (expected lines like 'Article 1  text')")
    ids = [a.id for a in articles]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{path}: article {dup} appears twice")
    return articles


def _article(article_id: str, caption: str, headings: tuple[str, ...], body: list[str]) -> Article:
    """Group body lines into paragraphs (items join their paragraph) and split them into sentences."""
    paragraphs: list[list[str]] = []
    sentences: list[str] = []
    for line in body:
        if _ITEM_MARK.match(line) and paragraphs:
            paragraphs[-1].append(line)
        else:
            paragraphs.append([line])
        bare = _ITEM_MARK.sub("", _PARAGRAPH_MARK.sub("", line), count=1)
        sentences.extend(s for s in _SENTENCE_END.split(bare) if s)
    text = "\n".join(([f"({caption})"] if caption else []) + body)
    return Article(article_id, caption, headings, tuple("\n".join(p) for p in paragraphs), tuple(sentences), text)


# ---- queries ------------------------------------------------------------------------------------
def read_query_file(path: str | Path, year: str | None = None) -> list[Query]:
    """Parse one riteval XML file; `year` defaults to the one in its name (riteval_R03_en.xml).
    A file without questions is an error: a year to test or tune on must have some."""
    path = Path(path)
    year = year or _year_of(path)
    try:
        root = ET.fromstring(_read_text(path))
    except ET.ParseError as err:
        line, column = err.position
        reason = str(err).split(":")[0]
        raise UserError(f"{path}:{line}: malformed XML ({reason}, column {column})") from None
    if root.tag != "dataset":
        raise UserError(f"{path}: root element is <{root.tag}>, expected <dataset> (a riteval query file)")
    queries = [_query(path, pair, year) for pair in root.iter("pair")]
    if not queries:
        raise UserError(f"{path}: no <pair> questions in it")
    ids = [q.id for q in queries]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: question {next(i for i in ids if ids.count(i) > 1)} appears twice")
    return queries


def _query(path: Path, pair: ET.Element, year: str) -> Query:
    """One `<pair>`: its id, its `<t2>` question (whitespace collapsed) and the gold articles of `<t1>`."""
    qid = (pair.get("id") or "").strip()
    text = " ".join((pair.findtext("t2") or "").split())
    if not qid:
        raise UserError(f"{path}: a <pair> has no id")
    if not text:
        raise UserError(f"{path}: <pair id={qid!r}> has no <t2> question text")
    return Query(qid, text, gold_articles(pair.findtext("t1") or ""), year)


def gold_articles(t1: str) -> tuple[str, ...]:
    """Article ids cited at the start of `<t1>` lines, in order, once each: 'Article 537(1)' -> '537'.

    Caption lines and the article text in between are ignored."""
    ids = (m.group(1) for line in t1.splitlines() if (m := _ARTICLE_LINE.match(line.strip())))
    return tuple(dict.fromkeys(ids))


def read_queries(data_dir: str | Path, years: Sequence[str]) -> list[Query]:
    """The queries of `years` from the riteval files under `data_dir`."""
    return Coliee([], find_query_files(Path(data_dir))).queries(years)


def find_query_files(data_dir: Path) -> dict[str, Path]:
    """Year -> riteval_<year>_en.xml anywhere under `data_dir` (e.g. in train/ or test/); two files
    of one year are an error (which one would count is a guess)."""
    files: dict[str, Path] = {}
    for path in sorted(data_dir.rglob("riteval_*_en.xml")):
        year = _year_of(path)
        if year in files:
            raise UserError(f"{data_dir}: two query files for {year}: {files[year]} and {path}")
        files[year] = path
    return files


def load_coliee(data_dir: str | Path | None = None) -> Coliee:
    """Open a COLIEE folder (default: the bundled sample): its civil_code_en*.txt and riteval files."""
    data_dir = Path(data_dir).expanduser() if data_dir is not None else sample_dir(SAMPLE)
    if not data_dir.is_dir():
        raise UserError(f"no COLIEE data folder at {data_dir}" + (" (it is a file)" if data_dir.exists() else ""))
    codes = sorted(data_dir.rglob("civil_code_en*.txt"))
    if len(codes) != 1:
        found = ", ".join(p.name for p in codes) or "none"
        raise UserError(f"{data_dir}: expected one civil_code_en*.txt, found {found}")
    return Coliee(read_civil_code(codes[0]), find_query_files(data_dir))


# ---- years --------------------------------------------------------------------------------------
def parse_years(spec: str) -> list[str]:
    """'H18..R01' -> ['H18', ..., 'H30', 'R01']; 'R02,R03' -> ['R02', 'R03']; 'R03' -> ['R03'].

    Years are Japanese eras: Heisei H18..H30, then Reiwa R01, R02, ... An empty spec or part is an error."""
    if not spec.strip():
        raise UserError("no years given: use e.g. R03, H30..R01 or R02,R03")
    years: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        bounds = part.split("..")
        if len(bounds) > 2:
            raise UserError(f"bad year range {part!r} in {spec!r}: use FIRST..LAST, e.g. H30..R02")
        start, end = _year_key(bounds[0].strip(), spec), _year_key(bounds[-1].strip(), spec)
        if start > end:
            raise UserError(f"year range {part!r} runs backwards")
        years += [_year_name(*k) for k in _year_span(start, end)]
    return list(dict.fromkeys(years))


def _year_key(year: str, spec: str | None = None) -> tuple[int, int]:
    key = _era_year(year)
    if key is None:
        raise UserError(f"bad year {year!r} in {spec or year!r}: use Heisei H18..H30 or Reiwa R01, R02, ...")
    return key


def _era_year(year: str) -> tuple[int, int] | None:
    """(era, number) of 'H30' (era 0) or 'R01' (era 1); None when `year` is not such a year."""
    match = _YEAR.match(year)
    if not match:
        return None
    era, number = (0 if match.group(1) == "H" else 1), int(match.group(2))
    return (era, number) if 1 <= number <= (_LAST_HEISEI if era == 0 else 99) else None


def _year_name(era: int, number: int) -> str:
    return f"H{number}" if era == 0 else f"R{number:02d}"


def _year_span(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    heisei = [(0, n) for n in range(start[1] if start[0] == 0 else _LAST_HEISEI + 1, (end[1] if end[0] == 0 else _LAST_HEISEI) + 1)]
    reiwa = [(1, n) for n in range(start[1] if start[0] == 1 else 1, end[1] + 1)] if end[0] == 1 else []
    return heisei + reiwa


def _year_of(path: Path) -> str:
    """The year in a riteval file name, in the form `parse_years` gives (riteval_R1_en.xml -> R01)."""
    match = re.match(r"riteval_([A-Z]\d+)_", path.name)
    key = _era_year(match.group(1)) if match else None
    if key is None:
        raise UserError(f"{path}: cannot tell the year from the file name (expected riteval_<year>_en.xml, "
                        "year H18..H30 or R01, R02, ...)")
    return _year_name(*key)


def _read_text(path: Path) -> str:
    """UTF-8 text with an optional BOM removed, from a regular file only (a FIFO would hang); a
    missing, binary or undecodable file is a UserError naming it."""
    data = regular_file(path, "COLIEE file").read_bytes()
    if b"\x00" in data:
        raise UserError(f"{path}: a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
