"""Ranking metrics against cases computed by hand."""

import math

import numpy as np
import pytest

from indexes import metrics as M


def test_hit_matrix_marks_relevant_ranks_and_counts_gold():
    hits, n_rel = M.hit_matrix([["a", "b", "c"], ["x"]], [{"b", "z"}, set()])
    assert hits.tolist() == [[False, True, False], [False, False, False]]
    assert n_rel.tolist() == [2, 0]


def test_single_target_metrics():
    # query 0: target at rank 2; query 1: target at rank 1; query 2: target missing from top 3
    hits = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    n_rel = np.array([1, 1, 1])
    assert M.hit_rate_at_k(hits, 1).tolist() == [0, 1, 0]
    assert M.hit_rate_at_k(hits, 3).tolist() == [1, 1, 0]
    assert M.mrr_at_k(hits, 3).tolist() == [0.5, 1.0, 0.0]
    assert M.ndcg_at_k(hits, n_rel, 3) == pytest.approx([1 / math.log2(3), 1.0, 0.0])
    assert M.ndcg_at_k(hits, n_rel, 1).tolist() == [0.0, 1.0, 0.0]


def test_multi_target_precision_recall_ndcg_ap():
    hits = np.array([[1, 0, 1, 0]], dtype=bool)  # relevant at ranks 1 and 3, 3 relevant overall
    n_rel = np.array([3])
    assert M.precision_at_k(hits, 4)[0] == 0.5
    assert M.recall_at_k(hits, n_rel, 4)[0] == pytest.approx(2 / 3)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k(hits, n_rel, 4)[0] == pytest.approx(dcg / idcg)
    assert M.average_precision(hits, n_rel)[0] == pytest.approx((1 + 2 / 3) / 3)
    assert M.average_precision(hits, n_rel, k=2)[0] == pytest.approx(1 / 2)


def test_map_at_r_counts_only_the_first_r_ranks():
    # R = 2: ranks 1 and 3 relevant, only rank 1 is inside R -> (1/1) / 2
    hits = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    assert M.map_at_r(hits, np.array([2, 2])) == pytest.approx([0.5, 0.25])
    with pytest.raises(ValueError):
        M.map_at_r(hits, np.array([4, 1]))


def test_set_fbeta_is_per_query_and_empty_prediction_scores_zero():
    p, r, f2 = M.set_precision_recall_fbeta([{"1", "2"}, set(), {"7"}], [{"1"}, {"5"}, {"7", "8"}])
    assert p.tolist() == [0.5, 0.0, 1.0]
    assert r.tolist() == [1.0, 0.0, 0.5]
    assert f2 == pytest.approx([5 * 0.5 / (4 * 0.5 + 1), 0.0, 5 * 0.5 / (4 + 0.5)])


def test_summarize_names_and_averages():
    hits = np.array([[0, 1], [1, 0]], dtype=bool)
    out = M.summarize(hits, np.array([1, 1]), ks=[1, 2], metrics=("Success", "RR"))
    assert out == {"Success@1": 0.5, "Success@2": 1.0, "RR@1": 0.5, "RR@2": 0.75}
    assert set(M.summarize(hits, np.array([1, 1]), ks=[10])) == {"Success@10", "nDCG@10", "RR@10"}
    for unknown in ("nope", "HR"):  # the old names are gone
        with pytest.raises(ValueError):
            M.summarize(hits, np.array([1, 1]), ks=[1], metrics=(unknown,))


def test_old_metric_names_are_read_as_todays():
    old = {"HR@10": 1, "NDCG@5": 2, "MRR@10": 3, "Recall@50": 4, "MAP": 5, "P": 6, "R": 7, "F2": 8,
           "valid_ndcg10": 9, "best_valid_ndcg10": 10, "valid_recall@5": 11, "bm25_F2": 12}
    assert M.current_names(old) == {"Success@10": 1, "nDCG@5": 2, "RR@10": 3, "R@50": 4, "AP": 5, "SetP": 6,
                                    "SetR": 7, "SetF2": 8, "valid_nDCG@10": 9, "best_valid_nDCG@10": 10,
                                    "valid_R@5": 11, "bm25_SetF2": 12}
    today = {"Success@1": 1, "R@5": 2, "P@5": 3, "nDCG@10": 4, "AP": 5, "mAP@R": 6, "SetF2": 7, "epoch": 8, "loss": 9}
    assert M.current_names(today) == today
