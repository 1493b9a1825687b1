"""Evaluate a method's encoders on :class:`ccr_fast.data.EvalSet` s: per-language metrics, averages, MRV, fusion.

Protocol (docs/methods.md, "Common parts"): full-gallery ranking; t2v = rank of each caption's item; v2t = best rank among
the item's captions (mAP over all of them); stable ranks, ties to the lower index; metric keys as
:func:`ccr_fast.metrics.retrieval_metrics`. Every rank comes from :mod:`ccr_fast.eval.ranking` (the one ranking
path): :func:`~ccr_fast.eval.ranking.embedding_ranks` for embeddings, the v2t target table for fused ranks.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import metrics as M
from .fusion import fused_ranks
from .ranking import Ranks, caption_ranks, embedding_ranks

__all__ = ["encode_in_batches", "evaluate_encoders", "ranks_from_embeddings", "METRIC_KEYS"]

METRIC_KEYS = ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr", "t2v_map",
               "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "v2t_meanr", "v2t_map", "sumr", "mr")


def encode_in_batches(encode: Callable, inputs, batch_size: int, what: str) -> Tensor:
    """Run ``encode`` on consecutive slices of ``inputs`` under ``torch.no_grad()`` and concatenate.

    Args:
        encode: ``list[str] -> Tensor[n, d]`` or ``np.ndarray -> Tensor[n, d]``.
        inputs: a list of strings or an array whose first axis is the batch.
        batch_size: slice length (>= 1).
        what: name used in error messages (``"encode_text"``/``"encode_visual"``).

    Returns:
        ``[len(inputs), d]`` tensor on the encoder's device, detached.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    n = len(inputs)
    out: List[Tensor] = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            chunk = inputs[s: s + batch_size]
            emb = encode(chunk)
            if not isinstance(emb, Tensor):
                raise TypeError(f"{what}: expected it to return a torch.Tensor, got {type(emb).__name__}")
            if emb.dim() != 2 or emb.shape[0] != len(chunk):
                raise ValueError(f"{what}: expected a [{len(chunk)}, d] tensor for {len(chunk)} inputs, "
                                 f"got shape {tuple(emb.shape)}")
            if out and (emb.shape[1] != out[0].shape[1] or emb.device != out[0].device):
                raise ValueError(f"{what}: expected d={out[0].shape[1]} on {out[0].device} in every batch, got "
                                 f"{tuple(emb.shape)} on {emb.device}")
            out.append(emb.detach())
    if not out:
        raise ValueError(f"{what}: no inputs to encode")
    return torch.cat(out)


def ranks_from_embeddings(text: Tensor, visual: Tensor, query_item: np.ndarray, *, backend: str = "auto"):
    """t2v rank per query and best v2t rank per item (:func:`ccr_fast.eval.ranking.embedding_ranks`).

    Returns:
        ``(t2v [Q] int64, v2t [G] int64)`` numpy; ``v2t`` is −1 for items without captions.
    """
    r = embedding_ranks(text, visual, query_item, backend=backend)
    return r.t2v, r.v2t_per_item()


def _fused_ranks(text, text_mt, visual, query_item, weight) -> Ranks:
    """Ranks under translate-test fusion (streamed, see :mod:`ccr_fast.eval.fusion`)."""
    qi = np.asarray(query_item, dtype=np.int64)
    t2v, v2t_caption = fused_ranks(text, text_mt, visual, torch.from_numpy(qi).to(text.device), weight)
    return caption_ranks(t2v, v2t_caption, qi, visual.shape[0])


def _mean(dicts: Sequence[Dict[str, float]]) -> Dict[str, float]:
    return {k: float(np.mean([d[k] for d in dicts])) for k in dicts[0]}


def _folds(n_items: int, folds: int) -> List[np.ndarray]:
    if folds < 1 or folds > n_items:
        raise ValueError(f"folds: expected 1..{n_items} (gallery items), got {folds}")
    return np.array_split(np.arange(n_items), folds)


