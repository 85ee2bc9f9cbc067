"""Synthetic interaction logs with a known structure, for tests and the bundled sample.

Users walk a Markov chain over items: the next item is the current one's successor (i -> i + 1, cyclic)
with probability `p_follow`, else uniform. A working SASRec learns to predict the successor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

GENRES = ("Action", "Puzzle", "Racing", "Strategy", "Sports")
WORDS = ("Iron", "Silent", "Crimson", "Lunar", "Hidden", "Electric", "Frozen", "Golden", "Wild", "Paper")
NOUNS = ("Harbor", "Engine", "Garden", "Circuit", "Kingdom", "Orbit", "Canyon", "Lantern")


def markov_interactions(n_users: int = 200, n_items: int = 40, min_len: int = 6, max_len: int = 14,
                        p_follow: float = 0.9, seed: int = 0) -> pl.DataFrame:
    """A `user, item, timestamp` table of chain walks (raw ids are strings "1".."n_items")."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_users)
    total = int(lengths.sum())
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    jumps = rng.integers(0, n_items, size=total)
    follow = rng.random(total) < p_follow
    follow[first] = False  # each user starts anywhere
    # each position continues the run that began at the last jump: item = jump + steps since it
    run_start = np.maximum.accumulate(np.where(follow, 0, np.arange(total)))
    items = (jumps[run_start] + np.arange(total) - run_start) % n_items
    users = np.repeat(np.arange(1, n_users + 1), lengths)
    timestamps = np.arange(total) - np.repeat(first, lengths)
    return pl.DataFrame({"user": users.astype(str), "item": (items + 1).astype(str), "timestamp": timestamps})


def item_table(n_items: int) -> pl.DataFrame:
    """Made-up titles and genres for items "1".."n_items"."""
    ids = np.arange(n_items)
    return pl.DataFrame({
        "item": (ids + 1).astype(str),
        "title": [f"{WORDS[i % len(WORDS)]} {NOUNS[i // len(WORDS) % len(NOUNS)]} {i // 80 + 1}" for i in ids],
        "genres": [GENRES[i % len(GENRES)] for i in ids],
    })


def write_recbole(folder: Path, name: str, interactions: pl.DataFrame, items: pl.DataFrame) -> Path:
    """Write RecBole atomic files `<name>.inter` and `<name>.item`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    interactions.rename({"user": "user_id:token", "item": "item_id:token", "timestamp": "timestamp:float"}).write_csv(
        folder / f"{name}.inter", separator="\t")
    items.rename({"item": "item_id:token", "title": "title:token_seq", "genres": "genres:token_seq"}).write_csv(
        folder / f"{name}.item", separator="\t")
    return folder
