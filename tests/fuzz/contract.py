"""The contract every fuzz test checks: a bad input ends with exit code 2 and one stderr line (no
traceback), and nothing is written or changed: not the output, not the inputs' own files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner, Result

from cli import ragcli


def snapshot(*roots: Path) -> dict[str, str]:
    """Path -> SHA-256 (or 'dir') of every entry under the roots: the state a failed command must keep."""
    state = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            if path.is_symlink():
                state[str(path)] = "link:" + str(path.readlink())
            elif path.is_dir():
                state[str(path)] = "dir"
            elif path.is_file():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def invoke(*args: object) -> Result:
    return CliRunner().invoke(ragcli, [str(a) for a in args])


def check(result: Result, before: dict[str, str], *roots: Path, ok_allowed: bool = True) -> None:
    """Exit 0 (when a fuzzed input happens to be valid), or exit 2 with one stderr line and no change."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in ((0, 2) if ok_allowed else (2,)), (result.exit_code, result.output, result.exception)
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert snapshot(*roots) == before
