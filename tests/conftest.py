"""Shared test set-up: offline hub, an isolated RAGCLI_HOME, progress bars off, one torch thread."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one intra-op thread, results repeat exactly, and two threads
    spin-wait on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCLI_HOME", str(tmp_path / "ragcli-home"))
    from indexes.runtime import set_progress

    set_progress(False)
    yield
    set_progress(True)
