"""ragcli installed from its wheel works the same outside the repository: the bundled samples travel
as package data, `python -m ragcli` works, and a user's own indexes.py / vision.py in the working
directory cannot stand in for ragcli's packages."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from indexes.samples import SAMPLES, sample_dir

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "cli.py", "indexes", "recsys", "retrieval", "vision", "data"]
DECOY = "raise ImportError('a decoy module in the working directory was imported instead of ragcli')\n"


def test_bundled_samples_are_found_as_package_data():
    for name in SAMPLES:
        assert any(sample_dir(name).iterdir())
    assert (sample_dir("coliee-sample") / "riteval_R03_en.xml").is_file()


def decoy_dir(root: Path) -> Path:
    folder = root / "work"
    folder.mkdir()
    for name in ("indexes.py", "vision.py", "recsys.py", "retrieval.py"):
        (folder / name).write_text(DECOY)
    return folder


def test_python_m_ragcli_ignores_modules_in_the_working_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ragcli", "--version"], cwd=decoy_dir(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ragcli, version ")


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """The wheel built from the sources (offline, no build isolation), installed with --no-deps into a
    fresh venv that sees this environment's third-party packages through a .pth line (which does not
    run the editable install's finder, so ragcli itself comes only from the wheel)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", root / "dist", source],
                   check=True, capture_output=True, timeout=300)
    wheel = next((root / "dist").glob("ragcli-*.whl"))
    venv = root / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv],
                   check=True, timeout=120)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", "-q", wheel],
                   check=True, capture_output=True, timeout=300)
    return venv


@pytest.mark.slow
def test_the_wheel_builds_and_queries_the_bundled_sample_from_anywhere(wheel_venv, tmp_path):
    work = decoy_dir(tmp_path)
    env = {**os.environ, "RAGCLI_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}

    def ragcli(*args, module=False):
        command = [wheel_venv / "bin" / "python", "-m", "ragcli"] if module else [wheel_venv / "bin" / "ragcli"]
        result = subprocess.run([*command, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    where = subprocess.run([wheel_venv / "bin" / "python", "-c", "import indexes, ragcli.data; print(indexes.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert str(wheel_venv) in where and str(REPO) not in where  # ragcli comes from the wheel
    assert ragcli("--version").startswith("ragcli, version ")
    assert ragcli("--version", module=True).startswith("ragcli, version ")
    built = json.loads(ragcli("index", "build", "--corpus", "coliee", "--name", "sample", "--device", "cpu", "--json"))
    assert built["rows"] == 24 and built["encoder"]["family"] == "retrieval"
    hits = json.loads(ragcli("index", "query", "sample", "Can a minor cancel a contract?", "-k", "3", "--device",
                             "cpu", "--json"))
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["id"] == "5"  # Article 5: contracts by minors
