"""Limits of SASRec's settings, checked (with `indexes.checks`) where they come in: a checkpoint's
config.json (through the model constructor), a training config, a CLI option. Light on purpose (no
torch): the CLI reads the limits when it starts."""

from __future__ import annotations

from indexes.checks import boolean, integer, number
from indexes.errors import UserError

MAX_EPOCHS = 100_000
MAX_NEGATIVES = 10_000  # gbce draws this many per position
MAX_COUNT = 2**31 - 1  # --k-core, --min-len: interaction counts
MAX_CUTOFF = 1_000_000  # an evaluation cut-off K: nDCG@K's ideal discounts take K floats
MAX_MAXLEN = 4096  # the causal mask is maxlen^2
MAX_HIDDEN = 8192
MAX_BLOCKS = 64
MAX_EMBEDDING = 1 << 30  # (n_items + 1) * hidden parameters: 4 GiB in float32
ARCHITECTURE = ("maxlen", "hidden", "blocks", "heads", "dropout", "pre_ln")  # config.json holds n_items + these


def check_architecture(n_items: object, maxlen: object, hidden: object, blocks: object, heads: object,
                       dropout: object, pre_ln: object) -> None:
    """Refuse a config a model cannot (or must not) be built from: wrong types or out-of-range values, as
    a checkpoint's config.json may hold. A UserError naming the setting."""
    n_items = integer("n_items", n_items, 1, MAX_EMBEDDING)
    integer("maxlen", maxlen, 1, MAX_MAXLEN)
    hidden = integer("hidden", hidden, 1, MAX_HIDDEN)
    integer("blocks", blocks, 1, MAX_BLOCKS)
    heads = integer("heads", heads, 1, hidden)
    if hidden % heads:
        raise UserError(f"hidden size {hidden} is not divisible by {heads} heads")
    if (n_items + 1) * hidden > MAX_EMBEDDING:
        raise UserError(f"{n_items} items x hidden {hidden} exceeds {MAX_EMBEDDING} embedding parameters")
    number("dropout", dropout, 0, 1, high_open=True)
    boolean("pre_ln", pre_ln)
