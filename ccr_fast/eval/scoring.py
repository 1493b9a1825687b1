"""Method-level evaluation: a trained method on :class:`ccr_fast.data.EvalSet` s → the flat metrics dict.

One path for every method: :func:`evaluate_method` asks the method for its scorer (``Method.score(sets,
batch_size)``, default :func:`ccr_fast.eval.evaluate_encoders` on the method's encoders, with NRCCR's
translate-test fusion weight where the method has one). CCR^k with ``ccrk.k_test > 0`` scores in two stages
(:func:`rerank_results`): the top ``k_test`` ITC candidates of each query (``retrieval.topk``) are re-scored by
the ITM head and placed above every non-candidate (:func:`rerank_scores`); the re-scored matrix is ranked by
:func:`ccr_fast.eval.ranking.score_ranks` (the same stable rule and v2t target table as every other evaluation).

The returned (flat) metrics dict: ``{lang: {metric: float}}`` per language, the mean over languages of every
metric at the top level, ``"languages"``, and ``"mrv"``, ``"mrv_t2v"``, ``"mrv_v2t"`` when defined; for NRCCR the
fused metrics are the reported ones and the unfused ones stay under ``"direct"``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .. import retrieval as R
from ..data import EvalSet
from .evaluator import _mrv, encode_in_batches
from .ranking import score_ranks, stable_ranks

__all__ = ["EvalSet", "evaluate_method", "format_metrics", "ranks_from_scores", "rerank_scores",
           "metrics_from_scores", "rerank_results", "flat_metrics"]


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based stable rank of ``targets[q]`` in row q of ``scores [Q, G]``
    (:func:`ccr_fast.eval.ranking.stable_ranks`)."""
    return stable_ranks(scores, targets)


def rerank_scores(scores: torch.Tensor, cand: torch.Tensor, pair_scores_fn, transpose: bool = False) -> torch.Tensor:
    """Re-score each row's candidates ``cand [Q, k]`` with ``pair_scores_fn(row_idx, col_idx)``, above all others.

    Non-candidates keep their first-stage order, below every candidate. With ``transpose`` the rows are visual
    items and ``pair_scores_fn`` is still called as ``(text_idx, visual_idx)``.
    """
    k = cand.shape[1]
    rows = torch.arange(scores.shape[0]).repeat_interleave(k)
    cols = cand.reshape(-1).cpu()
    new = pair_scores_fn(cols, rows) if transpose else pair_scores_fn(rows, cols)
    out = scores - scores.max() - 1.0  # every non-candidate strictly below 0 - 1
    if new.numel():
        out[rows, cols] = new.to(out.dtype).cpu() - new.min().to(out.dtype).cpu()  # candidates >= 0
    return out


def metrics_from_scores(scores: torch.Tensor, text_to_visual: torch.Tensor, v2t_scores: Optional[torch.Tensor] = None):
    """Retrieval metrics and the rank arrays from a text×visual score matrix.

    Args:
        scores: ``[Q, G]`` text→visual scores.
        text_to_visual: ``[Q]`` int64 gallery row of each text.
        v2t_scores: ``[G, Q]`` visual→text scores (default ``scores.T``).
    Returns:
        ``(metrics, t2v_ranks [Q], v2t_best_ranks [G'])`` over the G' items that have captions.
    """
    r = score_ranks(scores, text_to_visual, v2t_scores)
    met = _add_t2v_sumr(r.metrics())
    return met, torch.from_numpy(r.t2v), torch.from_numpy(r.v2t_best)


