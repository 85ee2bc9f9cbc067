"""Coloured digits (`data make-conditional --source digits`): scikit-learn's 8 x 8 digits painted in a
palette, split by source digit, written in the shapes benchmark's layout and trained on unchanged."""

import json

import numpy as np
import pytest

from helpers import run
from vision.digits import DIGIT_FACTORS, DIGIT_PHRASINGS, draw_digits, make_digits, source_digits, split_sources
from vision.synthetic import load_split


def test_digits_are_deterministic_by_seed_and_split_by_fraction():
    a, b, c = (make_digits(n=50, size=16, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a["train"].images, b["train"].images) and a["test"].labels.equals(b["test"].labels)
    assert not np.array_equal(a["train"].images, c["train"].images)
    assert (len(a["train"]), len(a["test"])) == (40, 10) and a["train"].images.shape[1:] == (16, 16, 3)
    assert a["train"].labels.columns == ["digit", "colour"] and a["train"].phrasings == DIGIT_PHRASINGS


def test_sources_never_cross_the_split_and_are_reused_evenly():
    rng = np.random.default_rng(0)
    train, test = split_sources(1797, 4000, 0.2, rng)
    assert (len(train), len(test)) == (3200, 800) and not set(train) & set(test)
    assert len(set(train)) == 1438 and len(set(test)) == 359  # 20 % of the sources held out for test
    assert np.bincount(train).max() - np.bincount(train)[np.unique(train)].min() <= 1  # each reused evenly
    _, digits = source_digits()
    labels = make_digits(n=4000, size=16, seed=0)["train"].labels
    assert sorted(labels["digit"].unique()) == list(DIGIT_FACTORS["digit"])
    assert sorted(labels["colour"].unique()) == sorted(DIGIT_FACTORS["colour"])
    assert set(labels["digit"].value_counts()["count"]) <= set(range(250, 400)) and len(digits) == 1797


def test_drawn_pixels_follow_glyph_and_colour():
    glyphs = np.zeros((2, 12, 12), np.float32)
    glyphs[:, 3:9, 3:9] = 1.0
    images = draw_digits(glyphs, np.array(["red", "cyan"]), 16, np.random.default_rng(0)).astype(int)
    bright = images.max(-1) > 100
    assert list(bright.sum((1, 2))) == [36, 36]  # the 6 x 6 square, wherever it was shifted
    red, cyan = images[0][bright[0]].mean(0), images[1][bright[1]].mean(0)
    assert red[0] > 180 and red[1:].max() < 80 and cyan[0] < 80 and cyan[1:].min() > 160
    assert images[~bright].mean() < 40  # the dark background
    data = make_digits(n=200, size=32, seed=1)["train"]
    ones, zeros = (data.images[data.labels["digit"].to_numpy() == d].max(-1) > 100 for d in ("1", "0"))
    assert ones.sum((1, 2)).mean() < zeros.sum((1, 2)).mean()  # a 1 is thinner than a 0


def test_cli_writes_the_benchmark_layout_that_training_and_eval_read(tmp_path):
    data = tmp_path / "digits"
    made = run("data", "make-conditional", "--source", "digits", "--out", data, "--n", 60, "--size", 16, "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert info["splits"] == {"train": 48, "test": 12} and info["factors"] == {f: list(v) for f, v in DIGIT_FACTORS.items()}
    assert json.loads((data / "conditions.json").read_text()) == {f: list(p) for f, p in DIGIT_PHRASINGS.items()}
    test = load_split(data, "test")
    assert test.images.shape == (12, 16, 16, 3) and test.labels.columns == ["digit", "colour"]
    model = tmp_path / "lens"
    trained = run("train", "focallens", "--data", data, "--out", model, "--epochs", 1, "--batch-size", 16, "--embed-dim", 32,
                  "--depth", 1, "--heads", 2, "--attributes", "digit", "--device", "cpu", "--json")
    assert trained.exit_code == 0, trained.output
    result = run("eval", "images", "--data", data, "--model", model, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"digit", "colour", "mean"}


@pytest.mark.parametrize("args", [("--source", "mnist"), ("--size", 8)])
def test_cli_refuses_bad_requests(tmp_path, args):
    result = run("data", "make-conditional", "--source", "digits", "--out", tmp_path / "d", *args)
    assert result.exit_code == 2 and not (tmp_path / "d").exists()
