"""Helpers the test modules import: the CLI runner and the one-line error contract."""

from click.testing import CliRunner, Result

from cli import ragcli


def run(*args: object) -> Result:
    """`ragcli ARGS...` in-process (arguments stringified, so paths and numbers pass as they are)."""
    return CliRunner().invoke(ragcli, [str(a) for a in args])


def one_line_error(result: Result, *words: str) -> None:
    """The CLI contract for a user mistake: exit 2, one stderr line holding `words`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
