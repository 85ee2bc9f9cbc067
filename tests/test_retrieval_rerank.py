"""The cross-encoder re-ranker: its training pairs, that it learns and reloads exactly, selection by
probability, the candidate count by recall, and under the forward protocol it never trains or tunes on
a test year."""

import numpy as np
import pytest
from retrieval_models_corpus import ARTICLES, QUERIES
from test_retrieval_protocol import ToyExams

import retrieval.protocol as protocol
import retrieval.rerank as rerank_module
from cli import _format_forward
from helpers import one_line_error, run
from indexes.runtime import seed_everything
from retrieval.bm25 import BM25Retriever
from retrieval.protocol import forward_evaluate
from retrieval.rerank import (MemoCrossEncoder, choose_candidates, labelled_pairs, open_cross_encoder, rerank,
                              train_cross_encoder)
from retrieval.selection import select_by_probability, tune_threshold

TEXTS = [a.search_text for a in ARTICLES]


def _bm25_scores(queries):
    return BM25Retriever.build(TEXTS, [a.id for a in ARTICLES]).scores([q.text for q in queries])


def _bce(model, pairs):
    import torch

    logits = model.predict([(q, a) for q, a, _ in pairs], activation_fn=torch.nn.Identity())
    labels = torch.tensor([float(y) for *_, y in pairs])
    return float(torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), labels))


def test_pairs_hold_every_gold_article_and_interleave_non_gold_negatives():
    scores = np.tile(np.arange(len(ARTICLES), 0, -1, dtype=np.float32), (len(QUERIES), 1))  # article order
    reverse = scores[:, ::-1].copy()
    pairs = labelled_pairs(ARTICLES, QUERIES, [scores, reverse], negatives=3)
    positives = [(q, a) for q, a, y in pairs if y == 1]
    assert len(positives) == sum(len(q.gold) for q in QUERIES)
    first = [(a, y) for q, a, y in pairs if q == QUERIES[0].text]  # gold: article 1, the best of `scores`
    assert first == [(TEXTS[0], 1), (TEXTS[9], 0), (TEXTS[1], 0), (TEXTS[8], 0)]  # 10 (reverse), 2, then 9-2
    gold_texts = {(q.text, TEXTS[[a.id for a in ARTICLES].index(g)]) for q in QUERIES for g in q.gold}
    assert not any((q, a) in gold_texts for q, a, y in pairs if y == 0)
    assert sum(1 for *_, y in pairs if y == 0) == 3 * len(QUERIES)


