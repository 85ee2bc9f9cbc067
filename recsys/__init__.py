"""SASRec next-item recommendation: interaction readers, model, losses, training, evaluation, serving.

    from recsys import Recommender
    Recommender.from_pretrained("runs/games").recommend(["12", "40", "7"], k=10)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    """`recsys.Recommender` on first use, so light modules (recsys.checks) load without torch."""
    if name == "Recommender":
        from recsys.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
