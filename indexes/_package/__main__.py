"""`python -m ragcli ARGS`: the CLI, imported with the current directory taken off `sys.path` first, so
a user's own `indexes.py` or `vision.py` there cannot stand in for ragcli's packages."""

import os
import sys


def _without_working_directory(path: list[str]) -> list[str]:
    here = os.path.realpath(os.getcwd())
    return [entry for entry in path if entry and os.path.realpath(entry) != here]


if __name__ == "__main__":
    sys.path[:] = _without_working_directory(sys.path)
    from cli import main

    main()
