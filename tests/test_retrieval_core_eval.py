"""BM25, fusion, set selection, COLIEE metrics, run files and `ragcli eval coliee` on hand-made cases."""

import json
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from cli import ragcli
from indexes.errors import UserError
from retrieval.base import Retriever, ranked_ids, top_k
from retrieval.bm25 import BM25Retriever
from retrieval.coliee import Query
from retrieval.evaluate import coliee_metrics, evaluate_coliee, make_retriever, run_lines
from retrieval.fusion import HybridConfig, HybridRetriever, fuse, normalize, reciprocal_rank_fusion, tune_weights, weight_grid
from retrieval.selection import select, tune_ratio

IDS = ["1", "2", "3-2"]


class Fixed:
    """A retriever with a fixed score row per query text."""

    def __init__(self, name, rows, ids=IDS):
        self.name, self.rows, self.article_ids = name, rows, list(ids)

    def scores(self, queries):
        return np.asarray([self.rows[q] for q in queries], dtype=np.float32)


def test_coliee_metrics_macro_f2_by_hand():
    scores = np.array([[0.9, 0.8, 0.1], [0.1, 0.7, 0.6]])
    gold = [["1"], ["2", "3-2"]]
    selected = [["1", "2"], ["2"]]  # q1: P 1/2, R 1 -> F2 5/6; q2: P 1, R 1/2 -> F2 5/9
    m = coliee_metrics(scores, IDS, gold, selected)
    assert m["SetP"] == pytest.approx(0.75) and m["SetR"] == pytest.approx(0.75)
    assert m["SetF2"] == pytest.approx((5 / 6 + 5 / 9) / 2)  # per query, then averaged (not F2 of mean P, R)
    assert m["R@1"] == pytest.approx((1 + 0.5) / 2) and m["R@5"] == 1.0
    assert m["AP"] == pytest.approx((1 + 1) / 2)


def test_run_file_lines():
    queries = [Query("R03-1-A", "q", ("1",), "R03"), Query("R03-2-E", "q", ("2",), "R03")]
    scores = np.array([[0.9, 0.8, 0.1], [0.1, 0.7, 0.65]])
    assert run_lines(queries, scores, IDS, [["1", "2"], ["2", "3-2"]], "ragcli") == [
        "R03-1-A Q0 1 1 0.900000 ragcli", "R03-1-A Q0 2 2 0.800000 ragcli",
        "R03-2-E Q0 2 1 0.700000 ragcli", "R03-2-E Q0 3-2 2 0.650000 ragcli"]


def test_select_keeps_top1_and_relative_threshold():
    scores = np.array([[10.0, 9.5, 8.0], [-1.0, -3.0, -1.05], [0.0, 0.0, 0.0]])
    assert select(scores, IDS, ratio=0.9) == [["1", "2"], ["1", "3-2"], ["1", "2", "3-2"]]
    assert select(scores, IDS, ratio=1.0)[0] == ["1"]
    assert select(scores, IDS, ratio=0.0, max_k=2)[0] == ["1", "2"]


def test_tune_ratio_finds_the_f2_best_cut():
    scores = np.array([[1.0, 0.95, 0.5], [1.0, 0.85, 0.2]])
    ratio, f2 = tune_ratio(scores, IDS, [["1", "2"], ["1"]], grid=(0.8, 0.9, 1.0))
    # 0.8 keeps 2 articles for both (F2 1 and 5/6), 0.9 keeps 2 then 1 (F2 1 and 1), 1.0 keeps 1 each
    assert (ratio, f2) == (0.9, 1.0)


def test_top_k_and_ranked_ids():
    scores = np.array([[0.1, 0.9, 0.5]])
    assert top_k(scores, 2).tolist() == [[1, 2]] and ranked_ids(scores, IDS, 5) == [["2", "3-2", "1"]]


