"""The shared validators (`indexes.checks`) and the one-line loading errors (`indexes.runtime.error_line`)
that every family's settings and checkpoints go through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from indexes import UserError
from indexes.checks import boolean, choice, integer, number, text
from indexes.runtime import error_line


@pytest.mark.parametrize("value", [0, 11, True, 2.0, "3", None, [1]])
def test_integer_refuses_other_types_and_out_of_range(value):
    with pytest.raises(UserError, match=r"^depth must be an integer in \[1, 10\], got "):
        integer("depth", value, 1, 10)


def test_integer_passes_a_valid_value_through():
    assert integer("depth", 10, 1, 10) == 10


@pytest.mark.parametrize("value, bounds, message", [
    (1.0, dict(low=0, high=1, high_open=True), r"dropout must be a number in \[0, 1\), got 1\.0"),
    (0, dict(low=0, high=1, low_open=True), r"dropout must be a number in \(0, 1\], got 0"),
    (float("nan"), dict(low=0, high=1), r"a number in \[0, 1\], got nan"),
    (float("inf"), dict(low=0), r"dropout must be a finite number >= 0, got inf"),
    (0.0, dict(low=0, low_open=True), r"a finite number > 0"),
    (3, dict(high=2), r"a finite number <= 2"),
    (True, {}, r"dropout must be a finite number, got True"),
    ("0.1", {}, r"got '0\.1'"),
    (10**400, {}, r"got 1000000.*\.\.\.$"),
])
def test_number_refuses_bools_nan_infinity_and_out_of_range(value, bounds, message):
    with pytest.raises(UserError, match=message):
        number("dropout", value, **bounds)


def test_number_gives_a_float():
    assert number("lr", 1, 0, low_open=True) == 1.0 and type(number("lr", 1, 0)) is float


def test_choice_wants_the_same_type():
    assert choice("pooling", "mean", ("mean", "cls")) == "mean"
    for value in ("max", 1, None):
        with pytest.raises(UserError, match=r"^pooling must be one of 'mean', 'cls'; got "):
            choice("pooling", value, ("mean", "cls"))
    with pytest.raises(UserError):
        choice("flag", 1, (True, False))


@pytest.mark.parametrize("value", [0, 1, "true", None])
def test_boolean_is_only_true_or_false(value):
    with pytest.raises(UserError, match="^pre_ln must be true or false, got "):
        boolean("pre_ln", value)
    assert boolean("pre_ln", False) is False


@pytest.mark.parametrize("value", ["", "  ", None, 7])
def test_text_is_a_non_blank_string(value):
    with pytest.raises(UserError, match="^encoder must be a model name or path, got "):
        text("encoder", value, "a model name or path")
    assert text("encoder", "all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"


def test_a_huge_value_is_cut_in_the_message():
    with pytest.raises(UserError) as err:
        text("spec", 10**6 * [1], "a string")
    assert len(str(err.value)) < 200
    with pytest.raises(UserError, match="too large to show"):
        integer("n", 10**5000, 1, 10)


def test_error_line_names_a_few_keys_of_a_strict_load():
    err = RuntimeError('Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "a", "b", "c", "d".'
                       '\n\tUnexpected key(s) in state_dict: "z".')
    assert error_line(err) == "Missing key(s) in state_dict: a, b, c (+1 more); Unexpected key(s) in state_dict: z"
    assert error_line(ValueError("first\nsecond")) == "first"
    assert error_line(KeyError()) == "KeyError"
    assert len(error_line(OSError("x" * 1000))) == 300


def test_the_checks_stay_light():
    """The CLI reads the limits when it starts: importing the checks (and the CLI) must not load torch."""
    code = "import sys, cli, indexes.checks, recsys.checks, retrieval.checks; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "False"
