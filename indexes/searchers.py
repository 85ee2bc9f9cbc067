"""Where a search runs: the CPU FAISS index, GPU replicas of it, or a torch matrix product on CUDA.

Each searcher takes float32 queries and returns (scores, rows) as FAISS does; rows are -1 where
fewer than k results exist.
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np

from indexes.errors import UserError


class Searcher(Protocol):
    description: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class FaissSearcher:
    """Search a CPU FAISS index, optionally restricted to an allowed set of rows (IDSelector)."""

    description = "cpu"

    def __init__(self, index: faiss.Index):
        self.index = index

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            return self.index.search(queries, k)
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        return self.index.search(queries, k, params=_params_with_selector(self.index, selector))


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index under an IDMap wrapper (or the index itself), downcast to its real class."""
    return faiss.downcast_index(index.index if hasattr(index, "id_map") else index)


def _params_with_selector(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters of the inner index's own type (FAISS insists), keeping its nprobe / efSearch."""
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


class FaissGpuSearcher(FaissSearcher):
    """The CPU index cloned to every GPU FAISS sees, replicated (default) or sharded."""

    def __init__(self, index: faiss.Index, shard: bool = False):
        options = faiss.GpuMultipleClonerOptions()
        options.shard = shard
        super().__init__(faiss.index_cpu_to_all_gpus(index, co=options))
        self.description = f"faiss-gpu x{faiss.get_num_gpus()} ({'sharded' if shard else 'replicated'})"


class TorchExactSearcher:
    """Exact search as a matrix product + top-k in torch, for CUDA machines whose FAISS has no GPU."""

    def __init__(self, index: faiss.Index, metric: str, device: str, batch: int = 4096):
        import torch

        inner = inner_index(index)
        if not isinstance(inner, faiss.IndexFlat):
            raise ValueError("the torch searcher handles exact (Flat) indexes only")
        vectors = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else np.zeros((0, index.d), np.float32)
        self.torch = torch
        self.vectors = torch.from_numpy(vectors).to(device)
        self.sq_norms = (self.vectors * self.vectors).sum(1)
        self.rows = torch.from_numpy(faiss.vector_to_array(index.id_map).astype(np.int64)).to(device)
        self.l2 = metric == "l2"
        self.batch = batch
        self.description = f"torch {device} (exact)"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        k_eff = min(k, len(self.rows))
        scores_out = np.full((len(queries), k), np.inf if self.l2 else -np.inf, dtype=np.float32)
        rows_out = np.full((len(queries), k), -1, dtype=np.int64)
        if k_eff == 0:
            return scores_out, rows_out
        with torch.no_grad():
            for start in range(0, len(queries), self.batch):
                q = torch.from_numpy(queries[start : start + self.batch]).to(self.vectors.device)
                sims = q @ self.vectors.T
                if self.l2:  # squared distance = |q|^2 - 2 q.v + |v|^2; rank by its negative
                    sims = 2 * sims - self.sq_norms[None, :] - (q * q).sum(1, keepdim=True)
                top, idx = torch.topk(sims, k_eff, dim=1)
                scores_out[start : start + len(q), :k_eff] = (-top if self.l2 else top).cpu().numpy()
                rows_out[start : start + len(q), :k_eff] = self.rows[idx].cpu().numpy()
        return scores_out, rows_out


def choose_searcher(index: faiss.Index, device: str, metric: str, shard: bool = False) -> Searcher:
    """Pick where to search: `cpu`, or for `auto`/`cuda` the GPU via FAISS, else torch (exact only)."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cpu":
        return FaissSearcher(index)
    if faiss.get_num_gpus() > 0:
        try:
            return FaissGpuSearcher(index, shard=shard)
        except (RuntimeError, AttributeError):  # kinds FAISS cannot put on a GPU (e.g. HNSW)
            return FaissSearcher(index)
    import torch

    if torch.cuda.is_available() and isinstance(inner_index(index), faiss.IndexFlat):
        return TorchExactSearcher(index, metric, "cuda" if device == "auto" else device)
    if device.startswith("cuda"):
        raise UserError("device 'cuda' asked for, but neither FAISS nor torch sees a usable GPU for this index")
    return FaissSearcher(index)
