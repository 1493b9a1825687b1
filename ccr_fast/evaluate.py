"""Evaluation: per-language retrieval metrics of a trained method (and ``evaluate(checkpoint)``).

For each evaluation set (one language: N captions, G visual items, ``text_to_visual``) the method encodes both
sides; the score matrix is the cosine ``T Vᵀ`` — fused with the MT-to-English query's scores for NRCCR
(``metrics.fuse_scores``; translate-test) or, for CCR^k, re-ranked: the top ``k_test`` ITC candidates of each
query (``retrieval.topk``) are re-scored by the ITM head and placed above every non-candidate. Ranks use the
stable order (ties → lower index first); metrics come from ``ccr_fast.metrics.retrieval_metrics``. When every
language has exactly one caption per item, MRV (``metrics.mean_rank_variance``, population std of the per-language
0-based ranks, averaged over items) is reported for text→visual (``mrv_t2v``), visual→text (``mrv_v2t``) and
their mean (``mrv``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import metrics as M
from . import retrieval as R


@dataclass
class EvalSet:
    """One language's retrieval test: ``texts[q]`` describes visual item ``text_to_visual[q]`` of ``features``.

    ``translations``: the MT of each text into English (NRCCR translate-test), or None.
    """

    lang: str
    texts: List[str]
    text_to_visual: np.ndarray
    features: np.ndarray
    translations: Optional[List[str]] = None


def eval_sets_from_data(data, languages: Sequence[str]) -> List[EvalSet]:
    """Eval sets of a :class:`ccr_fast.data.CCRData` for ``languages`` (all captions of each item)."""
    sets = []
    for lang in languages:
        if lang not in data.captions:
            raise ValueError(f"languages: {lang!r} not in the data (has {sorted(data.captions)})")
        texts, owner = [], []
        for i, caps in enumerate(data.captions[lang]):
            texts.extend(caps)
            owner.extend([i] * len(caps))
        trans = None
        tag = f"{lang}2en"
        if lang != "en" and tag in data.translations:
            trans = [t for caps in data.translations[tag] for t in caps]
            if len(trans) != len(texts):
                trans = None
        sets.append(EvalSet(lang, texts, np.asarray(owner, dtype=np.int64), np.asarray(data.features), trans))
    return sets


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based stable rank of ``targets[q]`` in row q of ``scores [Q, G]``: #{s > s_t} + #{s == s_t, j < t}."""
    st = scores.gather(1, targets.view(-1, 1))
    idx = torch.arange(scores.shape[1], device=scores.device).view(1, -1)
    return ((scores > st) | ((scores == st) & (idx < targets.view(-1, 1)))).sum(1)


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

    Returns ``(metrics, t2v_ranks [Q], v2t_best_ranks [G_with_captions])``. ``v2t_scores`` (visual×text) defaults
    to ``scores.T``.
    """
    t2v = ranks_from_scores(scores, text_to_visual)
    vs = scores.t() if v2t_scores is None else v2t_scores
    g = vs.shape[0]
    items = torch.unique(text_to_visual)
    all_ranks, best = [], []
    for item in items.tolist():
        caps = torch.nonzero(text_to_visual == item).view(-1)
        r = torch.stack([ranks_from_scores(vs[item:item + 1], c.view(1))[0] for c in caps])
        all_ranks.append(r)
        best.append(r.min())
    best_t = torch.stack(best)
    width = max(len(r) for r in all_ranks)
    padded = torch.full((len(all_ranks), width), -1, dtype=torch.long)
    for i, r in enumerate(all_ranks):
        padded[i, : len(r)] = r
    met = {k: float(v) for k, v in M.retrieval_metrics(t2v, best_t, v2t_all_ranks=padded).items()}
    met["t2v_sumr"] = met["t2v_r1"] + met["t2v_r5"] + met["t2v_r10"]  # NRCCR's validation score
    return met, t2v, best_t


@torch.no_grad()
def evaluate_method(method, eval_sets: Sequence[EvalSet], batch_size: int = 128) -> Dict[str, object]:
    """Metrics per language (nested under the language), their mean (top-level keys) and MRV where defined."""
    out: Dict[str, object] = {}
    t2v_all, v2t_all = [], []
    one_each = True
    for es in eval_sets:
        tv = torch.as_tensor(es.text_to_visual, dtype=torch.long)
        vis = method.encode_visual(es.features, batch_size=batch_size).cpu()
        txt = method.encode_text(es.texts, es.lang, batch_size=batch_size).cpu()
        scores = R.similarity(txt, vis)
        v2t = None
        w = getattr(method, "translate_test_weight", None)
        if w is not None and es.translations is not None:
            en = method.encode_text(es.translations, "en", batch_size=batch_size).cpu()
            scores = M.fuse_scores(R.similarity(en, vis), scores, w)
        if hasattr(method, "itm_scores") and method.cfg.ccrk.k_test > 0:
            tok = method.tokenize(es.texts)
            feats = torch.as_tensor(np.asarray(es.features, dtype=np.float32), device=method.device)

            def pair_fn(t_idx, v_idx):
                return method.itm_scores(tok, feats, t_idx.to(method.device), v_idx.to(method.device)).cpu()

            k = min(method.cfg.ccrk.k_test, len(es.texts), len(vis))
            _, cand_t2v = R.topk(txt, vis, min(k, len(vis)))
            _, cand_v2t = R.topk(vis, txt, min(k, len(es.texts)))
            v2t = rerank_scores(scores.t().contiguous(), cand_v2t, pair_fn, transpose=True)
            scores = rerank_scores(scores, cand_t2v, pair_fn)
        met, r_t2v, r_v2t = metrics_from_scores(scores, tv, v2t)
        out[es.lang] = met
        one_each = one_each and len(es.texts) == len(es.features) and bool((tv == torch.arange(len(tv))).all())
        t2v_all.append(r_t2v)
        v2t_all.append(r_v2t)
    langs = [es.lang for es in eval_sets]
    if langs:
        for key in out[langs[0]]:
            out[key] = float(np.mean([out[l][key] for l in langs]))
    if one_each and len(langs) > 1:
        out["mrv_t2v"] = float(M.mean_rank_variance(torch.stack(t2v_all).double()))
        out["mrv_v2t"] = float(M.mean_rank_variance(torch.stack(v2t_all).double()))
        out["mrv"] = 0.5 * (out["mrv_t2v"] + out["mrv_v2t"])
    return out


def format_metrics(metrics: Dict[str, object]) -> str:
    """A small text table: R@1/5/10 both directions, SumR, mR per language, then MRV."""
    langs = [k for k, v in metrics.items() if isinstance(v, dict)]
    cols = ["t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "sumr", "mr"]
    lines = ["lang  " + " ".join(f"{c:>8}" for c in cols)]
    for l in langs + (["mean"] if langs else []):
        src = metrics[l] if l != "mean" else metrics
        lines.append(f"{l:<5} " + " ".join(f"{src[c]:8.2f}" for c in cols))
    if "mrv" in metrics:
        lines.append(f"MRV (mean rank std over languages): t2v {metrics['mrv_t2v']:.2f}  v2t {metrics['mrv_v2t']:.2f}"
                     f"  mean {metrics['mrv']:.2f}")
    return "\n".join(lines)


def evaluate(checkpoint, data=None, **overrides) -> dict:
    """Load a checkpoint folder written by :func:`ccr_fast.train.train` and return its test metrics.

    Args:
        checkpoint: a checkpoint folder (``.../checkpoints/best``) or a run folder (its best, else last, is used).
        data: None (the configured data, test split), a :class:`ccr_fast.data.CCRData`, or a list of EvalSet.
        overrides: config overrides (e.g. ``languages=["de"]``, ``device="cpu"``).
    """
    from .train import load_checkpoint_model, build_eval_data

    method, cfg = load_checkpoint_model(checkpoint, **overrides)
    if data is None:
        sets = build_eval_data(cfg, cfg.eval.test_split)
    elif isinstance(data, (list, tuple)):
        sets = list(data)
    else:
        sets = eval_sets_from_data(data, cfg.languages)
    return evaluate_method(method, sets, cfg.eval.batch_size)
