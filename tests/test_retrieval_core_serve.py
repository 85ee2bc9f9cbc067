"""`ragcli index build --corpus coliee` and `ragcli index query` on the bundled sample, with the real MiniLM."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import ragcli


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("coliee") / "sample-index"
    result = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--name", str(path), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return path, json.loads(result.stdout)


def test_build_writes_vectors_payload_and_bm25(sample_index):
    path, info = sample_index
    assert info["rows"] == 24 and info["dim"] == 384 and info["metric"] == "cosine"
    assert info["encoder"]["family"] == "retrieval" and info["encoder"]["dense"] == "all-MiniLM-L6-v2"
    assert {"title", "caption", "headings", "text"} <= set(info["payload_columns"])
    assert (path / "bm25" / "retriever.json").is_file()


def test_query_ranks_the_minors_article_first(sample_index):
    path, _ = sample_index
    args = ["index", "query", str(path), "Can a minor cancel a contract made without a guardian's consent?", "-k", "3", "--device", "cpu"]
    hits = json.loads(CliRunner().invoke(ragcli, [*args, "--json"]).stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "5" and hits[0]["payload"]["title"] == "Article 5 (Contracts by Minors)"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    text = CliRunner().invoke(ragcli, args).stdout
    assert "Article 5 (Contracts by Minors)" in text.splitlines()[0]


def test_query_of_stop_words_only_still_answers(sample_index):
    path, _ = sample_index  # BM25 scores nothing; the dense side still ranks
    result = CliRunner().invoke(ragcli, ["index", "query", str(path), "the of and", "-k", "2", "--json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 2


def test_build_errors_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--data-dir", str(tmp_path / "nope"), "--name", str(out)])
    assert result.exit_code == 2 and "no COLIEE data folder" in result.output and not out.exists()
    (tmp_path / "civil_code_en-x.txt").write_text("Part I Nothing here\n", encoding="utf-8")
    result = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--data-dir", str(tmp_path), "--name", str(out)])
    assert result.exit_code == 2 and "no articles found" in result.output and not out.exists()
    result = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--model", str(tmp_path), "--name", str(out)])
    assert result.exit_code == 2 and "not a trained model directory" in result.output and not out.exists()


def test_query_without_bm25_beside_the_vectors_is_a_user_error(sample_index, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sample_index[0], broken)
    shutil.rmtree(broken / "bm25")
    result = CliRunner().invoke(ragcli, ["index", "query", str(broken), "minor contract"])
    assert result.exit_code == 2 and "no BM25 index" in result.output


def test_dense_retriever_scores_every_article_by_cosine():
    from retrieval.coliee import load_coliee
    from retrieval.dense import DenseRetriever

    articles = load_coliee().articles
    dense = DenseRetriever.build([a.search_text for a in articles], [a.id for a in articles], device="cpu")
    assert np.allclose(np.linalg.norm(dense.vectors, axis=1), 1, atol=1e-5)
    scores = dense.scores(["A tenant sublets the flat without the landlord's consent", "threats and fraud"])
    assert scores.shape == (2, len(articles)) and np.all(scores <= 1 + 1e-5)
    assert dense.article_ids[scores[0].argmax()] == "612" and dense.article_ids[scores[1].argmax()] == "96"


def test_unknown_encoder_is_a_user_error(tmp_path):
    result = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--encoder", str(tmp_path / "no-model"),
                                         "--name", str(tmp_path / "idx")])
    assert result.exit_code == 2 and "cannot load sentence encoder" in result.output and not (tmp_path / "idx").exists()


def test_a_local_encoder_travels_inside_the_index(tiny_encoder, tmp_path, monkeypatch):
    """A fine-tuned (local) encoder is copied into the index: queries work from anywhere, and after the
    original folder is gone, with the same hits as through the original."""
    encoder = tmp_path / "my-encoder"
    shutil.copytree(tiny_encoder, encoder)
    monkeypatch.chdir(tmp_path)
    built = CliRunner().invoke(ragcli, ["index", "build", "--corpus", "coliee", "--encoder", "./my-encoder", "--name",
                                        str(tmp_path / "idx"), "--device", "cpu", "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["encoder"]["dense_dir"] == "encoder"
    query = ["index", "query", str(tmp_path / "idx"), "Can a minor cancel a contract?", "-k", "3", "--device", "cpu",
             "--json"]
    before = json.loads(CliRunner().invoke(ragcli, query).stdout)
    shutil.rmtree(encoder)
    monkeypatch.chdir(tmp_path.parent)
    after = CliRunner().invoke(ragcli, query)
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout) == before
