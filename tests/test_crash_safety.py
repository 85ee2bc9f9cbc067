"""Crash safety: a process replacing an index and a model checkpoint is SIGKILLed at random moments; the
names always open to a complete, verified version, and the next successful write leaves no leftovers."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from indexes import VectorIndex
from indexes.files import atomic_dir
from recsys.recommender import Recommender

WRITER = textwrap.dedent("""
    import sys, itertools
    import numpy as np
    import torch
    from indexes import VectorIndex
    from indexes.files import atomic_dir
    from recsys.model import SASRec
    from recsys.recommender import Recommender

    root = sys.argv[1]
    torch.manual_seed(0)
    rec = Recommender(SASRec(n_items=30, maxlen=8, hidden=16, blocks=1, heads=1), [str(i) for i in range(30)])
    print("ready", flush=True)
    for step in itertools.count():
        rows = 50 + step % 7
        vectors = np.random.default_rng(step).standard_normal((rows, 8)).astype("float32")
        VectorIndex.build(vectors, device="cpu", encoder={"step": step}).save(f"{root}/ix", overwrite=True)
        with atomic_dir(f"{root}/model", "model", overwrite=True) as tmp:
            rec.save_pretrained(tmp)
""")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in ("ix", "model"))


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_the_index_or_the_checkpoint(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    for attempt in range(8):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05 if attempt else 0.6, 0.6))  # the first run must publish once
        child.send_signal(signal.SIGKILL)
        child.wait()
        index = VectorIndex.load(tmp_path / "ix")  # verifies checksums, dimension and row count
        assert index.ntotal == 50 + index.encoder["step"] % 7
        assert Recommender.from_pretrained(tmp_path / "model").model.n_items == 30
    VectorIndex.build(np.ones((3, 8), np.float32), device="cpu").save(tmp_path / "ix", overwrite=True)
    with atomic_dir(tmp_path / "model", "model", overwrite=True) as tmp:
        Recommender.from_pretrained(tmp_path / "model").save_pretrained(tmp)
    live = {(tmp_path / name).resolve().name for name in ("ix", "model")}
    previous = {p.name for p in tmp_path.iterdir() if p.name not in live | {"ix", "model"}}
    assert len([p for p in previous if p.startswith(".ix.")]) <= 1 and len([p for p in previous if p.startswith(".model.")]) <= 1
    assert not [p for p in previous if ".lock" in p or ".link-" in p]  # only the one previous version each is kept


KILL_AT_SYSCALL = textwrap.dedent("""
    import os, sys
    import numpy as np
    from indexes import VectorIndex
    import indexes.files as files

    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):  # the process dies right before its n-th rename
        calls["n"] += 1
        if calls["n"] == int(sys.argv[2]):
            os._exit(9)
        real_replace(src, dst)

    files.os.replace = dying_replace
    VectorIndex.build(np.full((5, 4), 2.0, "float32"), device="cpu").save(sys.argv[1], overwrite=True)
""")


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("die_at", [1, 2, 3])
def test_death_before_any_rename_of_a_replace_keeps_a_complete_version(tmp_path, legacy, die_at):
    import shutil

    target = tmp_path / "ix"
    VectorIndex.build(np.ones((3, 4), np.float32), device="cpu").save(target)
    if legacy:  # an index written before versioned directories: a plain folder
        version = target.resolve()
        target.unlink()
        shutil.copytree(version, target)
        shutil.rmtree(version)
        (target / ".ragcli.json").unlink()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", KILL_AT_SYSCALL, str(target), str(die_at)], env=env, check=False)
    assert VectorIndex.load(target).ntotal in (3, 5)
