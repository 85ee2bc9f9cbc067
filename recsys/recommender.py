"""`Recommender`: a trained SASRec plus its item id map, i.e. what a model directory holds.

    rec = Recommender.from_pretrained("runs/games")
    rec.recommend(["12", "40", "7"], k=10)   # -> [Hit(id, score)], history items excluded

On disk: config.json + model.safetensors (PyTorchModelHubMixin) + item_ids.json (raw id of item 1, 2, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import hf_hub_download

from indexes import Hit, UserError
from indexes.files import read_json
from indexes.metrics import current_names, require_finite
from indexes.runtime import load_pretrained, resolve_device
from recsys.checks import ARCHITECTURE
from recsys.data import windows
from recsys.model import SASRec

ID_MAP_FILE = "item_ids.json"
STATE_FILE = "training.json"
VALID_METRIC = "nDCG@10"  # early stopping's; STATE_FILE's state has `valid_nDCG@10` per epoch and `best_valid_nDCG@10`
VALID_KEY, BEST_KEY = f"valid_{VALID_METRIC}", f"best_valid_{VALID_METRIC}"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Recommender:
    """Encode histories of raw item ids and rank all items for them."""

    def __init__(self, model: SASRec, item_ids: Sequence[str]):
        if len(item_ids) != model.n_items:
            raise UserError(f"id map has {len(item_ids)} items, the model {model.n_items}")
        self.model = model.eval()
        self.item_ids = [str(i) for i in item_ids]
        self._index = {raw: i for i, raw in enumerate(self.item_ids, start=1)}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str = "auto") -> Recommender:
        """Load a model directory written by `save_pretrained` (or `ragcli train sasrec`), or a hub repo id."""
        path = Path(name_or_path)
        if path.is_dir():
            missing = [f for f in ("config.json", "model.safetensors", ID_MAP_FILE) if not (path / f).is_file()]
            if missing:
                raise UserError(f"{path} is not a SASRec model directory (missing {', '.join(missing)})")
            id_map = path / ID_MAP_FILE
        elif HUB_ID.fullmatch(str(name_or_path)):
            try:
                id_map = Path(hf_hub_download(str(name_or_path), ID_MAP_FILE))
            except Exception as err:  # offline, unknown repo, no access: all the user's to fix
                raise UserError(f"cannot load {name_or_path} from the hub: {str(err).splitlines()[0]}") from None
        else:
            raise UserError(f"{path} is not a SASRec model directory")
        model = load_pretrained(SASRec, name_or_path)
        if path.is_dir():  # every setting written out, none left to the constructor's defaults
            absent = [k for k in ("n_items", *ARCHITECTURE) if k not in read_json(path / "config.json", "model config")]
            if absent:
                raise UserError(f"{path}: config.json lacks {', '.join(absent)}")
        item_ids = _checked_ids(read_json(id_map, "item id map"), model.n_items, f"{name_or_path}: {ID_MAP_FILE}")
        return cls(model.to(resolve_device(device)), item_ids)

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json, model.safetensors and the id map into `path` (wrap it in `atomic_dir`)."""
        path = Path(path)
        self.model.save_pretrained(path)
        (path / ID_MAP_FILE).write_text(json.dumps(self.item_ids), encoding="utf-8")

    @property
    def device(self) -> torch.device:
        return self.model.item_weight.device

    def to_internal(self, history: Sequence[str | int], skip_unknown: bool = False) -> list[int]:
        """Map raw ids to model ids; unknown ids are a UserError naming them, or dropped with `skip_unknown`."""
        raw = [str(i) for i in history]
        unknown = [i for i in raw if i not in self._index]
        if unknown and not skip_unknown:
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise UserError(f"unknown item ids: {shown} (or pass --skip-unknown)")
        known = [self._index[i] for i in raw if i in self._index]
        if not known:
            raise UserError("no known item in the history")
        return known

    @torch.no_grad()
    def encode(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(n, hidden) float32 query vectors of histories given as model ids, oldest first."""
        lengths = np.array([len(h) for h in histories])
        flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        ends = np.cumsum(lengths)
        seq = torch.from_numpy(windows(flat, ends - lengths, ends, self.model.maxlen)).to(self.device)
        return self.model.eval().encode(seq).float().cpu().numpy()

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """(n_items, hidden) float32 item embeddings, row i - 1 for model id i (the output layer)."""
        return self.model.item_weight[1:].float().cpu().numpy()

    def recommend(self, history: Sequence[str | int], k: int = 10, skip_unknown: bool = False,
                  keep_seen: bool = False) -> list[Hit]:
        """Top-k raw item ids for a history of raw ids (oldest first), by exact inner product; k is clamped
        to the items left to rank."""
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        ids = self.to_internal(history, skip_unknown)
        scores = torch.from_numpy(self.encode([ids])[0]) @ torch.from_numpy(self.item_vectors()).T
        require_finite(scores, "item scores")
        if not keep_seen:
            scores[torch.tensor(ids) - 1] = float("-inf")
        top = scores.topk(min(k, int(torch.isfinite(scores).sum())))
        return [Hit(self.item_ids[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]


def _checked_ids(ids: Any, n_items: int, where: str) -> list[str]:
    """An id map as read from JSON: a list of `n_items` unique raw ids (strings or integers)."""
    if not isinstance(ids, list) or not all(isinstance(i, str) or type(i) is int for i in ids):
        raise UserError(f"{where} must be a list of item ids (strings or integers)")
    if len(ids) != n_items:
        raise UserError(f"{where} has {len(ids)} ids, the model {n_items} items")
    raw = [str(i) for i in ids]
    if len(set(raw)) != len(raw):
        raise UserError(f"{where} holds duplicate ids")
    return raw


def read_training_state(model_dir: str | Path) -> dict[str, Any]:
    """The `training.json` of a model directory ({"config": ..., "state": ...}), checked enough to use; the
    metric names of an earlier release's state (`valid_ndcg10`) are read as today's (`indexes.metrics.RENAMED`)."""
    saved = read_json(Path(model_dir) / STATE_FILE, "training state")
    if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict) and isinstance(saved.get("state"), dict)):
        raise UserError(f"{model_dir}: {STATE_FILE} must hold a 'config' and a 'state' object")
    config, state = saved["config"], current_names(saved["state"])
    if isinstance(state.get("history"), list):
        state["history"] = [current_names(row) if isinstance(row, dict) else row for row in state["history"]]
    saved["state"] = state
    counts = [config.get("k_core", 0), config.get("min_len", 1), state.get("epoch", 0), state.get("best_epoch", 0)]
    if not all(type(n) is int and n >= 0 for n in counts) or not isinstance(state.get("history", []), list) \
            or not isinstance(state.get(BEST_KEY, 0.0), (int, float)):
        raise UserError(f"{model_dir}: {STATE_FILE} holds a malformed config or state")
    return saved
