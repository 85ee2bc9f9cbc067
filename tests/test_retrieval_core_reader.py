"""COLIEE reader: civil code structure, riteval queries, years, and the errors users see."""

from pathlib import Path

import pytest

from indexes.errors import UserError
from retrieval.coliee import gold_articles, load_coliee, parse_years, read_civil_code, read_query_file

CODE = """\ufeffA Tiny Code (title line, ignored)
Part I General
Chapter I People
(Capacity of Minors)
Article 5  (1) A minor needs consent to contract. Without it the contract is voidable.
(2) Consent may be given by a parent.
Article 5-2  Minors may buy small things.
Section 1 Deleted Things
Article 6  Deleted
Articles 7 to 9  Deleted
(Lists)
Article 10  A guardian may act in the following cases:
(i) the minor is absent;
(ii) the minor agrees.
Chapter II Property
(Revolving Mortgages)
Article 398-2  A revolving mortgage secures claims up to a maximum.
"""

QUERIES_DOUBLE = """\ufeff<?xml version="1.0" encoding="UTF-8"?>
<dataset>
<pair id="R02-1-A" label="Y">
<t1>
Article 5
(1) A minor needs consent to contract.
Article 10
A guardian may act.
</t1>
<t2>
Can a minor contract   alone?
</t2>
</pair>
</dataset>
"""

QUERIES_SINGLE = """<?xml version='1.0' encoding='UTF-8'?>
<dataset>
<pair id='R03-2-I' label='N'>
<t1>
(Capacity of Minors)
Article 5(1) A minor needs consent to contract.
(Revolving Mortgages)
Article 398-2  A revolving mortgage secures claims up to a maximum.
</t1>
<t2>Is a revolving mortgage unlimited?</t2>
</pair>
</dataset>
"""


@pytest.fixture
def coliee_dir(tmp_path: Path) -> Path:
    (tmp_path / "civil_code_en-tiny.txt").write_text(CODE, encoding="utf-8")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "riteval_R02_en.xml").write_text(QUERIES_DOUBLE, encoding="utf-8")
    (tmp_path / "riteval_R03_en.xml").write_text(QUERIES_SINGLE, encoding="utf-8")
    return tmp_path


def test_civil_code_articles_headings_paragraphs_items(coliee_dir):
    articles = {a.id: a for a in read_civil_code(coliee_dir / "civil_code_en-tiny.txt")}
    assert list(articles) == ["5", "5-2", "10", "398-2"]  # deleted 6 and 7..9 skipped, branch ids kept
    five = articles["5"]
    assert five.caption == "Capacity of Minors"
    assert five.headings == ("Part I General", "Chapter I People")
    assert five.paragraphs == ("(1) A minor needs consent to contract. Without it the contract is voidable.",
                               "(2) Consent may be given by a parent.")
    assert five.sentences == ("A minor needs consent to contract.", "Without it the contract is voidable.",
                              "Consent may be given by a parent.")
    assert five.text.startswith("(Capacity of Minors)\n(1) A minor")
    assert five.title == "Article 5 (Capacity of Minors)"
    assert five.search_text == "Part I General\nChapter I People\n" + five.text
    assert articles["5-2"].caption == "" and articles["5-2"].title == "Article 5-2"
    ten = articles["10"]
    assert ten.headings == ("Part I General", "Chapter I People", "Section 1 Deleted Things")
    assert len(ten.paragraphs) == 1 and ten.paragraphs[0].endswith("(ii) the minor agrees.")
    assert ten.sentences[1:] == ("the minor is absent;", "the minor agrees.")
    assert articles["398-2"].headings == ("Part I General", "Chapter II Property")  # a new chapter drops the section


def test_queries_both_quoting_styles_bom_and_gold(coliee_dir):
    data = load_coliee(coliee_dir)
    assert data.years == ["R02", "R03"]
    first, second = data.queries(["R02", "R03"])
    assert (first.id, first.text, first.gold, first.year) == ("R02-1-A", "Can a minor contract alone?", ("5", "10"), "R02")
    assert (second.id, second.gold, second.year) == ("R03-2-I", ("5", "398-2"), "R03")


@pytest.mark.parametrize("t1, gold", [
    ("Article 537(1) text", ("537",)),
    ("(Caption)\nArticle 3-2\ntext\nArticle 3-2  again", ("3-2",)),
    ("Article 12\n(2) see Article 99 too", ("12",)),
    ("no article here", ()),
])
def test_gold_articles(t1, gold):
    assert gold_articles(t1) == gold


def test_malformed_xml_names_file_and_line(tmp_path):
    bad = tmp_path / "riteval_R01_en.xml"
    bad.write_text('<dataset>\n<pair id="R01-1">\n<t2>x</t1>\n</pair>\n</dataset>\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"riteval_R01_en.xml:3: malformed XML"):
        read_query_file(bad)


def test_data_folder_errors(coliee_dir, tmp_path):
    with pytest.raises(UserError, match="no query file for R01; available years: R02, R03"):
        load_coliee(coliee_dir).queries(["R01"])
    with pytest.raises(UserError, match="expected one civil_code_en"):
        load_coliee(coliee_dir / "train")
    with pytest.raises(UserError, match="no COLIEE data folder"):
        load_coliee(tmp_path / "missing")
    empty = tmp_path / "civil_code_en-empty.txt"
    empty.write_text("Part I Nothing\n", encoding="utf-8")
    with pytest.raises(UserError, match="no articles found"):
        read_civil_code(empty)


def test_parse_years():
    assert parse_years("H18..R01") == [f"H{n}" for n in range(18, 31)] + ["R01"]
    assert parse_years("R02") == ["R02"]
    assert parse_years("H29..H30, R02..R03") == ["H29", "H30", "R02", "R03"]
    for bad in ("R03..R01", "X12", "H31", ""):
        with pytest.raises(UserError):
            parse_years(bad)


def test_bundled_sample_is_well_formed():
    data = load_coliee()
    ids = {a.id for a in data.articles}
    assert len(data.articles) >= 20 and "398-2" in ids and "8" not in ids  # Article 8 is deleted
    queries = data.queries(data.years)
    assert len(queries) == 8 and all(set(q.gold) <= ids for q in queries)
