"""Shared test set-up: offline hub, an isolated RAGCLI_HOME, progress bars off."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCLI_HOME", str(tmp_path / "ragcli-home"))
    from indexes.runtime import set_progress

    set_progress(False)
    yield
    set_progress(True)
