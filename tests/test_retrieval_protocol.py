"""The forward protocol: every test year is tuned on earlier years only, and compared with BM25 with
bootstrap intervals."""

import json

import numpy as np
import pytest

import retrieval.protocol as protocol
from helpers import one_line_error, run
from indexes.errors import UserError
from indexes.metrics import bootstrap_interval
from retrieval.coliee import Query
from retrieval.protocol import forward_evaluate, tuning_years
from retrieval_models_corpus import ARTICLES, QUERIES

YEARS = ["R01", "R02", "R03", "R04"]


class ToyExams:
    """The toy statute book with its questions spread over four exam years (duck-types `Coliee`)."""

    articles = ARTICLES
    years = YEARS

    def queries(self, years):
        spread = [Query(q.id, q.text, q.gold, YEARS[i % 4]) for i, q in enumerate(QUERIES)]
        return [q for y in years for q in spread if q.year == y]


def test_tuning_years_are_the_ones_just_before():
    assert tuning_years(YEARS, "R04", 2) == ["R02", "R03"]
    assert tuning_years(YEARS, "R02", 3) == ["R01"]
    with pytest.raises(UserError, match="no exam year before R01"):
        tuning_years(YEARS, "R01")


def test_forward_protocol_never_lets_a_test_year_into_tuning(monkeypatch):
    seen = []  # (system, years the tuning stage saw)
    real_tune_on = protocol.tune_on

    def spy(retriever, queries):
        seen.append((retriever.name, {q.year for q in queries}))
        return real_tune_on(retriever, queries)

    monkeypatch.setattr(protocol, "tune_on", spy)
    result = forward_evaluate(None, ["R02", "R03", "R04"], model="bm25", tune_years=2, data=ToyExams())
    assert [years for _, years in seen] == [{"R01"}, {"R01"}, {"R01", "R02"}, {"R01", "R02"}, {"R02", "R03"},
                                           {"R02", "R03"}]  # the system and BM25, each year
    assert [r["tuned_on"] for r in result["years"]] == [["R01"], ["R01", "R02"], ["R02", "R03"]]
    assert [r["queries"] for r in result["years"]] == [3, 2, 2]
    pooled = result["pooled"]
    assert pooled["queries"] == 7 and pooled["gain_over_bm25"] == 0.0 and pooled["gain_interval"] == (0.0, 0.0)
    low, high = pooled["SetF2_interval"]
    assert low <= pooled["SetF2"] <= high


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    small, large = rng.random(30), rng.random(3000)
    for sample in (small, large):
        low, high = bootstrap_interval(sample)
        assert low < sample.mean() < high
    assert np.subtract(*bootstrap_interval(large)[::-1]) < np.subtract(*bootstrap_interval(small)[::-1]) / 5
    assert bootstrap_interval(small + 0.2, small) == pytest.approx((0.2, 0.2))  # a constant gain is certain
    gain_low, gain_high = bootstrap_interval(small + rng.normal(0.05, 0.01, 30), small)
    assert 0.04 < gain_low < 0.05 < gain_high < 0.06


def test_cli_forward_protocol_on_the_sample_and_its_errors():
    result = run("eval", "coliee", "--protocol", "forward", "--years", "R03", "--model", "bm25", "--json")
    assert result.exit_code == 0, result.output
    year = json.loads(result.stdout)["years"][0]
    assert year["year"] == "R03" and year["tuned_on"] == ["R02"] and 0 <= year["metrics"]["SetF2"] <= 1
    one_line_error(run("eval", "coliee", "--protocol", "forward", "--years", "R02", "--model", "bm25"),
                   "no exam year before R02")
    one_line_error(run("eval", "coliee", "--protocol", "forward", "--years", "R03", "--valid-years", "R02"),
                   "drop --valid-years")
