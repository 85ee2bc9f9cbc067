"""What statute retrieval does with broken or hostile input: COLIEE files, model directories, NaN scores,
diverging training, out-of-range options, special run-file targets, unknown encoders. Each is one
UserError (CLI: exit 2, one stderr line) and nothing is written or changed."""

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from retrieval_models_corpus import ARTICLES, QUERIES
from safetensors.torch import load_file, save_file

from indexes.errors import UserError
from indexes.text_encoder import load_text_encoder
from retrieval.attentive_cnn import PAD, UNK, AttentiveCNN, Vocab
from indexes.samples import sample_dir
from retrieval.coliee import SAMPLE, load_coliee, parse_years, read_civil_code, read_query_file
from retrieval.fusion import HybridRetriever
from retrieval.models import load_retriever
from retrieval.paraformer import Paraformer
from retrieval.training import Features, Split, TrainConfig, fit

PAIR = '<pair id="R01-1-A"><t1>Article 5\nA minor.</t1><t2>Can a minor contract?</t2></pair>'


@pytest.fixture
def coliee_dir(tmp_path: Path) -> Path:
    """A copy of the bundled sample (civil code, R02, R03)."""
    target = tmp_path / "coliee"
    shutil.copytree(sample_dir(SAMPLE), target)
    return target


@pytest.fixture
def no_hang():
    """Fail instead of hanging forever (a FIFO opened for reading blocks until a writer comes)."""
    def expire(*_):
        raise TimeoutError("hung")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---- COLIEE files --------------------------------------------------------------------------------
@pytest.mark.parametrize("xml, message", [
    ("<foo><bar/></foo>", "root element is <foo>, expected <dataset>"),
    ("<dataset></dataset>", "no <pair> questions"),
    ('<dataset><pair id="R01-1"><t1>Article 5</t1></pair></dataset>', "has no <t2> question text"),
    ('<dataset><pair id="R01-1"><t2>   </t2></pair></dataset>', "has no <t2> question text"),
    ("<dataset><pair><t2>q</t2></pair></dataset>", "a <pair> has no id"),
    (f"<dataset>{PAIR}{PAIR}</dataset>", "question R01-1-A appears twice"),
])
def test_query_file_structure_errors_name_the_file(tmp_path, xml, message):
    path = tmp_path / "riteval_R01_en.xml"
    path.write_text(xml, encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        read_query_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("<dataset>caf\u00e9</dataset>".encode("latin-1"), "not UTF-8"),
])
def test_binary_and_non_utf8_files(tmp_path, content, message):
    for name in ("riteval_R01_en.xml", "civil_code_en.txt"):
        (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_query_file(tmp_path / "riteval_R01_en.xml")
    with pytest.raises(UserError, match=message):
        read_civil_code(tmp_path / "civil_code_en.txt")


@pytest.mark.parametrize("special", ["fifo", "folder"])
@pytest.mark.parametrize("name", ["riteval_R02_en.xml", "civil_code_en-sample.txt"])
def test_fifo_or_folder_instead_of_a_file_never_hangs(coliee_dir, no_hang, special, name):
    (coliee_dir / name).unlink()
    os.mkfifo(coliee_dir / name) if special == "fifo" else (coliee_dir / name).mkdir()
    result = run("eval", "coliee", "--data-dir", coliee_dir, "--model", "bm25", "--years", "R02")
    one_line_error(result, name, "not a regular file")


def test_a_year_without_questions_is_an_error_for_test_and_validation(coliee_dir):
    (coliee_dir / "riteval_R01_en.xml").write_text('<?xml version="1.0"?>\n<dataset>\n</dataset>\n')
    for args in (["--years", "R01"], ["--years", "R03", "--valid-years", "R01"]):
        one_line_error(run("eval", "coliee", "--data-dir", coliee_dir, "--model", "bm25", *args),
                       "riteval_R01_en.xml", "no <pair> questions")
    (coliee_dir / "riteval_R01_en.xml").write_text("<foo><bar/></foo>")
    one_line_error(run("eval", "coliee", "--data-dir", coliee_dir, "--model", "bm25", "--years", "R01"),
                   "root element is <foo>")


def test_data_folder_missing_pieces(coliee_dir, tmp_path):
    one_line_error(run("eval", "coliee", "--data-dir", coliee_dir, "--model", "bm25", "--years", "H30"),
                   "no query file for H30", "available years: R02, R03")
    (coliee_dir / "civil_code_en-sample.txt").unlink()
    one_line_error(run("eval", "coliee", "--data-dir", coliee_dir, "--model", "bm25"),
                   "expected one civil_code_en*.txt, found none")
    one_line_error(run("eval", "coliee", "--data-dir", coliee_dir / "riteval_R02_en.xml", "--model", "bm25"),
                   "no COLIEE data folder", "it is a file")
    code = tmp_path / "civil_code_en-x.txt"
    code.write_text("Part I General\n(no articles here)\n")
    with pytest.raises(UserError, match=f"{code}: no articles found"):
        read_civil_code(code)


def test_two_files_of_one_year_and_bad_year_names(coliee_dir):
    (coliee_dir / "test").mkdir()
    shutil.copy(coliee_dir / "riteval_R02_en.xml", coliee_dir / "test" / "riteval_R2_en.xml")
    with pytest.raises(UserError, match="two query files for R02"):
        load_coliee(coliee_dir)
    (coliee_dir / "test" / "riteval_R2_en.xml").rename(coliee_dir / "test" / "riteval_R00_en.xml")
    with pytest.raises(UserError, match="riteval_R00_en.xml: cannot tell the year"):
        load_coliee(coliee_dir)


@pytest.mark.parametrize("spec", ["", " ", ",", "R01,,R02", "R01..R02..R03", "..R02", "R01..", "R00", "H0",
                                  "H31", "R100", "R03..R01", "r01", "R01 R02"])
def test_malformed_years(spec):
    with pytest.raises(UserError, match="year"):
        parse_years(spec)


def test_empty_valid_years_on_the_cli(tmp_path):
    one_line_error(run("eval", "coliee", "--model", "bm25", "--valid-years", ""), "no years given")
    one_line_error(run("train", "attentive-cnn", "--out", tmp_path / "m", "--valid-years", " "), "no years given")
    assert not (tmp_path / "m").exists()


@example(b"<dataset/>")
@example(b"<foo><pair id='1'><t2>q</t2></pair></foo>")
@example(b"\x00")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 st.sampled_from(["<dataset>", "<pair id='x'>", "<t2>", "</t2>", "</pair>", "</dataset>", "&amp;",
                                  "Article 5", "\x00", "\ufeff", "<!DOCTYPE x>"]).map(str.encode)
                 .map(lambda s: b"<dataset><pair id='1'><t2>q</t2></pair>" + s)))
