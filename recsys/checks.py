"""Ranges of SASRec's settings, checked where they come in: a checkpoint's config.json (through the
model constructor), a training config, a CLI option. A wrong type or an out-of-range value is an error
naming the setting, never a hang, a huge allocation or a silently broken model. Light on purpose (no
torch): the CLI reads the limits when it starts."""

from __future__ import annotations

MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_NEGATIVES = 10_000  # gbce draws this many per position
MAX_SEED = 2**32 - 1  # what NumPy's seeding accepts
MAX_COUNT = 2**31 - 1  # --k-core, --min-len: interaction counts
MAX_CUTOFF = 1_000_000  # an evaluation cut-off K: NDCG@K's ideal discounts take K floats
MAX_MAXLEN = 4096  # the causal mask is maxlen^2
MAX_HIDDEN = 8192
MAX_BLOCKS = 64
MAX_EMBEDDING = 1 << 30  # (n_items + 1) * hidden parameters: 4 GiB in float32
ARCHITECTURE = ("maxlen", "hidden", "blocks", "heads", "dropout", "pre_ln")  # config.json holds n_items + these


def integer(name: str, value: object, low: int, high: int) -> None:
    """A ValueError naming the setting unless `value` is an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def check_architecture(n_items: object, maxlen: object, hidden: object, blocks: object, heads: object,
                       dropout: object, pre_ln: object) -> None:
    """Refuse a config a model cannot (or must not) be built from: wrong types or out-of-range values, as
    a checkpoint's config.json may hold. ValueError, which `load_pretrained` turns into a UserError."""
    integer("n_items", n_items, 1, MAX_EMBEDDING)
    integer("maxlen", maxlen, 1, MAX_MAXLEN)
    integer("hidden", hidden, 1, MAX_HIDDEN)
    integer("blocks", blocks, 1, MAX_BLOCKS)
    integer("heads", heads, 1, hidden)
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
    if (n_items + 1) * hidden > MAX_EMBEDDING:
        raise ValueError(f"{n_items} items x hidden {hidden} exceeds {MAX_EMBEDDING} embedding parameters")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(pre_ln, bool):
        raise ValueError(f"pre_ln must be true or false, got {pre_ln!r}")