def test_normalize_fuse_and_weight_grid():
    assert normalize(np.array([[2.0, 4.0, 3.0], [1.0, 1.0, 1.0]])).tolist() == [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    fused = fuse([np.array([[0.0, 10.0, 5.0]]), np.array([[1.0, 0.0, 0.5]])], [0.75, 0.25])
    np.testing.assert_allclose(fused, [[0.25, 0.75, 0.5]])
    grid = weight_grid(3, 0.5)
    assert len(grid) == 6 and np.allclose(grid.sum(1), 1)


def test_tune_weights_and_hybrid_retriever():
    a = Fixed("a", {"q": [1.0, 0.0, 0.5]})
    b = Fixed("b", {"q": [0.0, 1.0, 0.9]})
    weights, value = tune_weights([a.scores(["q"]), b.scores(["q"])], lambda s: float(s[0, 2] - s[0].max()), step=0.25)
    assert value == 0 and weights[1] >= 0.5  # article 3-2 can only come first with enough weight on b
    hybrid = HybridRetriever([a, b], weights=[0.5, 0.5])
    assert isinstance(hybrid, Retriever) and hybrid.named_weights() == {"a": 0.5, "b": 0.5}
    np.testing.assert_allclose(hybrid.scores(["q"]), [[0.5, 0.5, 0.7]], rtol=1e-6)
    with pytest.raises(UserError, match="same articles"):
        HybridRetriever([a, Fixed("c", {}, ids=["1", "2", "3"])])


def test_reciprocal_rank_fusion_uses_ranks_only_and_is_saved_with_the_recipe(tmp_path):
    a = Fixed("a", {"q": [9.0, 1.0, 5.0]})  # ranks 1, 3, 2
    b = Fixed("b", {"q": [0.1, 0.3, 0.2]})  # ranks 3, 1, 2
    expected = [[1 / 61 + 1 / 63, 1 / 63 + 1 / 61, 2 / 62]]  # RRF with k = 60
    np.testing.assert_allclose(reciprocal_rank_fusion([a.scores(["q"]), b.scores(["q"])]), expected, rtol=1e-6)
    scaled = Fixed("b", {"q": [10.0, 30.0, 20.0]})  # same ranking, other scale: same fusion
    hybrid = HybridRetriever([a, scaled], fusion="rrf")
    np.testing.assert_allclose(hybrid.scores(["q"]), expected, rtol=1e-6)
    assert hybrid.settings() == {"fusion": "rrf"}
    hybrid.save_pretrained(tmp_path / "recipe")
    assert HybridRetriever.from_pretrained(tmp_path / "recipe", {"a": a, "b": b}).fusion == "rrf"
    assert HybridConfig.load(tmp_path / "recipe").fusion == "rrf"
    with pytest.raises(UserError, match="fusion"):
        HybridRetriever([a, b], fusion="max")


def test_bm25_stems_drops_stop_words_and_round_trips(tmp_path):
    texts = ["A minor needs the consent of a guardian.", "Land must be registered.", "The the the of and."]
    bm25 = BM25Retriever.build(texts, IDS)
    scores = bm25.scores(["minors consenting", "the of", "registration of lands"])
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    assert scores[0].argmax() == 0 and scores[0, 1] == 0  # stemmed terms match
    assert not scores[1].any()  # stop words score nothing
    assert scores[2].argmax() == 1
    bm25.save(tmp_path / "bm25")
    loaded = BM25Retriever.load(tmp_path / "bm25")
    assert loaded.article_ids == IDS and np.array_equal(loaded.scores(["minors consenting"]), scores[:1])


def test_eval_coliee_hybrid_with_rank_fusion(tiny_encoder, tmp_path):
    result = CliRunner().invoke(ragcli, ["eval", "coliee", "--model", "hybrid", "--fusion", "rrf", "--encoder", tiny_encoder,
                                         "--valid-years", "R02", "--save-hybrid", str(tmp_path / "rrf"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fusion"] == "rrf" and "weights" not in report and 0.5 <= report["ratio"] <= 1
    assert HybridConfig.load(tmp_path / "rrf").fusion == "rrf"
    refused = CliRunner().invoke(ragcli, ["eval", "coliee", "--model", "bm25", "--fusion", "rrf"])
    assert refused.exit_code == 2 and "--fusion" in refused.output


def test_evaluate_coliee_bm25_tunes_and_writes_run(tmp_path):
    run = tmp_path / "out.run"
    result = evaluate_coliee(None, ["R03"], "bm25", valid_years=["R02"], run=run, run_id="test")
    assert result["model"] == "bm25" and result["queries"] == 4 and 0.5 <= result["ratio"] <= 1
    assert set(result["metrics"]) == {"SetF2", "SetP", "SetR", "AP", "R@1", "R@5", "R@10", "R@20", "R@50"}
    lines = run.read_text().splitlines()
    assert len(lines) >= 4 and all(len(line.split()) == 6 and line.split()[1] == "Q0" and line.endswith(" test") for line in lines)
    assert {line.split()[0] for line in lines} == {"R03-1-U", "R03-2-A", "R03-3-E", "R03-4-I"}


def test_hybrid_fuses_a_trained_model_from_retrieval_models(monkeypatch, tmp_path):
    loaded = {}

    def load_retriever(model_dir, articles, device):
        loaded["args"] = (model_dir, len(articles), device)
        return Fixed("neural", {}, ids=[a.id for a in articles])

    monkeypatch.setitem(sys.modules, "retrieval.models", types.SimpleNamespace(load_retriever=load_retriever))
    monkeypatch.setattr("retrieval.evaluate._builtin", lambda model, texts, ids, encoder, device: Fixed(model, {}, ids))
    from retrieval.coliee import load_coliee

    articles = load_coliee().articles
    hybrid = make_retriever("hybrid", articles, rerank=tmp_path, device="cpu")
    assert [r.name for r in hybrid.retrievers] == ["bm25", "dense", "neural"]
    assert loaded["args"] == (tmp_path, len(articles), "cpu")
    assert make_retriever(str(tmp_path), articles, device="cpu").name == "neural"


@pytest.mark.parametrize("args, message", [
    (["--years", "R09"], "no query file for R09"),
    (["--years", "R03..R01"], "runs backwards"),
    (["--model", "nonsense"], "unknown model 'nonsense'"),
    (["--model", "bm25", "--rerank", "."], "--rerank and --fusion apply"),
])
def test_eval_cli_errors_exit_2_and_write_no_run(tmp_path, args, message):
    run = tmp_path / "x.run"
    result = CliRunner().invoke(ragcli, ["eval", "coliee", *args, "--run", str(run)])
    assert result.exit_code == 2 and message in result.output and not run.exists()


def test_eval_cli_run_file_in_a_missing_folder(tmp_path):
    result = CliRunner().invoke(ragcli, ["eval", "coliee", "--model", "bm25", "--run", str(tmp_path / "no" / "x.run")])
    assert result.exit_code == 2 and "no folder" in result.output


def test_eval_cli_json_and_text():
    result = CliRunner().invoke(ragcli, ["eval", "coliee", "--model", "bm25", "--years", "R02,R03", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["years"] == ["R02", "R03"] and body["queries"] == 8 and body["ratio"] == 0.9
    text = CliRunner().invoke(ragcli, ["eval", "coliee", "--model", "bm25"]).stdout
    assert text.startswith("bm25 on R03 (4 queries), untuned: ratio 0.90") and "R@10" in text
