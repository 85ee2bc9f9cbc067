"""ragcli's own import name: `python -m ragcli`, the version, and the bundled samples (`ragcli.data`).

The library itself lives in the top-level packages `indexes`, `recsys`, `retrieval` and `vision`, with
the CLI in the module `cli`; this package is a thin, unambiguous handle on them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ragcli")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
