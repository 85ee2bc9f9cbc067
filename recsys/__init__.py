"""SASRec next-item recommendation: interaction readers, model, losses, training, evaluation, serving.

    from recsys import Recommender
    Recommender.from_pretrained("runs/games").recommend(["12", "40", "7"], k=10)
"""

from recsys.recommender import Recommender

__all__ = ["Recommender"]
