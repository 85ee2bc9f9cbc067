"""Training under torchrun: two CPU processes (gloo) train the model one process trains on the combined
batch (SASRec, FocalLens, the statute models), only rank 0 writes or prints, and a checkpoint from a
two-process run resumes in one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recsys import Recommender
from recsys.synthetic import item_table, markov_interactions, write_recbole
from recsys.train import train_from_path

SASREC = dict(loss="ce", epochs=2, batch_size=16, maxlen=8, hidden=16, blocks=1, heads=1, dropout=0.0, lr=5e-3,
              device="cpu", seed=0)
ROOT = Path(__file__).resolve().parents[1]
PRINT_ON_RANK_0 = "import json, os, sys\nshow = print if os.environ.get('RANK', '0') == '0' else (lambda *a: None)\n"
STATUTES = PRINT_ON_RANK_0 + """
from retrieval.models import train_model
from retrieval.training import TrainConfig
config = TrainConfig(epochs=2, batch_size=8, negatives=3, patience=2, device="cpu", seed=0)
show(json.dumps(train_model("attentive-cnn", None, "R02", "R03", sys.argv[1], config, dropout=0.0)))
"""
FOCALLENS = PRINT_ON_RANK_0 + """
from vision.train_focallens import train_from_data
show(json.dumps(train_from_data("{data}", sys.argv[1], epochs=2, batch_size=16, image_size=16, patch_size=8,
                                embed_dim=16, depth=1, num_heads=2, text_encoder="{encoder}", device="cpu",
                                tower="vit", conv_stem=False)))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 ARGS` on the CPU; fails the test with the ranks' stderr if it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), *args]
    launched = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    return launched


def assert_same_weights(one: Path, two: Path, invariant: dict[str, slice] | None = None) -> None:
    """Both checkpoints hold the same tensors within float tolerance. A bias the output cannot depend on
    (attention's key bias, a score bias before a softmax or sparsemax) gets rounding noise for a gradient,
    which Adam scales up: `invariant` maps name suffixes to the slices of such biases, left out."""
    ones, twos = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert ones.keys() == twos.keys()
    for name in ones:
        for suffix, part in (invariant or {}).items():
            if name.endswith(suffix):
                ones[name][part] = twos[name][part]
        torch.testing.assert_close(twos[name], ones[name], rtol=1e-4, atol=1e-6, msg=name)


def key_bias(hidden: int) -> dict[str, slice]:
    return {"qkv.bias": slice(hidden, 2 * hidden)}


@pytest.mark.slow
def test_sasrec_two_processes_train_what_one_trains_and_only_rank_0_writes(tmp_path):
    data = write_recbole(tmp_path / "data", "chain", markov_interactions(96, 20, seed=3), item_table(20))
    single = train_from_path(data, tmp_path / "one", **SASREC)
    launched = torchrun("-m", "ragcli", "-v", "train", "sasrec", "--data", str(data), "--out", str(tmp_path / "two"),
                        "--json", *_flags(SASREC), cwd=tmp_path)
    assert launched.stdout.count('"best_epoch"') == 1  # rank 0 reports; rank 1 only computes
    two = json.loads(launched.stdout)
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in single["history"]], rel=1e-4)
    assert_same_weights(tmp_path / "one", tmp_path / "two", key_bias(SASREC["hidden"]))
    scores = []
    for run in ("one", "two"):
        model = Recommender.from_pretrained(tmp_path / run, device="cpu")
        histories = [model.to_internal(h) for h in (["1", "2", "3"], ["7", "8"], ["15"])]
        scores.append(model.encode(histories) @ model.item_vectors().T)
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    resumed = train_from_path(data, tmp_path / "two", resume=tmp_path / "two", **dict(SASREC, epochs=3))
    assert resumed["epochs_run"] == 3 and len(resumed["history"]) == 3
    assert resumed["history"][:2] == two["history"]


@pytest.mark.slow
def test_focallens_two_processes_gather_the_batch_for_its_contrastive_loss(tmp_path, tiny_encoder):
    from helpers import run

    assert run("data", "make-conditional", "--out", tmp_path / "data", "--n", 80, "--size", 16).exit_code == 0
    script = tmp_path / "train_focallens.py"  # the ViT tower without BatchNorm: on the CPU each rank would
    script.write_text(FOCALLENS.format(data=tmp_path / "data", encoder=tiny_encoder), encoding="utf-8")  # normalise alone
    losses = [_train_both(script, tmp_path, "loss")]
    assert losses[0][1] == pytest.approx(losses[0][0], rel=1e-4)
    assert_same_weights(tmp_path / "one", tmp_path / "two", key_bias(16))


@pytest.mark.slow
def test_statute_model_two_processes_train_what_one_trains(tmp_path):
    script = tmp_path / "train_statutes.py"  # dropout off: each process would draw its own masks
    script.write_text(STATUTES, encoding="utf-8")
    losses = _train_both(script, tmp_path, "history")
    assert [h["loss"] for h in losses[1]] == pytest.approx([h["loss"] for h in losses[0]], rel=1e-4)
    assert_same_weights(tmp_path / "one", tmp_path / "two", {"attention.2.bias": slice(None)})  # before sparsemax


def _train_both(script: Path, tmp_path: Path, key: str) -> list:
    """Run a training script in one process (-> tmp/one) and under torchrun (-> tmp/two); each prints
    its summary as JSON. Returns both summaries' `key`."""
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = torchrun(str(script), str(tmp_path / "two"), cwd=ROOT)
    assert launched.stdout.count("{") == single.stdout.count("{")  # rank 0 alone printed
    return [json.loads(single.stdout)[key], json.loads(launched.stdout)[key]]
