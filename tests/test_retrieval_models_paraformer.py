"""Paraformer with a tiny random sentence encoder, training / save / load for both models, and the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from retrieval_models_corpus import ARTICLES, QUERIES

from cli import ragcli
from indexes.errors import UserError
from indexes.files import atomic_dir
from retrieval.models import load_retriever, train
from retrieval.paraformer import Paraformer, SentenceFeaturizer, article_lines
from retrieval.training import TrainConfig

FAST = TrainConfig(epochs=3, lr=5e-3, batch_size=4, negatives=4, pool_size=4, patience=3, recall_k=2, device="cpu")


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory):
    """A Paraformer and an Attentive CNN trained for a few epochs on the toy corpus."""
    root = tmp_path_factory.mktemp("models")
    train_q, valid_q = QUERIES[:8], QUERIES[8:]
    para = train("paraformer", ARTICLES, train_q, valid_q, root / "para", FAST, encoder=tiny_encoder, hidden=16)
    cnn = train("attentive-cnn", ARTICLES, train_q, valid_q, root / "cnn", FAST, mining_encoder=tiny_encoder,
                embed_dim=16, filters=16, attention_dim=8)
    return root, para, cnn


def test_paraformer_forward_backward_and_attention(tiny_encoder):
    featurizer = SentenceFeaturizer(tiny_encoder)
    articles, queries = featurizer.articles(ARTICLES), featurizer.queries([q.text for q in QUERIES[:2]])
    sentences, mask = articles.tensors
    assert sentences.shape == (10, 3, 32) and mask.sum(1).tolist() == [len(article_lines(a)) for a in ARTICLES]
    torch.manual_seed(0)
    model = Paraformer(dim=32, hidden=8)
    candidates = torch.tensor([[0, 3, 4], [1, 2, 3]])
    logits = model(queries.tensors, articles.take(candidates))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    weights = model.attention(queries.tensors[0], *articles.take(candidates))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    assert (weights[0, 1, 2] == 0) and (weights[0, 1, :2].sum() == 1)  # article 4 has 2 lines; slot 3 is padding


def test_training_lowers_loss_and_saves_a_model(trained):
    root, para, cnn = trained
    for summary, name in ((para, "para"), (cnn, "cnn")):
        losses = [h["loss"] for h in summary["history"]]
        assert losses[-1] < losses[0]
        assert summary["negative_miners"] == ["bm25", "dense"] and summary["train_queries"] == 8
        assert {"config.json", "model.safetensors", "training.json"} <= {p.name for p in (root / name).iterdir()}
    assert json.loads((root / "cnn" / "config.json").read_text())["architecture"] == "attentive-cnn"
    assert (root / "cnn" / "vocab.json").is_file() and not (root / "para" / "vocab.json").exists()


@pytest.mark.parametrize("name", ["para", "cnn"])
def test_save_load_round_trip_gives_identical_scores(trained, name):
    root = trained[0]
    texts = [q.text for q in QUERIES]
    first = load_retriever(root / name, ARTICLES, device="cpu")
    again = load_retriever(root / name, ARTICLES, device="cpu")
    scores = first.scores(texts)
    assert scores.shape == (len(QUERIES), len(ARTICLES)) and first.article_ids == [a.id for a in ARTICLES]
    np.testing.assert_array_equal(scores, again.scores(texts))
    assert first.name == {"para": "paraformer", "cnn": "attentive-cnn"}[name]


def test_explanation_is_a_sentence_of_each_article(trained):
    retriever = load_retriever(trained[0] / "para", ARTICLES, device="cpu")
    explained = retriever.explain(QUERIES[4].text, ["5", "9-2", "4"])
    by_id = {a.id: a for a in ARTICLES}
    assert len(explained) == 3
    for (weight, sentence), article_id in zip(explained, ["5", "9-2", "4"]):
        assert 0 < weight <= 1 and sentence in article_lines(by_id[article_id])
    assert explained[2][0] >= 0.5  # article 4 has two lines (caption, sentence); the weights sum to 1
    with pytest.raises(UserError, match="unknown article"):
        retriever.explain("hats", ["404"])


def test_load_retriever_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="not a trained model"):
        load_retriever(tmp_path, ARTICLES)
    (tmp_path / "config.json").write_text('{"architecture": "lstm"}')
    with pytest.raises(UserError, match="unknown architecture"):
        load_retriever(tmp_path, ARTICLES)


@pytest.mark.slow
def test_finetuned_encoder_is_saved_and_used(tiny_encoder, tmp_path):
    summary = train("paraformer", ARTICLES, QUERIES[:8], QUERIES[8:], tmp_path / "ft",
                    TrainConfig(epochs=1, batch_size=4, negatives=2, pool_size=2, device="cpu"),
                    encoder=tiny_encoder, finetune_epochs=2, hidden=8)
    assert summary["finetune_epochs"] == 2 and (tmp_path / "ft" / "encoder" / "modules.json").is_file()
    retriever = load_retriever(tmp_path / "ft", ARTICLES, device="cpu")
    assert retriever.featurizer.encoder_name == str((tmp_path / "ft" / "encoder").resolve())
    frozen = SentenceFeaturizer(tiny_encoder).embed([ARTICLES[0].text])
    assert not torch.allclose(retriever.featurizer.embed([ARTICLES[0].text]), frozen)


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--train-years", "X99"], "bad year"),
    (["--valid-years", "H18"], "no query file for H18"),
    (["--device", "tpu"], "Invalid value"),
])
def test_train_cli_rejects_bad_input_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "model"
    result = CliRunner().invoke(ragcli, ["train", "paraformer", "--out", str(out), "--train-years", "R02", *args])
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


def test_train_cli_refuses_to_overwrite_and_unknown_data_dir(tmp_path):
    with atomic_dir(tmp_path / "model", "model"):
        pass  # a model directory ragcli wrote
    result = CliRunner().invoke(ragcli, ["train", "attentive-cnn", "--out", str(tmp_path / "model")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = CliRunner().invoke(ragcli, ["train", "attentive-cnn", "--out", str(tmp_path / "new"),
                                         "--data-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no COLIEE data folder" in result.output and not (tmp_path / "new").exists()


def test_train_cli_never_replaces_a_folder_ragcli_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(ragcli, ["train", "attentive-cnn", "--out", str(out), "--train-years", "R02",
                                             "--valid-years", "R03", "--epochs", "1", *extra])
        assert result.exit_code == 2 and "not written by ragcli" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (out / "notes.txt").read_text() == "my notes"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_train_cli_json_on_the_bundled_sample(tmp_path):
    result = CliRunner().invoke(ragcli, ["train", "attentive-cnn", "--out", str(tmp_path / "m"), "--train-years", "R02",
                                         "--valid-years", "R03", "--epochs", "1", "--negatives", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["architecture"] == "attentive-cnn" and len(summary["history"]) == 1
    assert summary["best_valid_R@5"] == summary["history"][0]["valid_R@5"]  # recall at 5, ir_measures' name
    assert (tmp_path / "m" / "model.safetensors").is_file()
    text = CliRunner().invoke(ragcli, ["train", "attentive-cnn", "--out", str(tmp_path / "t"), "--train-years", "R02",
                                       "--valid-years", "R03", "--epochs", "1", "--negatives", "2"])
    assert text.exit_code == 0 and f"valid R@5 {summary['best_valid_R@5']:.4f}" in text.output, text.output


# ---- a coliee index holding a trained model -------------------------------------------------------
def test_coliee_index_with_paraformer_fuses_three_scores_and_explains(trained, tiny_encoder, tmp_path):
    from retrieval.bm25 import BM25Retriever
    from retrieval.coliee import load_coliee
    from retrieval.dense import DenseRetriever
    from retrieval.fusion import fuse

    index = tmp_path / "coliee-para"
    build = ["index", "build", "--corpus", "coliee", "--model", str(trained[0] / "para"), "--encoder", tiny_encoder,
             "--name", str(index), "--device", "cpu", "--json"]
    result = CliRunner().invoke(ragcli, build)
    assert result.exit_code == 0, result.output
    from retrieval.fusion import HybridConfig

    hybrid = HybridConfig.load(index / json.loads(result.stdout)["encoder"]["hybrid"])
    weights = dict(zip(hybrid.retrievers, hybrid.weights))
    assert weights == pytest.approx({"bm25": 1 / 3, "dense": 1 / 3, "paraformer": 1 / 3})  # the hybrid's default
    question = "Can a minor cancel a contract made without a guardian's consent?"
    query = ["index", "query", str(index), question, "-k", "3", "--device", "cpu"]
    hits = json.loads(CliRunner().invoke(ragcli, [*query, "--json"]).stdout)

    articles = load_coliee().articles
    texts, ids = [a.search_text for a in articles], [a.id for a in articles]
    para = load_retriever(trained[0] / "para", articles, device="cpu")
    fused = fuse([BM25Retriever.build(texts, ids).scores([question]),
                  DenseRetriever.build(texts, ids, tiny_encoder, "cpu").scores([question]), para.scores([question])],
                 [weights["bm25"], weights["dense"], weights["paraformer"]])[0]
    expected = np.argsort(-fused, kind="stable")[:3]
    assert [h["id"] for h in hits] == [ids[j] for j in expected]
    np.testing.assert_allclose([h["score"] for h in hits], fused[expected], atol=1e-4)  # FAISS vs numpy cosine
    by_id = {a.id: a for a in articles}
    for hit in hits:
        sentence, weight = hit["payload"]["explanation"].rsplit(" (attention ", 1)
        assert sentence in article_lines(by_id[hit["id"]]) and 0 < float(weight.rstrip(")")) <= 1
    assert "why: " in CliRunner().invoke(ragcli, query).stdout


def test_coliee_index_with_attentive_cnn_has_no_explanation(trained, tiny_encoder, tmp_path):
    index = tmp_path / "coliee-cnn"
    result = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--model", str(trained[0] / "cnn"),
                                         "--encoder", tiny_encoder, "--name", str(index), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    hits = json.loads(CliRunner().invoke(ragcli, ["index", "query", str(index), "a minor's contract", "--json"]).stdout)
    assert len(hits) == 10 and all("explanation" not in h["payload"] for h in hits)
