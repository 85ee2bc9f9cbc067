"""SASRec under torchrun: two CPU processes (gloo) train the model one process trains on the combined
batch, only rank 0 writes, and a checkpoint from the two-process run resumes in one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recsys import Recommender
from recsys.synthetic import item_table, markov_interactions, write_recbole
from recsys.train import train_from_path

SETTINGS = dict(loss="ce", epochs=2, batch_size=16, maxlen=8, hidden=16, blocks=1, heads=1, dropout=0.0, lr=5e-3,
                device="cpu", seed=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


@pytest.mark.slow
def test_two_processes_train_what_one_trains_and_only_rank_0_writes(tmp_path):
    data = write_recbole(tmp_path / "data", "chain", markov_interactions(96, 20, seed=3), item_table(20))
    single = train_from_path(data, tmp_path / "one", **SETTINGS)

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "ragcli", "-v", "train", "sasrec", "--data", str(data),
               "--out", str(tmp_path / "two"), "--json", *_flags(SETTINGS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count('"best_epoch"') == 1  # rank 0 reports; rank 1 only computes
    two = json.loads(launched.stdout)
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in single["history"]], rel=1e-4)

    ones, twos = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert ones.keys() == twos.keys()
    hidden = SETTINGS["hidden"]
    for name in ones:
        if name.endswith("qkv.bias"):  # a key bias has no effect on attention, so its gradient is rounding
            ones[name][hidden:2 * hidden] = twos[name][hidden:2 * hidden]  # noise, which Adam scales up
        torch.testing.assert_close(twos[name], ones[name], rtol=1e-4, atol=1e-6, msg=name)
    scores = []
    for run in ("one", "two"):
        model = Recommender.from_pretrained(tmp_path / run, device="cpu")
        histories = [model.to_internal(h) for h in (["1", "2", "3"], ["7", "8"], ["15"])]
        scores.append(model.encode(histories) @ model.item_vectors().T)
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    resumed = train_from_path(data, tmp_path / "two", resume=tmp_path / "two", **dict(SETTINGS, epochs=3))
    assert resumed["epochs_run"] == 3 and len(resumed["history"]) == 3
    assert resumed["history"][:2] == two["history"]
