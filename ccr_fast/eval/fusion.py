"""NRCCR translate-test fusion, streamed: ranks of ``w·minmax(S_mt) + (1−w)·minmax(S_tgt)`` in row blocks.

``S_tgt = T Vᵀ`` (target-language queries) and ``S_mt = T_mt Vᵀ`` (their MT into English) are Q×G. Each is
min-max normalised over the *whole* matrix (as :func:`ccr_fast.metrics.fuse_scores`), so a first pass over row
blocks finds the global min/max; later passes rebuild each block with the same arithmetic and count ranks.
Peak memory is one block of ``block_rows × max(G, Q)`` scores, never the Q×G matrix.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .ranking import stable_ranks

__all__ = ["fused_ranks", "select_fusion_weight"]

_BLOCK_ELEMS = 1 << 22  # ~16 MB of fp32 scores per block


def _check(name: str, x: Tensor, ref: Optional[Tensor] = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D tensor [n, d], got shape {tuple(x.shape)}")
    if ref is not None and (x.shape[1] != ref.shape[1] or x.device != ref.device):
        raise ValueError(f"{name}: expected d={ref.shape[1]} on {ref.device}, got shape {tuple(x.shape)} on {x.device}")


def fused_ranks(text: Tensor, text_mt: Tensor, visual: Tensor, query_item: Tensor, weight: float, *,
                block_rows: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Stable 0-based ranks under NRCCR's fused scores, both directions.

    Args:
        text: ``[Q, d]`` target-language query embeddings.
        text_mt: ``[Q, d]`` embeddings of their MT into English (row q translates row q).
        visual: ``[G, d]`` gallery embeddings (same device as the texts).
        query_item: ``[Q]`` int64 gallery row of each query.
        weight: weight of the MT-query scores in [0, 1]; 0 reproduces the target-only ranking, 1 the MT-only one.
        block_rows: query rows per block (default: about 4M scores per block).

    Returns:
        ``(t2v [Q], v2t_all [Q])`` int64 on the input device: ``t2v[q]`` = rank of item ``query_item[q]`` in
        row q; ``v2t_all[q]`` = rank of caption q among all Q captions for its item's column. Ties go to the lower
        index (the :func:`ccr_fast.retrieval.target_ranks` rule).

    Notes:
        Scores are computed in float32 (float64 for float64 inputs); a constant matrix normalises to zeros.
    """
    _check("text", text)
    _check("text_mt", text_mt, text)
    _check("visual", visual, text)
    if text_mt.shape[0] != text.shape[0]:
        raise ValueError(f"text_mt: expected {text.shape[0]} rows (one per query), got {text_mt.shape[0]}")
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight: expected a float in [0, 1], got {weight}")
    q, g = text.shape[0], visual.shape[0]
    item = torch.as_tensor(query_item, dtype=torch.int64, device=text.device).reshape(-1)
    if item.shape[0] != q or int(item.min()) < 0 or int(item.max()) >= g:
        raise ValueError(f"query_item: expected [{q}] ints in [0, {g}), got shape {tuple(item.shape)}")
    dt = torch.float64 if text.dtype == torch.float64 else torch.float32
    t, tm, v = text.to(dt), text_mt.to(dt), visual.to(dt)
    rows = block_rows or max(1, _BLOCK_ELEMS // max(g, q))
    w = float(weight)

    lo1 = lo2 = float("inf")
    hi1 = hi2 = float("-inf")
    for s in range(0, q, rows):
        s1, s2 = t[s: s + rows] @ v.T, tm[s: s + rows] @ v.T
        lo1, hi1 = min(lo1, float(s1.min())), max(hi1, float(s1.max()))
        lo2, hi2 = min(lo2, float(s2.min())), max(hi2, float(s2.max()))
    span1, span2 = hi1 - lo1, hi2 - lo2

    def block(s: int) -> Tensor:
        s1, s2 = t[s: s + rows] @ v.T, tm[s: s + rows] @ v.T
        n1 = (s1 - lo1) / span1 if span1 > 0 else torch.zeros_like(s1)
        n2 = (s2 - lo2) / span2 if span2 > 0 else torch.zeros_like(s2)
        return w * n2 + (1.0 - w) * n1

    t2v = torch.empty(q, dtype=torch.int64, device=t.device)
    target = torch.empty(q, dtype=dt, device=t.device)
    for s in range(0, q, rows):
        f = block(s)
        it = item[s: s + rows]
        ft = f.gather(1, it[:, None])
        target[s: s + f.shape[0]] = ft[:, 0]
        t2v[s: s + f.shape[0]] = stable_ranks(f, it, target_scores=ft[:, 0])

    # v2t: caption p competes in column item[p] against every caption q' (rows), ties to the lower row index.
    v2t = torch.zeros(q, dtype=torch.int64, device=t.device)
    pidx = torch.arange(q, device=t.device)
    for s in range(0, q, rows):
        fcol = block(s)[:, item]  # [rows, Q]: score of row q' in the column of caption p
        v2t += stable_ranks(fcol.t(), pidx, target_scores=target, start=s)  # rows s.. of every caption's column
    return t2v, v2t


def select_fusion_weight(encode_text, encode_visual, val_sets, test_sets, weights=(0.0, 0.2, 0.5, 0.8, 1.0), *,
                         metric: str = "sumr", batch_size: int = 256) -> dict:
    """Translate-test fusion sweep with separate validation and test weights, per language.

    Every query, its MT and every gallery is encoded once; each weight then scores the sets through
    :func:`ccr_fast.eval.evaluate_encoders` (``fusion_weight=w``). Per language the weight with the best
    validation ``metric`` is chosen (ties: the smaller w) and the test metrics of *every* weight are reported too.

    Args:
        encode_text, encode_visual: the method's encoders (as :func:`ccr_fast.eval.evaluate_encoders`).
        val_sets, test_sets: :class:`ccr_fast.data.EvalSet` s of the same languages, each with ``queries_mt``.
        weights: fusion weights in [0, 1] (w = weight of the English-MT query; 0 = target query only).
        metric: the selection metric (a key of the per-language metrics, higher is better).

    Returns:
        ``{"weights": [...], "metric": metric, "languages": {lang: {"val": {w: metrics}, "test": {w: metrics},
        "val_weight": w*, "test_at_val_weight": metrics}}}`` (weights as strings ``"0.2"`` for JSON).
    """
    from .evaluator import evaluate_encoders

    weights = [float(w) for w in weights]
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"weights: expected a non-empty list of floats in [0, 1], got {weights}")
    langs = [s.lang for s in val_sets]
    if sorted(langs) != sorted(s.lang for s in test_sets):
        raise ValueError(f"test_sets: expected the languages of val_sets {langs}, got {[s.lang for s in test_sets]}")
    for s in list(val_sets) + list(test_sets):
        if s.queries_mt is None:
            raise ValueError(f"val_sets/test_sets: the {s.lang!r} set of {s.name!r} has no queries_mt (MT to English)")
    memo: dict = {}

    def cached(encode, kind):
        def f(chunk):
            key = (kind, tuple(chunk)) if kind == "text" else (kind, chunk.shape, hash(chunk.tobytes()))
            if key not in memo:
                memo[key] = encode(chunk)
            return memo[key]
        return f

    enc_t, enc_v = cached(encode_text, "text"), cached(encode_visual, "visual")
    big = max(len(s.queries) for s in list(val_sets) + list(test_sets)) + batch_size
    out = {"weights": weights, "metric": metric, "languages": {}}
    res = {split: {w: evaluate_encoders(enc_t, enc_v, sets, fusion_weight=w, batch_size=big)
                   for w in weights} for split, sets in (("val", val_sets), ("test", test_sets))}
    for lang in langs:
        rec = {split: {f"{w:g}": res[split][w]["fused"][lang] for w in weights} for split in ("val", "test")}
        best = max(weights, key=lambda w: (rec["val"][f"{w:g}"][metric], -w))
        rec["val_weight"] = best
        rec["test_at_val_weight"] = rec["test"][f"{best:g}"]
        out["languages"][lang] = rec
    return out
