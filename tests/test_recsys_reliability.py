"""Issue 11 for recsys: NaN never ranks first, diverged training stops and keeps its last good checkpoint,
checkpoints load strictly, numeric options have ranges, resume takes the checkpoint's architecture,
malformed interaction files and failed fetches are one-line errors that leave nothing behind, and
`train sasrec` replaces only what ragcli wrote, with --overwrite."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

import recsys.train as train_module
from helpers import one_line_error, run
from indexes import UserError
from recsys import Recommender
from recsys import fetch as fetch_module
from recsys.data import LeaveOneOut, build_sequences, read_interactions
from recsys.evaluate import evaluate, evaluate_model
from recsys.fetch import Archive, fetch
from recsys.model import SASRec
from recsys.synthetic import item_table, markov_interactions, write_recbole
from recsys.train import TrainConfig, train_from_path, train_sasrec
from test_recsys_fetch import PAYLOAD, SHA

N_ITEMS = 20
TINY = dict(epochs=1, batch_size=32, maxlen=8, hidden=8, blocks=1, heads=1, dropout=0.0, device="cpu")
TINY_CLI = ["--epochs", "1", "--batch-size", "32", "--maxlen", "8", "--hidden", "8", "--blocks", "1", "--device", "cpu"]


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_recbole(folder, "sample", markov_interactions(60, N_ITEMS, seed=3), item_table(N_ITEMS))


@pytest.fixture(scope="module")
def seqs(data_dir):
    return build_sequences(read_interactions(data_dir))


@pytest.fixture(scope="module")
def model_dir(seqs, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "model"
    train_sasrec(seqs, out, TrainConfig(**TINY))
    return out


@pytest.fixture()
def model_copy(model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy, symlinks=False)
    return copy


# ---- 1. NaN scores never rank first ----------------------------------------------------------------
def test_evaluate_refuses_nan_scores(model_dir, seqs):
    rec = Recommender.from_pretrained(model_dir, device="cpu")
    with torch.no_grad():
        rec.model.item_emb.weight.fill_(float("nan"))
    case = LeaveOneOut(seqs, rec.model.maxlen).case("test")
    for protocol in ("full", "sampled100"):
        with pytest.raises(UserError, match="NaN or infinite"):
            evaluate(rec.model, case, protocol, ks=(1, 10))
    with pytest.raises(UserError, match="NaN or infinite"):
        rec.recommend(["3", "4"], k=5)


def test_a_nan_weights_checkpoint_is_refused(model_copy, data_dir):
    weights = load_file(model_copy / "model.safetensors")
    weights["item_emb.weight"] = torch.full_like(weights["item_emb.weight"], float("nan"))
    save_file(weights, model_copy / "model.safetensors")
    with pytest.raises(UserError, match="NaN or infinite"):
        Recommender.from_pretrained(model_copy, device="cpu")
    one_line_error(run("eval", "sasrec", "--data", data_dir, "--model", model_copy, "--device", "cpu"), "NaN")


# ---- 2. divergence stops training ------------------------------------------------------------------
def test_a_huge_learning_rate_stops_with_a_clear_error(data_dir, tmp_path):
    out = tmp_path / "m"
    result = run("train", "sasrec", "--data", data_dir, "--out", out, "--lr", "1e6", *TINY_CLI, "--epochs", "3")
    one_line_error(result, "training diverged", "--lr")
    assert "nDCG" not in result.stdout


def test_divergence_keeps_the_last_good_checkpoint(seqs, tmp_path, monkeypatch):
    real_epoch = train_module._train_epoch

    def diverging(*args, **kwargs):
        loss, seconds, cpu = real_epoch(*args, **kwargs)
        return (float("nan") if args[6] == 3 else loss), seconds, cpu  # args[6]: the epoch

    monkeypatch.setattr(train_module, "_train_epoch", diverging)
    out = tmp_path / "m"
    with pytest.raises(UserError, match="diverged at epoch 3: training losses.*keeps the last good checkpoint"):
        train_sasrec(seqs, out, TrainConfig(**dict(TINY, epochs=5, patience=10)))
    saved = json.loads((out / "training.json").read_text())["state"]
    assert saved["epoch"] == saved["best_epoch"] <= 2
    assert all(v == v for v in load_file(out / "model.safetensors")["item_emb.weight"].flatten().tolist())


def test_non_finite_validation_scores_stop_training(seqs, tmp_path, monkeypatch):
    real_epoch = train_module._train_epoch

    def poisoned(net, model, *args, **kwargs):
        result = real_epoch(net, model, *args, **kwargs)
        with torch.no_grad():
            model.item_emb.weight[1:].fill_(float("inf"))  # a finite loss, but scores are not
        return result

    monkeypatch.setattr(train_module, "_train_epoch", poisoned)
    with pytest.raises(UserError, match="diverged at epoch 1: validation scores.*nothing was written"):
        train_sasrec(seqs, tmp_path / "m", TrainConfig(**TINY))
    assert not (tmp_path / "m").exists()


# ---- 3. strict, validated checkpoints --------------------------------------------------------------
@pytest.mark.parametrize("blocks", [0, -1, "x", 2.5, True, None, "<absent>"])
def test_config_blocks_is_checked(model_copy, blocks):
    config = json.loads((model_copy / "config.json").read_text())
    if blocks == "<absent>":
        del config["blocks"]
    else:
        config["blocks"] = blocks
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="blocks"):
        Recommender.from_pretrained(model_copy, device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"n_items": 0}, "n_items"), ({"maxlen": "two"}, "maxlen"), ({"hidden": 2.5}, "hidden"),
    ({"heads": 3}, "divisible"), ({"heads": True}, "heads"), ({"dropout": 1.0}, "dropout"),
    ({"dropout": float("nan")}, "dropout"), ({"pre_ln": 1}, "pre_ln"), ({"maxlen": 1 << 40}, "maxlen"),
    ({"n_items": 1 << 29, "hidden": 8}, "embedding parameters"),
])
def test_the_constructor_validates_types_and_ranges(kwargs, message):
    with pytest.raises(UserError, match=message):
        SASRec(**{"n_items": N_ITEMS, "maxlen": 8, "hidden": 8, **kwargs})


def _drop_tensor(model):
    weights = load_file(model / "model.safetensors")
    del weights["pos_emb.weight"]
    save_file(weights, model / "model.safetensors")


CORRUPTIONS = {
    "tensor missing": _drop_tensor,
    "garbled config.json": lambda m: (m / "config.json").write_text('{"n_items": 20, "maxl'),
    "config.json a list": lambda m: (m / "config.json").write_text("[1, 2]"),
    "config.json heads 3": lambda m: (m / "config.json").write_text(
        json.dumps({**json.loads((m / "config.json").read_text()), "heads": 3})),
    "garbled model.safetensors": lambda m: (m / "model.safetensors").write_bytes(
        (m / "model.safetensors").read_bytes()[:200]),
    "model.safetensors noise": lambda m: (m / "model.safetensors").write_bytes(b"\x00\xff" * 300),
    "garbled item_ids.json": lambda m: (m / "item_ids.json").write_text('["1", "2"'),
    "item_ids.json too short": lambda m: (m / "item_ids.json").write_text(json.dumps([str(i) for i in range(5)])),
    "item_ids.json duplicates": lambda m: (m / "item_ids.json").write_text(json.dumps(["1"] * N_ITEMS)),
    "item_ids.json floats": lambda m: (m / "item_ids.json").write_text(json.dumps([1.5] * N_ITEMS)),
    "item_ids.json an object": lambda m: (m / "item_ids.json").write_text('{"a": 1}'),
    "garbled training.json": lambda m: (m / "training.json").write_text("{oops"),
    "training.json bad k_core": lambda m: (m / "training.json").write_text(
        json.dumps({"config": {"k_core": "x"}, "state": {}})),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_broken_model_directories_are_one_line_errors(model_copy, data_dir, corruption):
    CORRUPTIONS[corruption](model_copy)
    with pytest.raises(UserError):
        evaluate_model(data_dir, model_copy, device="cpu")
    before = snapshot(model_copy)
    one_line_error(run("eval", "sasrec", "--data", data_dir, "--model", model_copy, "--device", "cpu"))
    assert snapshot(model_copy) == before


# ---- 4. resource limits -----------------------------------------------------------------------------
def test_recommend_and_evaluate_clamp_k(model_dir, seqs):
    rec = Recommender.from_pretrained(model_dir, device="cpu")
    assert len(rec.recommend(["3", "4"], k=2_147_483_648)) == N_ITEMS - 2
    with pytest.raises(UserError, match="k must be"):
        rec.recommend(["3"], k=0)
    case = LeaveOneOut(seqs, rec.model.maxlen).case("test")
    metrics = evaluate(rec.model, case, ks=(1, 1_000_000))
    assert metrics["Success@1000000"] == 1.0


@pytest.mark.parametrize("option, value", [
    ("--epochs", "100001"), ("--epochs", "99999999999999999999"), ("--batch-size", "0"), ("--maxlen", "100000"),
    ("--hidden", "0"), ("--blocks", "1000"), ("--heads", "0"), ("--dropout", "1"), ("--dropout", "-0.1"),
    ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"), ("--negatives", "0"), ("--gbce-t", "2"), ("--patience", "0"),
    ("--eval-every", "0"), ("--k-core", "-1"), ("--min-len", "0"), ("--seed", "-1"),
])
def test_numeric_train_options_have_ranges(data_dir, tmp_path, option, value):
    one_line_error(run("train", "sasrec", "--data", data_dir, "--out", tmp_path / "m", option, value))
    assert not (tmp_path / "m").exists()


def test_eval_cutoffs_have_a_range(data_dir, model_dir):
    one_line_error(run("eval", "sasrec", "--data", data_dir, "--model", model_dir, "--k", "1,2147483648"), "--k")


# ---- 5. resume takes the checkpoint's architecture --------------------------------------------------
def test_resume_uses_the_checkpoint_maxlen(data_dir, tmp_path):
    out = tmp_path / "m"
    assert run("train", "sasrec", "--data", data_dir, "--out", out, *TINY_CLI).exit_code == 0
    # no --maxlen here: the default (50) differs from the checkpoint's 8
    result = run("train", "sasrec", "--data", data_dir, "--out", out, "--resume", out, "--epochs", "2",
                 "--batch-size", "32", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs_run"] == 2
    assert json.loads((out / "training.json").read_text())["config"]["maxlen"] == 8


def test_resume_with_a_broken_optimizer_state(model_copy, seqs, tmp_path):
    (model_copy / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="optimizer"):
        train_sasrec(seqs, tmp_path / "m", TrainConfig(**dict(TINY, epochs=2)), resume=model_copy)


# ---- 6. interaction readers -------------------------------------------------------------------------
def _parquet_bytes(tmp_path):
    pl.DataFrame({"user": ["1", "1"], "item": ["a", "b"]}).write_parquet(tmp_path / "x.parquet")
    return (tmp_path / "x.parquet").read_bytes()


@pytest.mark.parametrize("name, content, fmt, message", [
    ("a.csv", "<parquet>", "auto", "is a parquet file, not a CSV file"),
    ("a.tsv", "<parquet>", "auto", "is a parquet file, not a tab-separated file"),
    ("a.txt", "<parquet>", "sasrec", "is a parquet file"),
    ("a.inter", "<parquet>", "auto", "is a parquet file"),
    ("a.csv", b"", "auto", "empty"),
    ("a.parquet", b"", "auto", "is not a parquet file"),
    ("a.parquet", b"user,item\n1,2\n", "auto", "is not a parquet file"),
    ("a.csv", b"who,what\n1,2\n", "auto", "no user column"),
    ("a.csv", b"user,item\n", "auto", "no interactions"),
    ("a.csv", "user,item\n1,caf\xe9\n".encode("latin-1"), "auto", "utf-8"),
    ("a.csv", b"user,item\n1,\x00\x01\n", "auto", "binary data"),
    ("a.txt", b"1 2 3\n4 5 6\n", "auto", "expected 2 space-separated columns"),
    ("ratings.dat", b"1::2::5::978300760\n2::3\n", "movielens", "expected 4 fields"),
    ("a.csv", b"user,item,timestamp\n1,2,yesterday\n", "auto", "is not a CSV file"),
])
def test_malformed_interaction_files(tmp_path, name, content, fmt, message):
    path = tmp_path / name
    path.write_bytes(_parquet_bytes(tmp_path) if content == "<parquet>" else content)
    with pytest.raises(UserError, match=message) as err:
        read_interactions(path, fmt)
    assert str(path) in str(err.value) and all(c.isprintable() for c in str(err.value))
    one_line_error(run("data", "stats", path, "--format", fmt))


def test_fifos_and_folders_are_not_read_as_files(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        read_interactions(fifo)  # would hang if opened
    (tmp_path / "ml").mkdir()
    os.mkfifo(tmp_path / "ml" / "ratings.dat")
    one_line_error(run("data", "stats", tmp_path / "ml"), "not a regular file")
    one_line_error(run("data", "stats", tmp_path, "--format", "csv"), "not a regular file")
    (tmp_path / "rb").mkdir()
    one_line_error(run("data", "stats", tmp_path / "rb", "--format", "recbole"), "no .inter file")


# ---- 7. data fetch ------------------------------------------------------------------------------------
class CutOffHandler(http.server.BaseHTTPRequestHandler):
    """Promises the whole archive, sends `sent` bytes of it and hangs up; honours Range afterwards."""

    sent = 1000

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:start + self.sent] if self.sent else PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def cut_off_server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), CutOffHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/ml-100k.zip"
    httpd.shutdown()
    CutOffHandler.sent = 1000


def test_fetch_into_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("mine")
    one_line_error(run("data", "fetch", "ml-100k", "--dir", tmp_path / "afile"), "not a folder")
    one_line_error(run("data", "fetch", "ml-100k", "--dir", tmp_path / "afile" / "below"), "not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


NOT_A_ZIP = b"not a zip archive"


@pytest.mark.parametrize("url, body, checksum", [
    ("http://127.0.0.1:9/ml-100k.zip", PAYLOAD, SHA),  # unreachable
    (None, PAYLOAD, "sha256:" + "0" * 64),  # checksum mismatch
    (None, NOT_A_ZIP, "sha256:" + hashlib.sha256(NOT_A_ZIP).hexdigest()),  # verified, but not an archive
])
def test_a_failed_fetch_leaves_nothing_behind(tmp_path, monkeypatch, url, body, checksum):
    source = tmp_path / "src" / "ml-100k.zip"
    source.parent.mkdir()
    source.write_bytes(body)
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive(url or source.as_uri(), checksum))
    (tmp_path / "home").mkdir()
    one_line_error(run("data", "fetch", "ml-100k", "--dir", tmp_path / "home" / "new" / "data"))
    assert list((tmp_path / "home").iterdir()) == []


def test_an_interrupted_download_keeps_its_part_file_and_resumes(tmp_path, monkeypatch, cut_off_server):
    monkeypatch.setitem(fetch_module.DATASETS, "ml-100k", Archive(cut_off_server, SHA))
    root = tmp_path / "data"
    with pytest.raises(UserError, match="interrupted"):
        fetch("ml-100k", root)
    assert (root / "ml-100k.zip.part").read_bytes() == PAYLOAD[:1000]
    CutOffHandler.sent = 0  # the server now sends the rest
    assert (fetch("ml-100k", root) / "u.data").is_file()
    assert not (root / "ml-100k.zip.part").exists()


# ---- 8. train sasrec overwrite policy ----------------------------------------------------------------
def test_train_replaces_only_with_overwrite(data_dir, tmp_path):
    out = tmp_path / "m"
    assert run("train", "sasrec", "--data", data_dir, "--out", out, *TINY_CLI).exit_code == 0
    before = snapshot(out)
    one_line_error(run("train", "sasrec", "--data", data_dir, "--out", out, *TINY_CLI), "--overwrite")
    assert snapshot(out) == before
    result = run("train", "sasrec", "--data", data_dir, "--out", out, "--overwrite", *TINY_CLI, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert snapshot(out) != before


def test_train_never_replaces_a_folder_ragcli_did_not_write(data_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_line_error(run("train", "sasrec", "--data", data_dir, "--out", mine, "--overwrite", *TINY_CLI),
                   "not written by ragcli")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="not written by ragcli"):
        train_from_path(data_dir, mine, overwrite=True, **TINY)


def test_a_second_trainer_of_the_same_out_is_refused(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "m"
    monkeypatch.setattr(train_module, "load_sequences", lambda *a, **k: pytest.fail("read data before the lock"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from indexes.files import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another ragcli process"):
            train_from_path(data_dir, out, **TINY)
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_train_sasrec_library_refuses_an_existing_out(seqs, model_dir):
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        train_sasrec(seqs, model_dir, TrainConfig(**TINY))

