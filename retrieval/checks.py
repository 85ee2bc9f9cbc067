"""Limits of the neural retrievers' settings, checked (with `indexes.checks`) where they come in: a
checkpoint's config.json (through the model constructors), a training config, a CLI option. Light on
purpose (no torch): the CLI reads the limits when it starts."""

from __future__ import annotations

MAX_EPOCHS = 10_000
MAX_NEGATIVES = 1_000
MAX_RANK = 10_000  # a count of top-ranked articles: the hard-negative pool, R@k
MAX_WIDTH = 8_192  # one layer's width: a hostile config must not allocate tens of GB before its weights load
MAX_VOCAB = 4_000_000
MAX_EMBEDDING_PARAMETERS = 1 << 28  # vocabulary x embedding width (1 GiB of float32)