def test_fuzz_query_file_gives_questions_or_a_user_error(tmp_path, content):
    path = tmp_path / "riteval_R01_en.xml"
    path.write_bytes(content)
    try:
        queries = read_query_file(path)
    except UserError as err:
        assert "\n" not in str(err)
    else:
        assert content.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<dataset", b"<?xml", b"<!"))
        assert queries and all(q.id and q.text and q.year == "R01" for q in queries)


# ---- model directories ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 0}, "dim must be an integer"), ({"hidden": -1}, "hidden must be"), ({"dim": True}, "dim must be"),
    ({"hidden": 16.0}, "hidden must be"), ({"hidden": "16"}, "hidden must be"), ({"dim": 10**9}, "dim must be"),
    ({"dropout": 1.0}, "dropout must be"), ({"dropout": float("nan")}, "dropout must be"),
    ({"dropout": "0.1"}, "dropout must be"), ({"encoder": ""}, "encoder must be"),
    ({"finetuned_encoder": "yes"}, "finetuned_encoder must be"),
])
def test_paraformer_validates_its_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        Paraformer(**{"dim": 8, "hidden": 4, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 1}, "vocab_size must be"), ({"vocab_size": None}, "vocab_size must be"),
    ({"embed_dim": -3}, "embed_dim must be"), ({"filters": 0}, "filters must be"), ({"kernel": 2}, "kernel must be odd"),
    ({"attention_dim": []}, "attention_dim must be"), ({"max_words": 0}, "max_words must be"),
    ({"dropout": -0.1}, "dropout must be"), ({"vocab_size": 4_000_000, "embed_dim": 4096}, "too many"),
])
def test_attentive_cnn_validates_its_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        AttentiveCNN(**{"vocab_size": 10, **kwargs})


@pytest.mark.parametrize("tokens", [{"<pad>": 0}, "abc", [PAD, UNK, 3], [PAD, UNK, "a", "a"], ["a", "b"]])
def test_vocab_validates_its_words(tokens):
    with pytest.raises(UserError, match="vocabulary"):
        Vocab(tokens)


