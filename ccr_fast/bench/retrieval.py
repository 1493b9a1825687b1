"""Retrieval benchmark: streaming top-k and target-rank counting vs gallery size, and an end-to-end evaluation.

Providers:

* ``ccr_fast[<backend>]`` — ``ccr_fast.retrieval.topk`` / ``target_ranks`` / ``ccr_fast.metrics.evaluate_embeddings``
  with ``backend=`` each usable backend of the device;
* ``torch_chunked`` — the plain-torch way: query chunks of ``Q_c`` rows (``Q_c·G ≤ 2^24`` scores), ``mm`` then
  ``torch.topk`` (top-k) or a compare-and-count against the target's score with the index tie rule (ranks);
* ``faiss_flat_ip`` — ``faiss.IndexFlatIP`` exact inner-product search (top-k only, fp32, CPU; the index build is
  setup and not timed) when faiss is importable;
* ``gemm_floor`` (top-k only, CPU) — the ``Q×G`` scores in 1k-row chunks through the blas backend's chosen BLAS
  and nothing else: the speed floor of any exact search that does this GEMM;
* ``torch_full`` (end-to-end evaluation only) — the whole ``Q×G`` score matrix, ranks by comparison with the
  targets' scores, then ``ccr_fast.metrics.retrieval_metrics``.

Exactness: every ``ccr_fast[...]`` top-k / rank is the float64 order with ties to the lower index (fp32 inputs are
scored by the backend's fast GEMM, bf16 on AMX CPUs, and settled in float64: docs/exactness.md); ``torch_chunked``
and ``faiss_flat_ip`` return their fp32 order. benchmarks/side_by_side.py checks the timed answers against the
float64 order.

FLOP convention: one similarity GEMM, ``2·Q·G·d``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

from . import harness
from .losses import DTYPES

CHUNK_SCORES = 1 << 24


def _chunk_rows(q: int, g: int) -> int:
    return max(1, min(q, CHUNK_SCORES // max(g, 1)))


def torch_chunked_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products per query by chunked ``mm`` + ``torch.topk`` (ties in torch's own order)."""
    step = _chunk_rows(queries.shape[0], gallery.shape[0])
    vals, idxs = [], []
    for s in range(0, queries.shape[0], step):
        v, i = torch.topk(queries[s:s + step] @ gallery.T, k, dim=1)
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals), torch.cat(idxs)


def torch_chunked_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's target: ``#{s > s_t} + #{s == s_t and index < t}``, by chunked ``mm``."""
    step = _chunk_rows(queries.shape[0], gallery.shape[0])
    cols = torch.arange(gallery.shape[0], device=gallery.device)
    out = []
    for s in range(0, queries.shape[0], step):
        scores = queries[s:s + step] @ gallery.T
        t = targets[s:s + step]
        st = scores.gather(1, t[:, None])
        better = (scores > st) | ((scores == st) & (cols[None, :] < t[:, None]))
        out.append(better.sum(dim=1))
    return torch.cat(out)