def evaluate_encoders(encode_text: Callable, encode_visual: Callable, eval_sets: Sequence, *,
                      fusion_weight: Optional[float] = None, batch_size: int = 256, backend: str = "auto",
                      return_ranks: bool = False, folds: int = 1, mrv_langs: Optional[Sequence[str]] = None,
                      normalize: bool = False) -> dict:
    """Encode every eval set in batches and compute retrieval metrics, averages, MRV and translate-test fusion.

    Args:
        encode_text: ``list[str] -> Tensor[n, d]`` (the method's text encoder, embeddings L2-normalised).
        encode_visual: ``np.ndarray [n, ...] -> Tensor[n, d]`` (the visual encoder).
        eval_sets: :class:`ccr_fast.data.EvalSet` s (one per language); sets sharing one gallery array (same
            object) have it encoded once.
        fusion_weight: when given, each set with ``queries_mt`` is also scored by NRCCR fusion
            ``w·minmax(S_mt) + (1−w)·minmax(S_target)`` (``w`` = weight of the English-MT query), streamed in row
            blocks; results under ``"fused"``.
        batch_size: encoder batch size.
        backend: op backend of the fused rank counter (:func:`ccr_fast.eval.ranking.embedding_ranks`).
        return_ranks: add ``"ranks"``: per language ``{"t2v": [Q], "v2t": [G] (−1 = no caption)}`` int64 arrays
            (and ``"fused"`` ranks when fusing).
        folds: > 1 evaluates COCO-style: the gallery is cut into ``folds`` contiguous parts, each scored against its
            own items' captions, and metrics are averaged over folds (ranks are then within-fold).
        mrv_langs: languages for MRV (default: every language whose set has exactly one caption per item on a
            common gallery). MRV needs at least two such languages.
        normalize: L2-normalise both embeddings before scoring (off: the encoders' outputs are used as given).

    Returns:
        dict with ``"languages"``, ``"per_language"`` {lang: metrics}, ``"mean"`` (average over languages of each
        metric), optionally ``"fused"`` {lang: metrics}, ``"fused_mean"``, ``"fusion_weight"``, ``"mrv"``
        ``{"t2v", "v2t", "mean", "languages", "n"}`` (population-std MRV of 0-based ranks, CCR^k), ``"folds"``
        and ``"ranks"``.
    """
    sets = list(eval_sets)
    if not sets:
        raise ValueError("eval_sets: expected at least one EvalSet, got none")
    langs = [s.lang for s in sets]
    if len(set(langs)) != len(langs):
        raise ValueError(f"eval_sets: expected one set per language, got languages {langs}")
    if fusion_weight is not None and not 0.0 <= float(fusion_weight) <= 1.0:
        raise ValueError(f"fusion_weight: expected a float in [0, 1] or None, got {fusion_weight}")
    norm = (lambda x: torch.nn.functional.normalize(x.float(), dim=-1)) if normalize else (lambda x: x)

    galleries: Dict[int, Tensor] = {}
    results: dict = {"languages": langs, "per_language": {}, "folds": folds}
    fused: Dict[str, dict] = {}
    ranks: Dict[str, dict] = {}
    one_per_item: Dict[str, np.ndarray] = {}
    for es in sets:
        key = id(es.gallery)
        if key not in galleries:
            galleries[key] = norm(encode_in_batches(encode_visual, es.gallery, batch_size, "encode_visual"))
        v = galleries[key]
        t = norm(encode_in_batches(encode_text, list(es.queries), batch_size, "encode_text"))
        if t.shape[1] != v.shape[1] or t.device != v.device:
            raise ValueError(f"encode_text: expected d={v.shape[1]} on {v.device} (as encode_visual), got "
                             f"{tuple(t.shape)} on {t.device}")
        tm = None
        if fusion_weight is not None and es.queries_mt is not None:
            tm = norm(encode_in_batches(encode_text, list(es.queries_mt), batch_size, "encode_text"))
        qi = np.asarray(es.query_item, dtype=np.int64)
        fold_metrics, fold_fused = [], []
        t2v_all = np.full(len(qi), -1, dtype=np.int64)
        v2t_best = np.full(v.shape[0], -1, dtype=np.int64)
        f_t2v, f_v2t = t2v_all.copy(), v2t_best.copy()
        one_caption_each = np.array_equal(np.sort(qi), np.arange(v.shape[0]))
        need_ranks = return_ranks or (one_caption_each and (mrv_langs is None or es.lang in mrv_langs))
        for part in _folds(v.shape[0], folds):
            sel = np.flatnonzero((qi >= part[0]) & (qi <= part[-1]))
            if sel.size == 0:
                continue
            sel_t = torch.from_numpy(sel).to(t.device)
            vp, tp, qp = v[part[0]: part[-1] + 1], t[sel_t], qi[sel] - part[0]
            r = embedding_ranks(tp, vp, qp, backend=backend)
            fold_metrics.append(r.metrics())
            if need_ranks:
                t2v_all[sel], v2t_best[part] = r.t2v, r.v2t_per_item()
            if tm is not None:
                r = _fused_ranks(tp, tm[sel_t], vp, qp, float(fusion_weight))
                fold_fused.append(r.metrics())
                f_t2v[sel], f_v2t[part] = r.t2v, r.v2t_per_item()
        results["per_language"][es.lang] = _mean(fold_metrics)
        if tm is not None:
            fused[es.lang] = _mean(fold_fused)
        if return_ranks:
            ranks[es.lang] = {"t2v": t2v_all, "v2t": v2t_best}
            if tm is not None:
                ranks[es.lang]["fused_t2v"], ranks[es.lang]["fused_v2t"] = f_t2v, f_v2t
        if one_caption_each and need_ranks:
            one_per_item[es.lang] = (key, qi, t2v_all, v2t_best)
    results["mean"] = _mean(list(results["per_language"].values()))
    if fusion_weight is not None:
        results["fusion_weight"] = float(fusion_weight)
        if fused:
            results["fused"] = fused
            results["fused_mean"] = _mean(list(fused.values()))
    mrv = _mrv(one_per_item, mrv_langs)
    if mrv is not None:
        results["mrv"] = mrv
    if return_ranks:
        results["ranks"] = ranks
    return results


