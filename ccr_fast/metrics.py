"""Retrieval metrics (api contract: ``ccr_fast.metrics``).

Conventions (docs/methods.md, "Common parts"):
    * ranks are 0-based as produced by :func:`ccr_fast.retrieval.target_ranks` (stable rule: ties go to the lower
      gallery index); recalls are percentages of ranks < k; MedR = floor(median(rank)) + 1 and MeanR = mean(rank)
      + 1 (1-based, the NRCCR / open_clip convention);
    * t2v (one relevant item per caption): AP = 1 / (rank + 1);
    * v2t: the best rank among the item's captions for R@k/MedR/MeanR; AP over all of the item's captions when
      their ranks among all captions are given: ``AP = (1/P) Σ_j j / (r_(j) + 1)`` with the P ranks sorted
      ascending (each rank already counts the other positives above it), else 1 / (best rank + 1);
    * SumR = sum of the six recalls, mR = SumR / 6.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor


ArrayLike = Union[Tensor, np.ndarray, Sequence[int]]

__all__ = ["recall_at_k", "retrieval_metrics", "evaluate_embeddings", "mean_rank_variance", "fuse_scores"]


def _as_numpy(name: str, x, *, ndim: Optional[int] = None) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like (tensor, ndarray or list), got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got a ragged or object array")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _ranks(name: str, ranks) -> np.ndarray:
    """0-based ranks as a non-empty 1-D int64 array (ValueError naming ``name`` otherwise)."""
    arr = _as_numpy(name, ranks, ndim=1)
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name} must hold integer ranks, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name} must hold 0-based ranks >= 0, got minimum {arr.min()}")
    return arr


def recall_at_k(ranks: ArrayLike, ks: Iterable[int] = (1, 5, 10)) -> Dict[int, float]:
    """Percent of queries whose 0-based rank is < k.

    Args:
        ranks: [N] 0-based ranks (tensor, ndarray or list). ks: cut-offs, each >= 1.

    Returns:
        ``{k: recall in percent}`` (float values, int keys).
    """
    r = _ranks("ranks", ranks)
    out = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must hold ints >= 1, got {k!r}")
        out[int(k)] = float(100.0 * np.mean(r < k))
    return out


def _average_precision(all_ranks: np.ndarray) -> float:
    r = np.sort(all_ranks)
    return float(np.mean(np.arange(1, r.size + 1) / (r + 1.0)))


def _per_item_ranks(v2t_all_ranks, n_items: int):
    """Normalise ``v2t_all_ranks`` (list of 1-D arrays, or a 2-D array padded with negatives) to a list."""
    if isinstance(v2t_all_ranks, (Tensor, np.ndarray)):
        arr = _as_numpy("v2t_all_ranks", v2t_all_ranks, ndim=2)
        items = [row[row >= 0] for row in arr]
    else:
        items = [_as_numpy("v2t_all_ranks item", x).reshape(-1) for x in v2t_all_ranks]
    if len(items) != n_items:
        raise ValueError(f"v2t_all_ranks must hold one rank array per v2t query ({n_items}), got {len(items)}")
    out = []
    for i, x in enumerate(items):
        out.append(_ranks(f"v2t_all_ranks[{i}]", x))
    return out


def retrieval_metrics(t2v_ranks: ArrayLike, v2t_ranks: ArrayLike, *, v2t_all_ranks=None) -> Dict[str, float]:
    """R@1/5/10, MedR, MeanR and mAP in both directions, SumR and mR from 0-based ranks.

    Args:
        t2v_ranks: [Q] rank of each caption's item among all items.
        v2t_ranks: [G] best rank among each item's captions (items without captions left out).
        v2t_all_ranks: optional, per v2t item the ranks of all its ground-truth captions among all captions
            (a list of 1-D arrays, or a [G, T] array padded with −1); used for v2t mAP.

    Returns:
        dict with keys ``t2v_r1 t2v_r5 t2v_r10 t2v_medr t2v_meanr t2v_map v2t_r1 v2t_r5 v2t_r10 v2t_medr
        v2t_meanr v2t_map sumr mr``: recalls, SumR and mR in percent, MedR/MeanR 1-based, mAP a fraction in [0, 1].
    """
    t2v = _ranks("t2v_ranks", t2v_ranks)
    v2t = _ranks("v2t_ranks", v2t_ranks)
    out: Dict[str, float] = {}
    for prefix, r in (("t2v", t2v), ("v2t", v2t)):
        rec = recall_at_k(r, (1, 5, 10))
        out[f"{prefix}_r1"], out[f"{prefix}_r5"], out[f"{prefix}_r10"] = rec[1], rec[5], rec[10]
        out[f"{prefix}_medr"] = float(np.floor(np.median(r)) + 1)
        out[f"{prefix}_meanr"] = float(np.mean(r) + 1)
        out[f"{prefix}_map"] = float(np.mean(1.0 / (r + 1.0)))
    if v2t_all_ranks is not None:
        items = _per_item_ranks(v2t_all_ranks, v2t.size)
        out["v2t_map"] = float(np.mean([_average_precision(x) for x in items]))
    out["sumr"] = float(sum(out[f"{p}_r{k}"] for p in ("t2v", "v2t") for k in (1, 5, 10)))
    out["mr"] = out["sumr"] / 6.0
    keys = ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr", "t2v_map",
            "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "v2t_meanr", "v2t_map", "sumr", "mr")
    return {k: out[k] for k in keys}


def evaluate_embeddings(text_emb: Tensor, visual_emb: Tensor, text_to_visual: ArrayLike, *,
                        backend: str = "auto") -> Dict[str, float]:
    """Full-gallery retrieval evaluation from embeddings via the fused :func:`ccr_fast.retrieval.target_ranks`.

    t2v: the rank of each caption's item among all items. v2t: for each item with at least one caption, the
    best rank among its captions (R@k, MedR, MeanR) and every caption's rank (mAP). No Q×G matrix is built. The
    ranks come from the evaluation's one ranking path, :func:`ccr_fast.eval.ranking.embedding_ranks`.

    Args:
        text_emb: [Q, d] caption embeddings. visual_emb: [G, d] item embeddings (same device and dtype).
        text_to_visual: [Q] integer item index of each caption, in [0, G).
        backend: op backend (``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"``, ``"torch"``).

    Returns:
        the dict of :func:`retrieval_metrics` (items without captions excluded from v2t).
    """
    if not isinstance(text_emb, Tensor) or not isinstance(visual_emb, Tensor):
        raise TypeError(f"text_emb and visual_emb must be torch.Tensors, got {type(text_emb).__name__} and "
                        f"{type(visual_emb).__name__}")
    if text_emb.dim() != 2 or visual_emb.dim() != 2:
        raise ValueError(f"text_emb and visual_emb must be 2-D [N, d], got shapes {tuple(text_emb.shape)} and "
                         f"{tuple(visual_emb.shape)}")
    n_text, n_vis = text_emb.shape[0], visual_emb.shape[0]
    t2v_idx = _as_numpy("text_to_visual", text_to_visual, ndim=1)
    if t2v_idx.shape[0] != n_text:
        raise ValueError(f"text_to_visual must have shape [Q={n_text}] (one item per caption), got {t2v_idx.shape}")
    if t2v_idx.size and not np.issubdtype(t2v_idx.dtype, np.integer):
        raise ValueError(f"text_to_visual must hold integer item indices, got dtype {t2v_idx.dtype}")
    t2v_idx = t2v_idx.astype(np.int64)
    if t2v_idx.size and (t2v_idx.min() < 0 or t2v_idx.max() >= n_vis):
        raise ValueError(f"text_to_visual must be item indices in [0, G={n_vis}), got values in "
                         f"[{t2v_idx.min()}, {t2v_idx.max()}]")
    from .eval.ranking import embedding_ranks  # the one ranking path (eval/ imports this module, not vice versa)

    return embedding_ranks(text_emb.detach(), visual_emb.detach(), t2v_idx, backend=backend).metrics()


def mean_rank_variance(ranks: ArrayLike) -> float:
    """CCR^k MRV: the mean over N instances of the population std (ddof=0) of their L per-language ranks.

    Args:
        ranks: [L, N] ranks (language × instance); 0- or 1-based alike (std is shift-invariant).

    Returns:
        the MRV as a float.
    """
    arr = _as_numpy("ranks", ranks, ndim=2)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"ranks must have shape [L>=1, N>=1], got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"ranks must be numeric, got dtype {arr.dtype}")
    return float(np.std(arr.astype(np.float64), axis=0, ddof=0).mean())


def _minmax(x):
    lo, hi = x.min(), x.max()
    span = hi - lo
    if float(span) == 0.0:
        return x * 0
    return (x - lo) / span


def fuse_scores(s1, s2, weight: float):
    """NRCCR translate-test fusion: ``weight · minmax(s1) + (1 − weight) · minmax(s2)``.

    Each matrix is min-max normalised over the whole matrix (not per row); a constant matrix normalises to zeros.

    Args:
        s1, s2: score matrices of one shape (tensors or ndarrays; a tensor result if either is a tensor).
        weight: mixing weight in [0, 1] (1 reproduces the ranking of ``s1``).

    Returns:
        the fused matrix (floating; the input's float dtype, float32 for integer tensors).
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating, np.integer)):
        raise TypeError(f"weight must be a float in [0, 1], got {type(weight).__name__}")
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    w = float(weight)
    if isinstance(s1, Tensor) or isinstance(s2, Tensor):
        a, b = torch.as_tensor(s1), torch.as_tensor(s2)
        if a.device != b.device:
            raise ValueError(f"s2 must be on the device of s1 ({a.device}), got {b.device}")
        a = a if a.is_floating_point() else a.float()
        b = b if b.is_floating_point() else b.float()
        finite = bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
    else:
        a, b = np.asarray(s1), np.asarray(s2)
        a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)
        b = b if np.issubdtype(b.dtype, np.floating) else b.astype(np.float64)
        finite = bool(np.isfinite(a).all()) and bool(np.isfinite(b).all())
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"s2 must have the shape of s1 {tuple(a.shape)}, got {tuple(b.shape)}")
    n_elem = a.size if isinstance(a, np.ndarray) else a.numel()
    if n_elem == 0:
        raise ValueError(f"s1 and s2 must be non-empty, got shape {tuple(a.shape)}")
    if not finite:
        raise ValueError("s1 and s2 must be finite (no NaN/Inf) for min-max normalisation")
    return w * _minmax(a) + (1.0 - w) * _minmax(b)
