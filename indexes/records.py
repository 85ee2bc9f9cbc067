"""Training records: a model directory's `training.json`, read back as the per-epoch history (drawn as
PNG, loss and each validation metric, because a curve is read at a glance where JSON is not) and as the
settings of the run (`ragcli train ... --config training.json` replays them).

Reads the trainers' records: SASRec's (`config`, `state.history` with `loss` and `valid_nDCG@10`),
Paraformer / Attentive CNN's (`config`, `history` with `loss` and `valid_R@K`), the bi-encoder's
(settings at the top, `history`) and FocalLens's (`settings`, `loss`: one number per epoch). Records of an
earlier release (`valid_ndcg10`, `valid_recall@K`) are read under today's names (`indexes.metrics.RENAMED`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from indexes.errors import UserError
from indexes.files import atomic_write_bytes, read_json
from indexes.metrics import current_name

TRAINING_FILE = "training.json"


def training_history(model_dir: str | Path) -> list[dict[str, float]]:
    """Per-epoch rows ({"epoch", "loss", "valid_...": ...}) from `model_dir`'s training.json (or the file)."""
    path = Path(model_dir)
    path = path / TRAINING_FILE if path.is_dir() else path
    saved = read_json(path, "training record")
    rows = _rows(saved)
    if rows is None:
        raise UserError(f"{path}: no per-epoch history in it (expected SASRec, Paraformer or FocalLens training.json)")
    if not rows:
        raise UserError(f"{path}: the history is empty (no epoch finished)")
    return rows


def recorded_settings(path: str | Path) -> dict[str, Any]:
    """The settings a record holds: its top-level values with its `config` / `settings` object over
    them (results such as `history` are kept too; the caller picks the names it knows)."""
    path = Path(path)
    saved = read_json(path / TRAINING_FILE if path.is_dir() else path, "training record")
    if not isinstance(saved, dict):
        raise UserError(f"{path}: a training record is a JSON object")
    nested = [saved[key] for key in ("config", "settings") if isinstance(saved.get(key), dict)]
    return {**saved, **{k: v for section in nested for k, v in section.items()}}


def _rows(saved: Any) -> list[dict[str, float]] | None:
    if not isinstance(saved, dict):
        return None
    state = saved.get("state")
    history = state.get("history") if isinstance(state, dict) else saved.get("history")
    if history is None and isinstance(saved.get("loss"), list):
        history = [{"epoch": epoch, "loss": loss} for epoch, loss in enumerate(saved["loss"], 1)]
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return None
    return [{current_name(key): float(value) for key, value in row.items()
             if (key in ("epoch", "loss") or key.startswith("valid_")) and _number(value)} for row in history]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_training(model_dir: str | Path, out: str | Path, title: str | None = None) -> dict[str, Any]:
    """Draw the loss and every validation metric per epoch (the best epoch marked) into the PNG `out`,
    written atomically; returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, no display needed
    import matplotlib.pyplot as plt

    rows = training_history(model_dir)
    metrics = sorted({key for row in rows for key in row if key.startswith("valid_")})
    figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.5 * (1 + len(metrics)), 3.4), squeeze=False)
    drawn: dict[str, Any] = {"epochs": len(rows), "series": ["loss", *metrics]}
    for axis, key in zip(axes[0], ["loss", *metrics]):
        points = [(row["epoch"], row[key]) for row in rows if key in row and "epoch" in row]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 40 else None, lw=1.5)
        if key != "loss" and points:
            best = max(points, key=lambda p: p[1])
            axis.axvline(best[0], color="grey", ls="--", lw=1)
            axis.set_title(f"{key.removeprefix('valid_')} (validation), best {best[1]:.4f} at epoch {best[0]:g}", fontsize=9)
            drawn[f"best_{key}"] = {"epoch": best[0], "value": best[1]}
        else:
            axis.set_title("training loss", fontsize=9)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    figure.suptitle(title or str(model_dir), fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(out, buffer.getvalue())
    return {"out": str(out), **drawn}
