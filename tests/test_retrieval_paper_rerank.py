"""`eval coliee --paper-rerank`: a trained model as Paraformer's paper runs it (BM25's top n re-scored by
alpha * p + (1 - alpha) * BM25, the best article answered), on hand-checked scores and through the CLI."""

import json

import numpy as np
import pytest

from helpers import one_line_error, run
from indexes.errors import UserError
from retrieval.fusion import PaperRerank, candidates_on_top


class Fixed:
    """A retriever with a fixed score matrix."""

    def __init__(self, name, scores, ids=("a", "b", "c", "d")):
        self.name, self.matrix, self.article_ids = name, np.asarray(scores, dtype=np.float64), list(ids)

    def scores(self, queries):
        return self.matrix[: len(queries)]


def test_only_bm25s_top_n_are_rescored_by_the_papers_formula():
    bm25 = Fixed("bm25", [[9.0, 1.0, 7.0, 8.0]])
    model = Fixed("paraformer", [[0.0, 50.0, np.log(3.0), 0.0]])  # b is the model's favourite, outside BM25's top 3
    scores = PaperRerank(bm25, model, top_n=3, alpha=0.5).scores(["q"])
    # candidates a, c, d; softmax over their model scores: 1/5, 3/5, 1/5
    expected = {"a": 0.5 * 0.2 + 0.5 * 9, "c": 0.5 * 0.6 + 0.5 * 7, "d": 0.5 * 0.2 + 0.5 * 8}
    for column, article in enumerate("abcd"):
        if article in expected:
            assert scores[0, column] == pytest.approx(expected[article])
    assert scores[0, 1] < min(expected.values())  # b was no candidate: below all of them
    assert np.argmax(scores[0]) == 0


def test_alpha_moves_the_order_within_the_candidates():
    bm25 = Fixed("bm25", [[5.0, 4.9, 0.0, 0.0]])
    model = Fixed("paraformer", [[0.0, 10.0, 0.0, 0.0]])
    assert np.argmax(PaperRerank(bm25, model, top_n=2, alpha=0.0).scores(["q"])[0]) == 0  # BM25 alone
    assert np.argmax(PaperRerank(bm25, model, top_n=2, alpha=0.1).scores(["q"])[0]) == 1  # 0.1 * 1 beats 0.09
    assert np.argmax(PaperRerank(bm25, model, top_n=2, alpha=1.0).scores(["q"])[0]) == 1


def test_non_candidates_keep_the_first_stage_order_below_the_candidates():
    first = np.array([[4.0, 3.0, 2.0, 1.0]])
    full = candidates_on_top(first, np.array([[3]]), np.array([[10.0]]))
    assert np.argsort(-full[0]).tolist() == [3, 0, 1, 2]


def test_bad_settings_and_misaligned_retrievers_are_refused():
    bm25 = Fixed("bm25", [[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(UserError, match="paper-alpha"):
        PaperRerank(bm25, Fixed("m", [[0, 0, 0, 0]]), alpha=1.5)
    with pytest.raises(UserError, match="same articles"):
        PaperRerank(bm25, Fixed("m", [[0, 0, 0, 0]], ids=("d", "c", "b", "a")))


def test_cli_answers_one_article_per_question(tmp_path):
    model = tmp_path / "cnn"
    trained = run("train", "attentive-cnn", "--out", model, "--train-years", "R02", "--valid-years", "R03",
                  "--epochs", "1", "--negatives", "2", "--json")
    assert trained.exit_code == 0, trained.output
    result = run("eval", "coliee", "--years", "R03", "--model", model, "--paper-rerank", "--paper-top-n", "5",
                 "--run", tmp_path / "paper.run", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ratio"] == 1.0 and summary["model"] == "attentive-cnn-paper-bm25top5-alpha0.1"
    lines = [line.split() for line in (tmp_path / "paper.run").read_text().splitlines()]
    questions = [fields[0] for fields in lines]
    assert questions and len(questions) == len(set(questions))  # one answer per question
    assert all(fields[5] == summary["model"] for fields in lines)
    one_line_error(run("eval", "coliee", "--model", "bm25", "--paper-rerank"), "trained model")
    one_line_error(run("eval", "coliee", "--model", model, "--paper-rerank", "--protocol", "forward"),
                   "--protocol single")