def cnn_dir(root: Path) -> Path:
    """A small untrained Attentive CNN saved as `train` saves one (config, weights, vocabulary)."""
    vocab = Vocab.build(a.text for a in ARTICLES)
    model = AttentiveCNN(len(vocab), embed_dim=8, filters=8, attention_dim=4)
    out = root / "cnn"
    model.save_pretrained(out, config={**model._hub_mixin_config, "architecture": "attentive-cnn"})
    vocab.save(out / "vocab.json")
    return out


def para_dir(root: Path) -> Path:
    """A small Paraformer directory whose config says its encoder was fine-tuned."""
    model = Paraformer(dim=8, hidden=4, finetuned_encoder=True)
    out = root / "para"
    model.save_pretrained(out, config={**model._hub_mixin_config, "architecture": "paraformer"})
    (out / "encoder").mkdir()
    return out


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def _edit_weights(path: Path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


BREAKAGES = {
    "missing tensor": (lambda d: _edit_weights(d, lambda t: t.pop("conv.weight")), "not a valid AttentiveCNN"),
    "unexpected tensor": (lambda d: _edit_weights(d, lambda t: t.update(extra=torch.zeros(2))), "not a valid AttentiveCNN"),
    "wrong shape": (lambda d: _edit_weights(d, lambda t: t.update({"conv.bias": torch.zeros(3)})), "not a valid AttentiveCNN"),
    "nan weights": (lambda d: _edit_weights(d, lambda t: t["conv.weight"].fill_(float("nan"))), "NaN"),
    "garbled safetensors": (lambda d: (d / "model.safetensors").write_bytes(b"\x07garbage" * 10), "not a valid"),
    "no safetensors": (lambda d: (d / "model.safetensors").unlink(), "model weights"),
    "pickle instead": (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "model weights"),
    "garbled config": (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    "config a list": (lambda d: (d / "config.json").write_text("[1, 2]"), "unknown architecture"),
    "architecture unknown": (lambda d: _edit_config(d, architecture=["lstm"]), "unknown architecture"),
    "string size": (lambda d: _edit_config(d, filters="8"), "filters must be"),
    "negative size": (lambda d: _edit_config(d, embed_dim=-8), "embed_dim must be"),
    "vocab size absent": (lambda d: _edit_config(d, vocab_size=None), "vocab_size must be"),
    "garbled vocab": (lambda d: (d / "vocab.json").write_bytes(b"\xff\xfe"), "not valid JSON"),
    "vocab a dict": (lambda d: (d / "vocab.json").write_text('{"a": 1}'), "a list of words"),
    "vocab too short": (lambda d: (d / "vocab.json").write_text(json.dumps([PAD, UNK, "x"])), "word embeddings"),
    "no vocab": (lambda d: (d / "vocab.json").unlink(), "does not exist"),
    "vocab a fifo": (lambda d: ((d / "vocab.json").unlink(), os.mkfifo(d / "vocab.json")), "not a regular file"),
}


def test_an_intact_model_directory_loads(tmp_path):
    retriever = load_retriever(cnn_dir(tmp_path), ARTICLES, device="cpu")
    assert retriever.scores([QUERIES[0].text]).shape == (1, len(ARTICLES))


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_model_directory_is_one_user_error(tmp_path, no_hang, breakage):
    model_dir = cnn_dir(tmp_path)
    damage, message = BREAKAGES[breakage]
    damage(model_dir)
    with pytest.raises(UserError, match=message):
        load_retriever(model_dir, ARTICLES, device="cpu")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "encoder").rmdir(), "fine-tuned encoder folder encoder/ is missing"),
    (lambda d: ((d / "encoder").rmdir(), (d / "encoder").symlink_to(d.parent)), "points outside"),
    (lambda d: _edit_config(d, hidden=0), "hidden must be"),
    (lambda d: _edit_config(d, dropout=2), "dropout must be"),
])
def test_broken_paraformer_directory(tmp_path, damage, message):
    model_dir = para_dir(tmp_path)
    damage(model_dir)
    with pytest.raises(UserError, match=message):
        load_retriever(model_dir, ARTICLES, device="cpu")


@pytest.mark.parametrize("breakage", ["missing tensor", "garbled config", "negative size", "vocab a dict"])
def test_eval_coliee_with_a_broken_model_exits_2(tmp_path, breakage):
    model_dir = cnn_dir(tmp_path)
    BREAKAGES[breakage][0](model_dir)
    one_line_error(run("eval", "coliee", "--model", model_dir, "--device", "cpu"), str(model_dir))


# ---- NaN scores and diverging training ------------------------------------------------------------
class NaNRetriever:
    name, article_ids = "broken", ["1", "2", "3"]

    def scores(self, queries):
        return np.full((len(queries), 3), np.nan, dtype=np.float32)