def _mrv(one_per_item: dict, mrv_langs: Optional[Sequence[str]]) -> Optional[dict]:
    """MRV over languages with one caption per item on a common gallery (``None`` when fewer than two)."""
    if mrv_langs is not None:
        missing = [lang for lang in mrv_langs if lang not in one_per_item]
        if missing:
            raise ValueError(f"mrv_langs: {missing} do not have exactly one caption per gallery item")
        langs = list(mrv_langs)
    else:
        langs = list(one_per_item)
    if len(langs) < 2:
        return None
    galleries = {one_per_item[lang][0] for lang in langs}
    if len(galleries) != 1:
        if mrv_langs is not None:
            raise ValueError(f"mrv_langs: {langs} are evaluated on different galleries")
        return None
    t2v_rows, v2t_rows = [], []
    for lang in langs:
        _, qi, t2v, v2t = one_per_item[lang]
        per_item = np.empty_like(t2v)
        per_item[qi] = t2v  # instance n = gallery item n
        t2v_rows.append(per_item)
        v2t_rows.append(v2t)
    m_t2v = M.mean_rank_variance(np.stack(t2v_rows))
    m_v2t = M.mean_rank_variance(np.stack(v2t_rows))
    return {"t2v": m_t2v, "v2t": m_v2t, "mean": (m_t2v + m_v2t) / 2, "languages": langs, "n": len(t2v_rows[0])}