def full_matrix_ranks(text: torch.Tensor, visual: torch.Tensor, text_to_visual: torch.Tensor):
    """t2v and v2t ranks from the whole score matrix (the reference of the end-to-end evaluation).

    Args:
        text: ``[Q, d]`` caption embeddings. visual: ``[G, d]`` item embeddings.
        text_to_visual: int64 ``[Q]`` item of each caption.

    Returns:
        ``(t2v[Q], v2t[G'], v2t_all[G', T])``, 0-based with the index tie rule: each caption's item rank among
        all items; for each captioned item (ascending), the best rank of its captions among all captions, and
        every caption's rank (captions ascending, padded with -1).
    """
    scores = text @ visual.T  # [Q, G], materialised
    q, g = scores.shape
    t2v = text_to_visual
    st = scores.gather(1, t2v[:, None])  # [Q, 1]: each caption's score with its own item
    cols = torch.arange(g, device=scores.device)
    t2v_rank = ((scores > st) | ((scores == st) & (cols[None, :] < t2v[:, None]))).sum(1)
    rows = torch.arange(q, device=scores.device)
    cap_rank = torch.empty(q, dtype=torch.int64, device=scores.device)
    step = max(1, CHUNK_SCORES // q)
    for s in range(0, q, step):  # rank of caption c in the column of its item, among all captions
        c = rows[s:s + step]
        col = scores[:, t2v[c]]  # [Q, n]
        sc = st[c, 0]
        cap_rank[s:s + step] = ((col > sc) | ((col == sc) & (rows[:, None] < c[None, :]))).sum(0)
    items, inv, counts = torch.unique(t2v, return_inverse=True, return_counts=True)
    best = torch.full((items.numel(),), q, dtype=torch.int64, device=scores.device)
    best = best.scatter_reduce(0, inv, cap_rank, reduce="amin")
    order = torch.argsort(inv, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(order)
    pos[order] = torch.arange(q, device=scores.device) - starts[inv[order]]
    padded = torch.full((items.numel(), int(counts.max())), -1, dtype=torch.int64, device=scores.device)
    padded[inv, pos] = cap_rank
    return t2v_rank, best, padded


# ---------------------------------------------------------------------------------------------- providers
def topk_providers(q, g, k, device, backends) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    providers, skipped = {}, {}
    from ccr_fast import retrieval

    api = getattr(retrieval, "topk", None)
    for be in backends:
        if api is None:
            skipped[f"ccr_fast[{be}]"] = "ccr_fast.retrieval.topk is not available yet"
        else:
            providers[f"ccr_fast[{be}]"] = lambda be=be: api(q, g, k, backend=be)
    providers["torch_chunked"] = lambda: torch_chunked_topk(q, g, k)
    reason = _faiss_reason(device, q.dtype)
    if reason is None:
        import faiss  # type: ignore[import-not-found]

        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g.numpy())
        qn = q.numpy()
        providers["faiss_flat_ip"] = lambda: index.search(qn, k)
    else:
        skipped["faiss_flat_ip"] = reason
    floor = _blas_floor(q, g)
    if floor is not None:
        providers["gemm_floor"] = floor
    return providers, skipped


def _blas_floor(q, g):
    """Q×G scores in chunks of 1k query rows through the blas backend's CPU GEMM (one chunk buffer), or None."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return None
    try:
        from ccr_fast.backends.blas import _gemm
        _gemm.ensure()
    except (ImportError, RuntimeError):
        return None
    qc, gc = q.contiguous(), g.contiguous()
    rows = min(qc.shape[0], 1000)
    chunk = torch.empty(rows, gc.shape[0], dtype=qc.dtype)

    def run():
        for q0 in range(0, qc.shape[0], rows):
            part = qc[q0:q0 + rows]
            _gemm.mm(part, gc, trans_b=True, out=chunk[:part.shape[0]])

    return run


def _faiss_reason(device, dtype):
    try:
        import faiss  # type: ignore[import-not-found]  # noqa: F401
    except Exception as exc:
        return f"faiss not importable ({type(exc).__name__}: {exc})"
    if device.type != "cpu":
        return "faiss-cpu only (no GPU faiss wheel for this CUDA)"
    if dtype != torch.float32:
        return "faiss flat search is fp32 only"
    return None


def ranks_providers(q, g, targets, backends) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    providers, skipped = {}, {}
    from ccr_fast import retrieval

    api = getattr(retrieval, "target_ranks", None)
    for be in backends:
        if api is None:
            skipped[f"ccr_fast[{be}]"] = "ccr_fast.retrieval.target_ranks is not available yet"
        else:
            providers[f"ccr_fast[{be}]"] = lambda be=be: api(q, g, targets, backend=be)
    providers["torch_chunked"] = lambda: torch_chunked_ranks(q, g, targets)
    return providers, skipped


def eval_providers(text, visual, t2v, backends) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    providers, skipped = {}, {}
    from ccr_fast import metrics

    api = getattr(metrics, "evaluate_embeddings", None)
    for be in backends:
        if api is None:
            skipped[f"ccr_fast[{be}]"] = "ccr_fast.metrics.evaluate_embeddings is not available yet"
        else:
            providers[f"ccr_fast[{be}]"] = lambda be=be: api(text, visual, t2v, backend=be)
    rm = getattr(metrics, "retrieval_metrics", None)
    if rm is None:
        skipped["torch_full"] = "ccr_fast.metrics.retrieval_metrics is not available yet"
    else:
        def full():
            a, b, c = full_matrix_ranks(text, visual, t2v)
            return rm(a, b, v2t_all_ranks=c)

        providers["torch_full"] = full
    return providers, skipped


# ---------------------------------------------------------------------------------------------------- sweeps
def sweep_configs(device: torch.device, quick: bool) -> Dict[str, List[dict]]:
    """Points per benchmark: ``topk`` and ``ranks`` vs gallery size G, ``eval`` per split (items/captions)."""
    if quick:
        gs, ks, q, d = [500, 2000], [1, 10], 128, 256
        splits = [(200, 1000)]
    elif device.type == "cuda":
        gs, ks, q, d = [10_000, 100_000, 1_000_000, 4_000_000], [1, 10, 100], 5000, 512
        splits = [(1000, 5000), (5000, 25000)]
    else:
        gs, ks, q, d = [1000, 3000, 10_000, 30_000, 100_000], [1, 10, 100], 1000, 256
        splits = [(1000, 5000), (5000, 25000)]
    # the full gallery sweep for k=10, its ends and middle for the other k (time budget)
    topk = [{"Q": q, "G": g, "k": k, "d": d, "dtype": "fp32"} for k in ks for g in gs
            if k == 10 or len(gs) < 4 or g in (gs[0], gs[len(gs) // 2], gs[-1])]
    ranks = [{"Q": q, "G": g, "d": d, "dtype": "fp32"} for g in gs]
    evals = [{"items": n, "captions": c, "d": d, "dtype": "fp32"} for n, c in splits]
    return {"topk": topk, "ranks": ranks, "eval": evals}


def run(device: torch.device, *, quick: bool, backends: List[str], reps: int = 5, max_seconds: float = 8.0,
        max_call_seconds: float = 5.0, log=print) -> dict:
    """Run the retrieval sweep; returns the suite's JSON payload."""
    gen = torch.Generator().manual_seed(0)
    records, skipped_all = [], {}
    points = sweep_configs(device, quick)
    kw = dict(warmup=1, reps=2 if quick else reps, min_reps=2 if quick else 3, max_seconds=max_seconds,
              mem_reps=1 if quick else 2)

    def note_skips(skipped):
        for name, why in skipped.items():
            if name not in skipped_all:
                skipped_all[name] = why
                log(f"  [retrieval] skip {name}: {why}")

    slow = set()  # (op, k, provider) slower than max_call_seconds at a smaller G: not run at larger G

    def measure(op, cfg, providers, base):
        dropped = []
        for name in [n for n in providers if (op, cfg.get("k"), n) in slow]:
            providers.pop(name)
            dropped.append({"op": op, **cfg, "provider": name, "status": "skipped", "time_ms": None,
                            "mem_bytes": None, "note": f"slower than {max_call_seconds:g} s per call at a smaller G "
                                                      "(time budget)"})
        agree = _agreement(providers, base)
        res = harness.measure(providers, device, **kw)
        for name, r in res.items():
            if r["time_ms"] and r["time_ms"]["median"] > 1e3 * max_call_seconds and name != base:
                slow.add((op, cfg.get("k"), name))  # the baseline always runs (the ratios need it)
        return res, dropped, agree

    galleries = {}
    for cfg in points["topk"] + points["ranks"]:
        key = (cfg["G"], cfg["d"])
        if key not in galleries:
            galleries[key] = harness.random_unit((cfg["G"], cfg["d"]), DTYPES[cfg["dtype"]], device, gen)
    queries = {}
    for cfg in points["topk"]:
        g = galleries[(cfg["G"], cfg["d"])]
        q = queries.setdefault(cfg["d"], harness.random_unit((cfg["Q"], cfg["d"]), DTYPES[cfg["dtype"]], device,
                                                             gen))
        providers, skipped = topk_providers(q, g, cfg["k"], device, backends)
        note_skips(skipped)
        res, dropped, agree = measure("topk", cfg, providers, "torch_chunked")
        records += dropped
        records += _records("topk", cfg, res, 2.0 * cfg["Q"] * cfg["G"] * cfg["d"], agree)
        _log_point(log, "topk", cfg, res)
    for cfg in points["ranks"]:
        g = galleries[(cfg["G"], cfg["d"])]
        q = queries.setdefault(cfg["d"], harness.random_unit((cfg["Q"], cfg["d"]), DTYPES[cfg["dtype"]], device,
                                                             gen))
        targets = torch.randint(0, cfg["G"], (cfg["Q"],), generator=gen).to(device)
        providers, skipped = ranks_providers(q, g, targets, backends)
        note_skips(skipped)
        res, dropped, agree = measure("ranks", cfg, providers, "torch_chunked")
        records += dropped
        records += _records("ranks", cfg, res, 2.0 * cfg["Q"] * cfg["G"] * cfg["d"], agree)
        _log_point(log, "ranks", cfg, res)
    del galleries, queries
    for cfg in points["eval"]:
        n, c, d = cfg["items"], cfg["captions"], cfg["d"]
        visual = harness.random_unit((n, d), DTYPES[cfg["dtype"]], device, gen)
        t2v = torch.arange(c, device=device) % n  # every item gets c // n captions
        text = torch.nn.functional.normalize(visual[t2v].float() + 0.5 * harness.random_unit((c, d), torch.float32,
                                                                                            device, gen), dim=-1)
        text = text.to(visual.dtype)
        providers, skipped = eval_providers(text, visual, t2v, backends)
        note_skips(skipped)
        res, dropped, agree = measure("eval", cfg, providers, "torch_full")
        records += dropped
        records += _records("eval", cfg, res, 2.0 * n * c * d, agree)
        _log_point(log, "eval", cfg, res)
    for r in records:  # the plain-torch way is the baseline of every retrieval ratio
        r["_base"] = r["provider"] == ("torch_full" if r["op"] == "eval" else "torch_chunked")
    records = _add_ratios_vs(records)
    return {"suite": "retrieval", "mode": "no-grad forward", "records": records, "skipped": skipped_all}


def _records(op: str, cfg: dict, res: dict, flops: float, agree: Dict[str, float]) -> List[dict]:
    out = [{"op": op, **cfg, "provider": name, **r, "flops": flops} for name, r in res.items()]
    for r in out:
        if r["time_ms"]:
            r["tflops"] = flops / (r["time_ms"]["median"] * 1e-3) / 1e12
        if r["provider"] in agree:
            r["diff_vs_torch"] = agree[r["provider"]]
    return out


def _agreement(providers: Dict[str, Callable], base: str) -> Dict[str, float]:
    """How far each provider's output is from the plain-torch provider's (a sanity check stored in the JSON).

    top-k: max |score difference| (indices may legitimately differ on near-ties); ranks: the fraction of queries
    whose rank differs (two GEMM paths may round a near-tie differently); metrics: max |difference| over the
    metric values (percent points / ranks).
    """
    try:
        ref = providers[base]()
    except Exception:  # the failure is measured and reported by harness.measure
        return {}
    out = {}
    for name, fn in providers.items():
        if name in (base, "gemm_floor"):
            continue
        try:
            got = fn()
        except Exception:
            continue
        if isinstance(ref, dict):
            out[name] = max(abs(float(ref[k]) - float(got[k])) for k in ref) if ref.keys() == got.keys() else 1e9
        elif isinstance(ref, tuple):  # (scores, indices); faiss returns (distances, labels) as numpy
            a, b = ref[0].float(), torch.as_tensor(got[0]).float()
            out[name] = float((a - b).abs().max()) if a.shape == b.shape else 1e9
        else:
            out[name] = float((ref != got).float().mean()) if ref.shape == got.shape else 1e9
    return out


def _add_ratios_vs(records: List[dict]) -> List[dict]:
    """``speedup_vs_torch`` (t_torch / t) and ``mem_ratio_vs_torch`` against the plain-torch provider."""
    def key(r):
        return tuple(sorted((k, v) for k, v in r.items() if k in ("op", "Q", "G", "k", "d", "dtype", "items",
                                                                 "captions")))

    base = {key(r): r for r in records if r.pop("_base") and r.get("time_ms")}
    for r in records:
        b = base.get(key(r))
        if b is None or not r.get("time_ms"):
            continue
        r["speedup_vs_torch"] = b["time_ms"]["median"] / r["time_ms"]["median"]
        if r.get("mem_bytes") and b.get("mem_bytes") and b["mem_bytes"]["median"] > 0:
            r["mem_ratio_vs_torch"] = r["mem_bytes"]["median"] / b["mem_bytes"]["median"]
    return records


def _log_point(log, op, cfg, res):
    parts = []
    for name, r in res.items():
        parts.append(f"{name}={r['time_ms']['median']:.2f}ms" if r["time_ms"] else f"{name}={r['status']}")
    desc = " ".join(f"{k}={v}" for k, v in cfg.items() if k != "dtype")
    log(f"  [retrieval:{op}] {desc}: " + " ".join(parts))


__all__ = ["run", "sweep_configs", "torch_chunked_topk", "torch_chunked_ranks", "full_matrix_ranks"]