def test_cross_encoder_learns_and_reloads_with_identical_scores(tiny_encoder, tmp_path, monkeypatch):
    pairs = labelled_pairs(ARTICLES, QUERIES, [_bm25_scores(QUERIES)], negatives=2)
    seed_everything(0)
    before = _bce(open_cross_encoder(tiny_encoder, "cpu", 64, num_labels=1), pairs)  # the head training starts from
    trained = []  # the model the trainer fine-tunes in memory
    real_open = rerank_module.open_cross_encoder

    def keep(*args, **kwargs):
        trained.append(real_open(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(rerank_module, "open_cross_encoder", keep)
    record = train_cross_encoder(tiny_encoder, pairs, tmp_path / "ce", epochs=4, batch_size=4, lr=1e-3,
                                 max_length=64, device="cpu")
    losses = [h["loss"] for h in record["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert record["pairs"] == len(pairs) and record["positives"] == sum(len(q.gold) for q in QUERIES)
    assert (tmp_path / "ce" / "model.safetensors").is_file() and (tmp_path / "ce" / "training.json").is_file()
    reloaded = real_open(tmp_path / "ce")
    assert _bce(reloaded, pairs) < before
    sample = [(q, a) for q, a, _ in pairs]
    np.testing.assert_allclose(reloaded.predict(sample), trained[0].predict(sample), atol=1e-6)


def test_rerank_puts_candidates_on_top_in_cross_encoder_order():
    class Fixed:
        calls = 0

        def predict(self, pairs, **kwargs):
            Fixed.calls += 1
            return np.asarray([{"t0": 1.0, "t1": 3.0, "t2": 9.0}[a] for _, a in pairs])

    first_stage = np.asarray([[0.9, 0.8, 0.1, 0.5]], dtype=np.float32)
    model = MemoCrossEncoder(Fixed())
    out = rerank(model, ["q"], ["t0", "t1", "t2", "t3"], first_stage, candidates=2)
    assert out.columns.tolist() == [[1, 0]]
    np.testing.assert_allclose(out.probabilities, 1 / (1 + np.exp(-np.asarray([[3.0, 1.0]]))))
    assert np.argsort(-out.scores[0]).tolist() == [1, 0, 3, 2]  # t2's high logit is never asked: not a candidate
    rerank(model, ["q"], ["t0", "t1", "t2", "t3"], first_stage, candidates=2)
    assert Fixed.calls == 1  # the memo answered the second time


def test_select_by_probability_keeps_the_top_and_respects_the_threshold():
    ids = [["a", "b", "c"], ["d", "e", "f"]]
    assert select_by_probability(np.asarray([[0.3, 0.2, 0.1], [0.2, 0.9, 0.6]]), ids, 0.5) == [["a"], ["e", "f"]]
    assert select_by_probability(np.asarray([[0.3, 0.5, 0.5], [0.1, 0.1, 0.1]]), ids, 0.5) == [["b", "c"], ["d"]]
    assert len(select_by_probability(np.full((1, 7), 0.9), [list("abcdefg")], 0.5)[0]) == 5  # capped
    assert select_by_probability(np.asarray([[0.3, 0.9, 0.6]]), [["a", "b", "c"]], 0.5, max_k=1) == [["b"]]


def test_threshold_tuning_picks_the_f2_best_value():
    probabilities = np.asarray([[0.9, 0.6, 0.2], [0.8, 0.5, 0.3]])
    ids, gold = [["a", "b", "c"], ["d", "e", "f"]], [["a", "b"], ["d"]]
    # by hand: 0.1 -> (10/11 + 5/7) / 2 = 0.812; 0.4 -> (1 + 5/6) / 2; 0.55 -> 1.0; 0.7 -> (5/9 + 1) / 2
    assert tune_threshold(probabilities, ids, gold, grid=(0.1, 0.4, 0.55, 0.7)) == (0.55, 1.0)
    assert tune_threshold(probabilities, ids, gold, grid=(0.1, 0.55, 0.58, 0.7)) == (0.58, 1.0)  # tie: higher
    assert tune_threshold(probabilities, ids, gold, grid=(0.1,))[1] == pytest.approx((10 / 11 + 5 / 7) / 2)


def test_candidate_count_is_the_smallest_reaching_the_recall_target():
    scores = np.asarray([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    ids, gold = ["a", "b", "c", "d"], [["a"], ["c"]]
    assert choose_candidates(scores, ids, gold, target=0.95) == (3, 1.0)
    assert choose_candidates(scores, ids, gold, target=0.5) == (1, 0.5)
    assert choose_candidates(scores, ids, gold, target=0.95, cap=2) == (2, 0.5)


@pytest.mark.parametrize("once", [False, True])
def test_forward_reranking_never_sees_a_test_year(tiny_encoder, monkeypatch, once):
    year_of = {q.text: q.year for q in ToyExams().queries(ToyExams.years)}
    trained, tuned = [], []
    real_train, real_tune = protocol.train_cross_encoder, protocol.tune_reranker

    def train_spy(encoder, pairs, out, **kwargs):
        trained.append({year_of[q] for q, _, _ in pairs})
        return real_train(encoder, pairs, out, **{**kwargs, "max_length": 64})

    def tune_spy(model, first_stage, queries, articles, **kwargs):
        tuned.append({q.year for q in queries})
        return real_tune(model, first_stage, queries, articles, **kwargs)

    monkeypatch.setattr(protocol, "train_cross_encoder", train_spy)
    monkeypatch.setattr(protocol, "tune_reranker", tune_spy)
    result = forward_evaluate(None, ["R03", "R04"], model="bm25", tune_years=1, encoder=tiny_encoder, device="cpu",
                              data=ToyExams(), rerank_epochs=1, rerank_negatives=2, rerank_once=once)
    assert trained == ([{"R01"}] if once else [{"R01"}, {"R01", "R02"}])
    assert tuned == [{"R02"}, {"R03"}]
    years = result["years"]
    assert [r["rerank"]["trained_on"] for r in years] == ([["R01"]] * 2 if once else [["R01"], ["R01", "R02"]])
    assert all(1 <= r["rerank"]["candidates"] <= len(ARTICLES) and 0 <= r["metrics"]["SetF2"] <= 1 for r in years)
    pooled = result["pooled"]
    assert pooled["queries"] == 4 and "gain_over_first_stage_interval" in pooled
    assert "re-ranker gain" in _format_forward(result) and "cross-encoder" in result["model"]


def test_cli_rerank_needs_the_forward_protocol():
    one_line_error(run("eval", "coliee", "--rerank-epochs", 1), "--protocol forward")
