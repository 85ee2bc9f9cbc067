"""The pipeline for the next exam: `--save-pipeline` fits the forward protocol's recipe on every year
(tuning on the last ones, fine-tuning before them), and an index built from it serves exactly that
system."""

import json

import numpy as np
import pytest

import retrieval.protocol as protocol
from helpers import one_line_error, run
from retrieval.coliee import load_coliee
from retrieval.evaluate import make_retriever
from retrieval.fusion import HybridConfig, HybridRetriever
from retrieval.protocol import fit_pipeline, forward_evaluate, plan_years
from retrieval.selection import select
from test_retrieval_protocol import YEARS, ToyExams

QUESTION = "Can a minor cancel a contract made without consent?"


def test_the_next_exam_is_tuned_on_the_last_years_and_trained_before_them():
    assert plan_years(YEARS, None, 2) == (["R01", "R02"], ["R03", "R04"])
    assert plan_years(YEARS, "R04", 2) == (["R01"], ["R02", "R03"])


def test_save_pipeline_fits_the_same_recipe_one_year_later(tiny_encoder, tmp_path, monkeypatch):
    """Scoring R04 trains on R01..R02 and tunes on R03; the saved pipeline, for the exam after R04, trains
    on R01..R03 and tunes on R04, and records what it chose."""
    year_of = {q.text: q.year for q in ToyExams().queries(YEARS)}
    trained, tuned = [], []
    real_finetune, real_tune_on = protocol.finetune_encoder, protocol.tune_on

    def finetune_spy(encoder, pairs, out, **kwargs):
        trained.append({year_of[question] for question, _ in pairs})
        return real_finetune(encoder, pairs, out, **kwargs)

    def tune_spy(retriever, queries):
        tuned.append((retriever.name, {q.year for q in queries}))
        return real_tune_on(retriever, queries)

    monkeypatch.setattr(protocol, "finetune_encoder", finetune_spy)
    monkeypatch.setattr(protocol, "tune_on", tune_spy)
    out = tmp_path / "pipeline"
    result = forward_evaluate(None, ["R04"], model="hybrid", tune_years=1, encoder=tiny_encoder, device="cpu",
                              finetune_epochs=1, data=ToyExams(), save_pipeline=out)
    assert trained == [{"R01", "R02"}, {"R01", "R02", "R03"}]
    assert tuned == [("hybrid", {"R03"}), ("bm25", {"R03"}), ("hybrid", {"R04"})]
    record = json.loads((out / "pipeline.json").read_text())
    assert (record["trained_on"], record["tuned_on"], record["encoder_dir"]) == (["R01", "R02", "R03"], ["R04"], "encoder")
    assert record["forward"]["years"]["R04"]["SetF2"] == result["years"][0]["metrics"]["SetF2"]
    saved = HybridConfig.load(out)
    assert dict(zip(saved.retrievers, saved.weights)) == record["weights"] and saved.ratio == record["ratio"]
    assert (out / "encoder" / "modules.json").is_file() and result["pipeline"]["out"] == str(out)


def test_an_index_built_from_a_pipeline_serves_exactly_its_system(tiny_encoder, tmp_path):
    """On the bundled sample (R02, R03): the pipeline fine-tunes on R02 and tunes on R03; the index embeds
    with its fine-tuned encoder and answers with the fitted system's fused scores."""
    out, index = tmp_path / "pipeline", tmp_path / "idx"
    record = fit_pipeline(load_coliee(None), out, tune_years=1, encoder=tiny_encoder, device="cpu", finetune_epochs=1)
    assert (record["trained_on"], record["tuned_on"]) == (["R02"], ["R03"])
    built = run("index", "build", "--corpus", "coliee", "--hybrid", out, "--name", index, "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    assert {k: json.loads(built.stdout)["encoder"][k] for k in ("pipeline", "dense")} == {"pipeline": "pipeline.json", "dense": "encoder"}
    assert json.loads((index / "pipeline.json").read_text()) == json.loads((out / "pipeline.json").read_text())
    answered = run("index", "query", index, QUESTION, "-k", "24", "--device", "cpu", "--json")
    assert answered.exit_code == 0, answered.output
    hits = json.loads(answered.stdout)

    articles = load_coliee(None).articles
    parts = make_retriever("hybrid", articles, str(out / "encoder"), device="cpu").retrievers
    fitted = HybridRetriever.from_pretrained(out, {r.name: r for r in parts})
    expected = fitted.scores([QUESTION])[0]
    column = {a: j for j, a in enumerate(fitted.article_ids)}
    assert len(hits) == 24
    np.testing.assert_allclose([h["score"] for h in hits], [expected[column[h["id"]]] for h in hits], atol=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    answer = select(expected[None], fitted.article_ids, record["ratio"])[0]  # the protocol's answer set
    assert [h["id"] for h in hits if h["payload"]["selected"]] == answer

    one_line_error(run("index", "build", "--corpus", "coliee", "--hybrid", out, "--encoder", tiny_encoder, "--name",
                       tmp_path / "other", "--device", "cpu"), "fine-tuned", "drop --encoder")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("args, words", [
    (["--years", "R03", "--save-pipeline", "p"], ["belongs to --protocol forward"]),
    (["--protocol", "forward", "--years", "R03", "--model", "bm25", "--save-pipeline", "p"], ["--model hybrid"]),
    (["--protocol", "forward", "--years", "R03", "--save-pipeline", "taken"], ["not written by ragcli"]),
])
def test_save_pipeline_errors_exit_2_before_any_work(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("a user's file")
    one_line_error(run("eval", "coliee", *args), *words)
    assert not (tmp_path / "p").exists() and (tmp_path / "taken" / "mine.txt").read_text() == "a user's file"


def test_cli_save_pipeline_on_the_sample(tiny_encoder, tmp_path):
    """R03 is scored tuned on R02; the pipeline for the exam after R03 is tuned on R03 (nothing fine-tuned:
    it keeps the given encoder, which the index then embeds with)."""
    out = tmp_path / "p"
    result = run("eval", "coliee", "--protocol", "forward", "--years", "R03", "--tune-years", 1, "--encoder",
                 tiny_encoder, "--save-pipeline", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"pipeline for the next exam saved to {out}: tuned on R03, weights bm25" in result.stdout
    record = json.loads((out / "pipeline.json").read_text())
    assert (record["tuned_on"], record["trained_on"], record["base_encoder"]) == (["R03"], [], tiny_encoder)
    assert "encoder_dir" not in record and record["forward"]["years"]["R03"]["bm25_SetF2"] >= 0
    built = run("index", "build", "--corpus", "coliee", "--hybrid", out, "--name", tmp_path / "idx", "--device", "cpu",
                "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["dim"] == 32  # the tiny encoder's width, not MiniLM's 384
