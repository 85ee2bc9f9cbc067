"""The bi-encoder fine-tuned with sentence-transformers' trainer: it learns, it is saved and loaded by
path, and under the forward protocol it never trains on a tuning or test year."""

import json

import numpy as np
from retrieval_models_corpus import ARTICLES, QUERIES
from test_retrieval_protocol import ToyExams

import retrieval.protocol as protocol
from helpers import one_line_error, run
from indexes.text_encoder import open_text_encoder
from retrieval.dense import encode_texts
from retrieval.finetune import finetune_encoder, question_article_pairs
from retrieval.protocol import forward_evaluate


def test_pairs_cover_every_gold_article():
    pairs = question_article_pairs(ARTICLES, QUERIES)
    assert len(pairs) == sum(len(q.gold) for q in QUERIES)  # T-5 has two gold articles
    assert pairs[4] == (QUERIES[4].text, ARTICLES[4].search_text)


def test_finetuning_lowers_the_loss_and_changes_the_encoder(tmp_path):
    """MiniLM (the random tiny BERT cannot learn in a few steps) on the toy corpus."""
    pairs = question_article_pairs(ARTICLES, QUERIES)
    record = finetune_encoder(None, pairs, tmp_path / "ft", corpus=[a.search_text for a in ARTICLES],
                              epochs=2, batch_size=4, lr=2e-4, device="cpu")
    losses = [h["loss"] for h in record["history"]]
    assert len(losses) == 2 and losses[-1] < 0.8 * losses[0], losses
    assert record["rows"] <= len(pairs) and record["hard_negatives"] == 1
    saved = json.loads((tmp_path / "ft" / "training.json").read_text())
    assert saved["history"] == record["history"]
    texts = [q.text for q in QUERIES]
    tuned, base = encode_texts(texts, str(tmp_path / "ft")), encode_texts(texts)
    assert not np.allclose(tuned, base)
    reloaded = open_text_encoder(str(tmp_path / "ft")).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(reloaded, tuned, atol=1e-6)  # save -> load gives the same vectors


def test_forward_finetuning_trains_only_before_the_tuning_years(tiny_encoder, monkeypatch):
    trained = []
    real = protocol.finetune_encoder

    def spy(encoder, pairs, out, **kwargs):
        year_of = {q.text: q.year for q in ToyExams().queries(ToyExams.years)}
        trained.append({year_of[question] for question, _ in pairs})
        return real(encoder, pairs, out, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(protocol, "finetune_encoder", spy)
    result = forward_evaluate(None, ["R03", "R04"], model="dense", tune_years=1, encoder=tiny_encoder,
                              device="cpu", finetune_epochs=1, data=ToyExams())
    assert trained == [{"R01"}, {"R01", "R02"}]
    assert [(r["trained_on"], r["tuned_on"]) for r in result["years"]] == [(["R01"], ["R02"]), (["R01", "R02"], ["R03"])]


def test_cli_train_bi_encoder_and_its_errors(tiny_encoder, tmp_path):
    out = tmp_path / "enc"
    args = ["train", "bi-encoder", "--encoder", tiny_encoder, "--train-years", "R02", "--out", out, "--epochs", 1,
            "--batch-size", 4, "--device", "cpu"]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train_years"] == ["R02"] and (out / "modules.json").is_file()
    one_line_error(run(*args), "exists", "--overwrite")
    one_line_error(run("eval", "coliee", "--finetune-epochs", 1), "--protocol forward")
