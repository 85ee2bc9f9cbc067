"""`ragcli train sasrec`, `eval sasrec`, `data stats`, and recsys `index build` / `index query`:
--json shapes, exit code 2 on bad input, nothing written on failure."""

import json

import pytest

from helpers import run
from recsys.synthetic import item_table, markov_interactions, write_recbole

TINY = ["--epochs", "2", "--batch-size", "32", "--maxlen", "8", "--hidden", "16", "--blocks", "1", "--device", "cpu"]




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_recbole(tmp_path_factory.mktemp("sample"), "sample", markov_interactions(120, 30, seed=2), item_table(30))


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "model"
    result = run("train", "sasrec", "--data", data_dir, "--out", out, "--json", *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["epochs_run"] == 2 and summary["users"] == 120 and summary["items"] == 30
    assert {"best_epoch", "best_valid_nDCG@10", "seconds_per_epoch", "peak_memory_mb", "history"} <= set(summary)
    return out


def test_eval_json_and_out_file(data_dir, model_dir, tmp_path):
    result = run("eval", "sasrec", "--data", data_dir, "--model", model_dir, "--protocol", "sampled100",
                 "--k", "5,10", "--out", tmp_path / "r.json", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["users"] == 120 and set(shown["metrics"]) == {"Success@5", "Success@10", "nDCG@5", "nDCG@10", "RR@5", "RR@10"}
    assert json.loads((tmp_path / "r.json").read_text()) == shown
    text = run("eval", "sasrec", "--data", data_dir, "--model", model_dir)
    assert text.exit_code == 0 and "nDCG@10" in text.output and "full ranking" in text.output


def test_index_build_and_query(data_dir, model_dir):
    built = run("index", "build", "--corpus", data_dir, "--model", model_dir, "--name", "chain", "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.output)["encoder"]["family"] == "recsys"
    result = run("index", "query", "chain", "--history", "3,4,5", "-k", "4", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and not {r["id"] for r in rows} & {"3", "4", "5"}
    assert all(r["payload"]["title"] for r in rows)
    text = run("index", "query", "chain", "--history", "3,4,5", "-k", "2", "--device", "cpu")
    assert text.exit_code == 0 and rows[0]["payload"]["title"] in text.output
    unknown = run("index", "query", "chain", "--history", "3,x9,77", "--device", "cpu")
    assert unknown.exit_code == 2 and "x9, 77" in unknown.output
    skipped = run("index", "query", "chain", "--history", "3,x9", "--skip-unknown", "--device", "cpu", "--json")
    assert skipped.exit_code == 0 and len(json.loads(skipped.output)) == 10


def test_data_stats(data_dir):
    result = run("data", "stats", data_dir, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["users"] == 120 and stats["items"] == 30 and stats["item_columns"] == ["title", "genres"]
    assert set(stats["length"]) == {"min", "p25", "p50", "p75", "p90", "p99", "max", "mean"}


@pytest.mark.parametrize("args, message", [
    (["train", "sasrec", "--data", "{tmp}/missing.txt", "--out", "{tmp}/m"], "no such file"),
    (["train", "sasrec", "--data", "{data}", "--out", "{tmp}/m", "--hidden", "30", "--heads", "4"], "divisible"),
    (["train", "sasrec", "--data", "{data}", "--out", "{tmp}/m", "--epochs", "0"], "'--epochs': 0 is not in the range"),
    (["train", "sasrec", "--data", "{data}", "--out", "{tmp}/m", "--resume", "{tmp}/nothing"], "not a SASRec model"),
    (["eval", "sasrec", "--data", "{data}", "--model", "{tmp}/nothing"], "not a SASRec model"),
    (["eval", "sasrec", "--data", "{data}", "--model", "{tmp}/nothing", "--k", "a,b"], "--k takes"),
    (["data", "stats", "{tmp}/missing.csv"], "no such file"),
    (["data", "stats", "ml-1m"], "ragcli data fetch ml-1m"),
    (["index", "build", "--corpus", "{data}", "--name", "x"], "--model"),
])
def test_bad_input_exits_2_and_writes_nothing(data_dir, tmp_path, args, message):
    result = run(*[a.format(tmp=tmp_path, data=data_dir) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "m").exists()


def test_train_refuses_to_overwrite(data_dir, model_dir):
    result = run("train", "sasrec", "--data", data_dir, "--out", model_dir, *TINY)
    assert result.exit_code == 2 and "exists" in result.output
