"""Helpers the test modules import: the CLI runner."""

from click.testing import CliRunner, Result

from cli import ragcli


def run(*args: object) -> Result:
    """`ragcli ARGS...` in-process (arguments stringified, so paths and numbers pass as they are)."""
    return CliRunner().invoke(ragcli, [str(a) for a in args])