def rerank_results(method, sets: Sequence[EvalSet], batch_size: int, k_test: int) -> dict:
    """CCR^k two-stage scorer: ITC top-k → ITM re-rank; a result dict shaped like ``evaluate_encoders``'."""
    galleries: Dict[int, torch.Tensor] = {}
    res: dict = {"languages": [s.lang for s in sets], "per_language": {}, "folds": 1}
    one_per_item = {}
    for es in sets:
        key = id(es.gallery)
        if key not in galleries:
            galleries[key] = encode_in_batches(method.encode_visual, es.gallery, batch_size, "encode_visual").cpu()
        vis = galleries[key]
        txt = encode_in_batches(method.encode_text, list(es.queries), batch_size, "encode_text").cpu()
        tok = method.tokenize(list(es.queries))
        feats = torch.as_tensor(np.asarray(es.gallery, dtype=np.float32), device=method.device)

        def pair_fn(t_idx, v_idx):
            return method.itm_scores(tok, feats, t_idx.to(method.device), v_idx.to(method.device)).cpu()

        k = max(1, min(int(k_test), len(es.queries), len(vis)))
        _, cand_t2v = R.topk(txt, vis, min(k, len(vis)))
        _, cand_v2t = R.topk(vis, txt, min(k, len(es.queries)))
        scores = R.similarity(txt, vis)
        v2t = rerank_scores(scores.t().contiguous(), cand_v2t, pair_fn, transpose=True)
        scores = rerank_scores(scores, cand_t2v, pair_fn)
        r = score_ranks(scores, es.query_item, v2t)
        res["per_language"][es.lang] = _add_t2v_sumr(r.metrics())
        if np.array_equal(np.sort(es.query_item), np.arange(len(vis))):
            one_per_item[es.lang] = (key, np.asarray(es.query_item), r.t2v, r.v2t_per_item())
    res["mean"] = {k: float(np.mean([m[k] for m in res["per_language"].values()]))
                   for k in next(iter(res["per_language"].values()))}
    mrv = _mrv(one_per_item, None)
    if mrv is not None:
        res["mrv"] = mrv
    return res


def _add_t2v_sumr(m: dict) -> dict:
    m = dict(m)
    m["t2v_sumr"] = m["t2v_r1"] + m["t2v_r5"] + m["t2v_r10"]  # NRCCR's validation score
    return m


def flat_metrics(results: dict) -> Dict[str, object]:
    """The train/evaluate metrics dict (see the module docstring) from an ``evaluate_encoders``-shaped result."""
    langs = list(results["languages"])
    fused = results.get("fused", {})
    out: Dict[str, object] = {"languages": langs}
    for lang in langs:
        out[lang] = _add_t2v_sumr(fused.get(lang, results["per_language"][lang]))
    for key in out[langs[0]]:
        out[key] = float(np.mean([out[lang][key] for lang in langs]))
    if fused:
        out["fusion_weight"] = results["fusion_weight"]
        out["direct"] = {lang: _add_t2v_sumr(m) for lang, m in results["per_language"].items()}
    if "mrv" in results:
        out["mrv"] = float(results["mrv"]["mean"])
        out["mrv_t2v"] = float(results["mrv"]["t2v"])
        out["mrv_v2t"] = float(results["mrv"]["v2t"])
    return out


@torch.no_grad()
def evaluate_method(method, eval_sets: Sequence[EvalSet], batch_size: int = 128,
                    k_test: Optional[int] = None) -> Dict[str, object]:
    """Metrics of ``method`` on ``eval_sets`` (one per language); see the module docstring for the keys.

    Args:
        method: a :class:`ccr_fast.methods.Method` (its ``score`` hook does the scoring).
        eval_sets: :class:`ccr_fast.data.EvalSet` s, one per language.
        batch_size: encoder batch size.
        k_test: re-rank depth for methods with a re-ranker (CCR^k; default its configured ``k_test``).
    """
    kw = {} if k_test is None else {"k_test": int(k_test)}
    return flat_metrics(method.score(list(eval_sets), batch_size, **kw))


def format_metrics(metrics: Dict[str, object]) -> str:
    """A small text table: R@1/5/10 both directions, SumR, mR per language, then MRV."""
    langs = metrics.get("languages") or [k for k, v in metrics.items() if isinstance(v, dict) and k != "direct"]
    cols = ["t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "sumr", "mr"]
    lines = ["lang  " + " ".join(f"{c:>8}" for c in cols)]
    for lang in list(langs) + (["mean"] if langs else []):
        src = metrics[lang] if lang != "mean" else metrics
        lines.append(f"{lang:<5} " + " ".join(f"{src[c]:8.2f}" for c in cols))
    if "direct" in metrics:
        lines.append(f"(translate-test fusion, weight {metrics['fusion_weight']:g} on the English-MT query, for "
                     f"{', '.join(metrics['direct'])})")
    if "mrv" in metrics:
        lines.append(f"MRV (mean rank std over languages): t2v {metrics['mrv_t2v']:.2f}  v2t {metrics['mrv_v2t']:.2f}"
                     f"  mean {metrics['mrv']:.2f}")
    return "\n".join(lines)
