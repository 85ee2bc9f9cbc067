"""Training records: each trainer's training.json is drawn, and replayed by `train --config`; bad records are one-line errors."""

import json

import pytest
from PIL import Image

from indexes import UserError
from indexes.records import plot_training, training_history
from helpers import one_line_error, run

SASREC = {"config": {}, "state": {"history": [
    {"epoch": 1, "loss": 9.1, "seconds": 2.0, "valid_nDCG@10": 0.10},
    {"epoch": 2, "loss": 8.2, "seconds": 2.0, "valid_nDCG@10": 0.30},
    {"epoch": 3, "loss": 7.9, "seconds": 2.0, "valid_nDCG@10": 0.25}]}}
PARAFORMER = {"history": [{"epoch": 1, "loss": 1.0, "valid_R@5": 0.4}, {"epoch": 2, "loss": 0.5, "valid_R@5": 0.6}]}
# the same records as an earlier release wrote them: read under today's names
OLD_SASREC = {"config": {}, "state": {"history": [
    {("valid_ndcg10" if k == "valid_nDCG@10" else k): v for k, v in row.items()} for row in SASREC["state"]["history"]]}}
OLD_PARAFORMER = {"history": [{"epoch": 1, "loss": 1.0, "valid_recall@5": 0.4}, {"epoch": 2, "loss": 0.5, "valid_recall@5": 0.6}]}
FOCALLENS = {"loss": [2.0, 1.5, 1.2, 1.1], "seconds": 3.0}


@pytest.mark.parametrize("record, series, best", [
    (SASREC, ["loss", "valid_nDCG@10"], {"epoch": 2.0, "value": 0.30}),
    (PARAFORMER, ["loss", "valid_R@5"], {"epoch": 2.0, "value": 0.6}),
    (OLD_SASREC, ["loss", "valid_nDCG@10"], {"epoch": 2.0, "value": 0.30}),
    (OLD_PARAFORMER, ["loss", "valid_R@5"], {"epoch": 2.0, "value": 0.6}),
    (FOCALLENS, ["loss"], None),
])
def test_each_trainers_history_is_drawn(tmp_path, record, series, best):
    (tmp_path / "training.json").write_text(json.dumps(record))
    drawn = plot_training(tmp_path, tmp_path / "curve.png")
    assert drawn["series"] == series
    if best is not None:
        assert drawn[f"best_{series[1]}"] == best
    with Image.open(tmp_path / "curve.png") as image:
        assert image.format == "PNG" and image.width > 400 * len(series)


@pytest.mark.parametrize("record", [SASREC, OLD_SASREC])
def test_history_rows_keep_epoch_loss_and_validation_only(tmp_path, record):
    (tmp_path / "training.json").write_text(json.dumps(record))
    assert training_history(tmp_path)[1] == {"epoch": 2.0, "loss": 8.2, "valid_nDCG@10": 0.30}


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "no per-epoch history"),
    ('{"state": {"history": []}}', "history is empty"),
    ("{not json", "training record"),
])
def test_bad_records_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "training.json").write_text(content)
    with pytest.raises(UserError, match=message):
        training_history(tmp_path)
    one_line_error(run("plot", "training", tmp_path, "--out", tmp_path / "c.png"), message)
    assert not (tmp_path / "c.png").exists()


def test_cli_plots_a_trained_sasrec(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "training.json").write_text(json.dumps(SASREC))
    result = run("plot", "training", tmp_path / "m", "--out", tmp_path / "c.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["best_valid_nDCG@10"]["epoch"] == 2.0 and (tmp_path / "c.png").stat().st_size > 1000


def test_train_config_replays_a_run_and_options_override_it(tmp_path):
    tiny = ["--data", "recsys-sample", "--device", "cpu", "--maxlen", 12, "--hidden", 8, "--blocks", 1, "--post-ln",
            "--lr", 0.005, "--batch-size", 64, "--seed", 3]
    first = run("train", "sasrec", *tiny, "--epochs", 2, "--out", tmp_path / "first", "--json")
    assert first.exit_code == 0, first.output
    replay = run("train", "sasrec", "--config", tmp_path / "first" / "training.json", "--data", "recsys-sample",
                 "--epochs", 1, "--out", tmp_path / "replay", "--json")
    assert replay.exit_code == 0, replay.output
    before = json.loads((tmp_path / "first" / "training.json").read_text())["config"]
    after = json.loads((tmp_path / "replay" / "training.json").read_text())["config"]
    assert after == {**before, "epochs": 1}  # every recorded setting (post-LN included) but the one given


@pytest.mark.parametrize("content, message", [
    ('{"config": {"hidden": "big"}}', "'--hidden'"),
    ('{"unrelated": 1}', "no settings of `train sasrec`"),
    ("[]", "a training record is a JSON object"),
])
def test_train_config_errors_are_one_line(tmp_path, content, message):
    (tmp_path / "t.json").write_text(content)
    one_line_error(run("train", "sasrec", "--config", tmp_path / "t.json", "--data", "recsys-sample", "--out",
                       tmp_path / "m"), message)
    assert not (tmp_path / "m").exists()
