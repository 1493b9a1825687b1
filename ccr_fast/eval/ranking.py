"""The one ranking path of the evaluation: stable ranks, the v2t target table, and the metrics built from them.

Rule (docs/methods.md, "Common parts"): the 0-based rank of a target ``t`` in a row of scores ``s`` is
``#{c : s_c > s_t} + #{c : s_c == s_t and c < t}`` (ties go to the lower index). Two inputs reach it:

* embeddings: :func:`embedding_ranks` streams ``text @ visualᵀ`` through the op engine's fused rank counter
  (:func:`ccr_fast.retrieval.target_ranks`'s op, no Q×G matrix) in both directions;
* a materialised score matrix or block (CCR^k's ITM re-rank, translate-test fusion blocks): :func:`stable_ranks`.

The v2t direction always uses one table, :func:`v2t_targets`: row r lists the captions of the r-th item that has
captions (ascending caption index, padded with −1). A caption's v2t rank counts the item's other captions above it,
so the best rank is the first hit and mAP uses every rank. :class:`Ranks` carries the result of either path and
turns it into :func:`ccr_fast.metrics.retrieval_metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..metrics import retrieval_metrics

_BLOCK = 1 << 24  # elements of one comparison block in stable_ranks

__all__ = ["Ranks", "v2t_targets", "stable_ranks", "embedding_ranks", "score_ranks", "caption_ranks"]


def v2t_targets(query_item, n_items: int) -> Tuple[np.ndarray, np.ndarray]:
    """The v2t target table.

    Args:
        query_item: ``[Q]`` int gallery row of each caption, in ``[0, n_items)``.
        n_items: gallery size G.

    Returns:
        ``(items [G'] int64, targets [G', T] int64)``: the G' items with at least one caption (ascending) and, per
        item, its caption indices in ascending order padded with −1 (T = the largest caption count, at least 1).
    """
    qi = np.asarray(query_item, dtype=np.int64).reshape(-1)
    counts = np.bincount(qi, minlength=n_items)
    items = np.flatnonzero(counts)
    order = np.argsort(qi, kind="stable")  # captions grouped by item, ascending within each item
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(qi.size) - starts[qi[order]]
    row_of_item = np.full(n_items, -1, dtype=np.int64)
    row_of_item[items] = np.arange(items.size)
    targets = np.full((items.size, max(int(counts.max()) if counts.size else 1, 1)), -1, dtype=np.int64)
    targets[row_of_item[qi[order]], pos] = order
    return items, targets


def stable_ranks(scores: Tensor, targets: Tensor, *, target_scores: Optional[Tensor] = None,
                 start: int = 0) -> Tensor:
    """0-based stable rank of each row's target(s) among the columns of ``scores`` (the rule of the module).

    Args:
        scores: ``[R, C]`` scores; column j has index ``start + j`` (a block of a wider row: counts of column
            blocks add up to the rank in the whole row).
        targets: ``[R]`` or ``[R, T]`` int64 target indices (−1 = padding; the rank there is −1). A target may lie
            outside the block when ``target_scores`` is given.
        target_scores: the targets' scores, same shape as ``targets`` (default: read from ``scores``).
        start: index of the first column.

    Returns:
        ranks of ``targets``' shape, int64 (the count within this block).
    """
    one = targets.dim() == 1
    tg = targets.view(-1, 1) if one else targets
    valid = tg >= 0
    if target_scores is None:
        st = scores.gather(1, (tg - start).clamp(0, scores.shape[1] - 1))
    else:
        st = target_scores.view(-1, 1) if one else target_scores
    idx = torch.arange(start, start + scores.shape[1], device=scores.device).view(1, 1, -1)
    ranks = torch.empty_like(tg)
    step = max(1, _BLOCK // max(1, tg.shape[1] * scores.shape[1]))  # bounded [rows, T, C] temporaries
    for r in range(0, tg.shape[0], step):
        s, t, v = scores[r: r + step].unsqueeze(1), st[r: r + step].unsqueeze(-1), tg[r: r + step].unsqueeze(-1)
        above = ((s > t) | ((s == t) & (idx < v))).sum(-1)
        ranks[r: r + step] = torch.where(valid[r: r + step], above, torch.full_like(above, -1))
    return ranks.view(-1) if one else ranks


@dataclass
class Ranks:
    """Ranks of one evaluation in both directions.

    Attributes:
        t2v: ``[Q]`` rank of each caption's item among the G items.
        items: ``[G']`` the items with captions (rows of :func:`v2t_targets`).
        v2t_all: ``[G', T]`` rank of each of the item's captions among all Q captions (−1 padded; table order).
        n_items: G.
    """

    t2v: np.ndarray
    items: np.ndarray
    v2t_all: np.ndarray
    n_items: int

    @property
    def v2t_best(self) -> np.ndarray:
        """``[G']`` best rank among each item's captions."""
        return np.where(self.v2t_all >= 0, self.v2t_all, np.iinfo(np.int64).max).min(1)

    def v2t_per_item(self) -> np.ndarray:
        """``[G]`` best v2t rank per gallery row, −1 for items without captions."""
        out = np.full(self.n_items, -1, dtype=np.int64)
        out[self.items] = self.v2t_best
        return out

    def metrics(self) -> Dict[str, float]:
        """:func:`ccr_fast.metrics.retrieval_metrics` of these ranks (v2t mAP over every caption of the item)."""
        return retrieval_metrics(self.t2v, self.v2t_best, v2t_all_ranks=self.v2t_all)


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.int64, copy=False)


def embedding_ranks(text: Tensor, visual: Tensor, query_item, *, backend: str = "auto") -> Ranks:
    """Both directions from embeddings through the fused rank counter (no Q×G matrix is formed).

    Args:
        text: ``[Q, d]`` caption embeddings. visual: ``[G, d]`` item embeddings (same device and dtype).
        query_item: ``[Q]`` int gallery row of each caption.
        backend: op backend (``"auto"``, ``"blas"``, ``"cuda"``, ``"triton"``, ``"cpu"``, ``"torch"``).
    """
    from ..ops.ranks import count_target_ranks

    qi = np.asarray(query_item.cpu() if isinstance(query_item, Tensor) else query_item, dtype=np.int64)
    dev = text.device
    t2v = count_target_ranks(text, visual, torch.from_numpy(qi).to(dev), backend=backend)
    items, targets = v2t_targets(qi, visual.shape[0])
    _, all_ranks = count_target_ranks(visual[torch.from_numpy(items).to(visual.device)], text,
                                      torch.from_numpy(targets).to(dev), backend=backend, return_all=True)
    return Ranks(_np(t2v), items, _np(all_ranks), int(visual.shape[0]))


def score_ranks(scores: Tensor, query_item, v2t_scores: Optional[Tensor] = None) -> Ranks:
    """Both directions from a materialised text×visual score matrix.

    Args:
        scores: ``[Q, G]`` text→visual scores.
        query_item: ``[Q]`` int gallery row of each caption.
        v2t_scores: ``[G, Q]`` visual→text scores when they differ from ``scores.T`` (a re-ranked matrix).
    """
    qi = np.asarray(query_item.cpu() if isinstance(query_item, Tensor) else query_item, dtype=np.int64)
    t2v = stable_ranks(scores, torch.from_numpy(qi).to(scores.device))
    vs = scores.t() if v2t_scores is None else v2t_scores
    items, targets = v2t_targets(qi, vs.shape[0])
    all_ranks = stable_ranks(vs[torch.from_numpy(items).to(vs.device)], torch.from_numpy(targets).to(vs.device))
    return Ranks(_np(t2v), items, _np(all_ranks), int(vs.shape[0]))


def caption_ranks(t2v, v2t_caption, query_item, n_items: int) -> Ranks:
    """:class:`Ranks` from per-caption ranks: ``v2t_caption[q]`` = rank of caption q among all captions for its
    item (e.g. :func:`ccr_fast.eval.fused_ranks`), placed into the v2t target table."""
    qi = np.asarray(query_item, dtype=np.int64)
    v2t = np.asarray(v2t_caption.cpu() if isinstance(v2t_caption, Tensor) else v2t_caption, dtype=np.int64)
    items, targets = v2t_targets(qi, n_items)
    all_ranks = np.where(targets >= 0, v2t[np.maximum(targets, 0)], -1)
    t2v = np.asarray(t2v.cpu() if isinstance(t2v, Tensor) else t2v, dtype=np.int64)
    return Ranks(t2v, items, all_ranks, int(n_items))