def test_nan_scores_are_refused_by_evaluation_and_fusion(monkeypatch):
    import retrieval.evaluate as evaluate

    monkeypatch.setattr(evaluate, "make_retriever", lambda *a, **k: NaNRetriever())
    with pytest.raises(UserError, match="broken scores hold NaN"):
        evaluate.evaluate_coliee(None, ["R03"])
    with pytest.raises(UserError, match="broken scores hold NaN"):
        evaluate.evaluate_coliee(None, ["R03"], valid_years=["R02"])
    with pytest.raises(UserError, match="broken scores hold NaN"):
        HybridRetriever([NaNRetriever()]).scores(["q"])


class NaNModel(torch.nn.Module):
    """Scores every candidate NaN (a model gone bad)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, queries, articles):
        return self.weight * torch.full(articles[0].shape[:2], float("nan"))


def test_fit_stops_on_a_nan_loss():
    articles = Features((torch.zeros(6, 2),))
    split = Split(Features((torch.zeros(4, 2),)), [[0], [1], [2], [3]])
    config = TrainConfig(epochs=2, batch_size=2, negatives=2, device="cpu")
    with pytest.raises(UserError, match=r"training diverged in epoch 1 \(the loss not finite\)"):
        fit(NaNModel(), articles, split, split, np.zeros((4, 0), dtype=np.int64), config)


def test_diverging_training_saves_nothing(tmp_path):
    out = tmp_path / "m"
    result = run("train", "attentive-cnn", "--out", out, "--train-years", "R02", "--valid-years", "R03",
                 "--lr", "1e30", "--epochs", "3", "--negatives", "2", "--device", "cpu")
    one_line_error(result, "training diverged")
    assert list(tmp_path.iterdir()) == [] or all(p.name.endswith(".lock") for p in tmp_path.iterdir())


@pytest.mark.parametrize("field, value", [("lr", float("nan")), ("lr", float("inf")), ("lr", 0), ("epochs", 0),
                                          ("epochs", 10**20), ("batch_size", 2.5), ("seed", -1), ("negatives", 5000),
                                          ("hard_fraction", 1.5), ("weight_decay", -1), ("pool_size", -1)])
def test_train_config_ranges(field, value):
    with pytest.raises(UserError, match=field):
        TrainConfig(**{field: value})


# ---- CLI options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["paraformer", "--finetune-epochs", "99999999999999999999"], "'--finetune-epochs'"),
    (["attentive-cnn", "--epochs", "10001"], "'--epochs'"), (["attentive-cnn", "--negatives", "1001"], "'--negatives'"),
    (["attentive-cnn", "--batch-size", "65537"], "'--batch-size'"), (["attentive-cnn", "--patience", "0"], "'--patience'"),
    (["attentive-cnn", "--seed", str(2**32)], "'--seed'"), (["attentive-cnn", "--lr", "nan"], "lr must be a finite"),
])
def test_numeric_options_have_ranges(tmp_path, args, message):
    result = run("train", *args, "--out", tmp_path / "m", "--train-years", "R02", "--valid-years", "R03")
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "m").exists()


def test_run_file_never_replaces_a_fifo_and_writes_through_symlinks(tmp_path, no_hang):
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    one_line_error(run("eval", "coliee", "--model", "bm25", "--run", fifo), "not a regular file")
    assert fifo.is_fifo()
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    result = run("eval", "coliee", "--model", "bm25", "--run", link, "--run-id", "mine")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and target.read_text().splitlines()[0].endswith(" mine")
    one_line_error(run("eval", "coliee", "--model", "bm25", "--run", link, "--run-id", "two words"), "--run-id")


# ---- sentence encoders ----------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("tried to reach the network")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", ["no-such-encoder-xyz", "nobody/no-such-encoder", "a b c", "../x", " "])
def test_unknown_encoder_is_one_quick_error_offline(no_network, tmp_path, name):
    one_line_error(run("eval", "coliee", "--model", "dense", "--encoder", name, "--device", "cpu"),
                   "sentence encoder")
    one_line_error(run("train", "paraformer", "--out", tmp_path / "m", "--encoder", name, "--device", "cpu",
                       "--train-years", "R02", "--valid-years", "R03"), "sentence encoder")
    assert not (tmp_path / "m").exists()


def test_broken_encoder_folder_is_a_user_error(no_network, tmp_path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot load sentence encoder"):
        load_text_encoder(str(tmp_path / "enc"))
