"""The README's examples marked `<!-- runnable -->` run as written, in order, in a fresh directory with
its own RAGCLI_HOME: so they cannot drift from the code. A bash line whose comment says "exit 2" must
fail with exit code 2 (a documented error); every other command must succeed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- runnable -->\n```(bash|python)\n(.*?)\n```", re.S)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    return BLOCK.findall(text)


def bash_commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only and blank lines dropped."""
    commands, current = [], ""
    for line in block.splitlines():
        current += line.rstrip("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if current.strip() and not current.lstrip().startswith("#"):
                commands.append(current.strip())
            current = ""
    return commands


def test_the_parser_finds_the_marked_blocks():
    text = "x\n<!-- runnable -->\n```bash\na --b \\\n  c   # note\n# only a comment\n\nd\n```\n```bash\nnot marked\n```\n"
    blocks = runnable_blocks(text)
    assert blocks == [("bash", "a --b \\\n  c   # note\n# only a comment\n\nd")]
    assert bash_commands(blocks[0][1]) == ["a --b    c   # note", "d"]


@pytest.mark.slow
def test_readme_examples_run(tmp_path):
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 6 and {kind for kind, _ in blocks} == {"bash", "python"}
    env = {**os.environ, "RAGCLI_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for kind, block in blocks:
        for command in bash_commands(block) if kind == "bash" else [block]:
            argv = ["bash", "-c", command] if kind == "bash" else [sys.executable, "-c", block]
            result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            expected = 2 if kind == "bash" and "exit 2" in command.partition("#")[2] else 0
            assert result.returncode == expected, f"README {kind} example failed:\n{command}\n{result.stderr[-3000:]}"
