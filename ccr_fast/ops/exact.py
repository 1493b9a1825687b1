"""Float64-exact top-k and ranks on top of any backend's fast scores (docs/exactness.md).

Exact means the order of the float64 scores ``s_c = Σ_i q_i g_ci`` (inputs widened to float64, one fixed float64
summation order: :func:`rescore`), ties broken by the lower gallery index. A backend scores fast in lower precision;
this module proves which candidates its rounding cannot have misplaced and settles the rest in float64.

**The bound.** Let ``s~`` be a backend's score of (q, g). If the backend rounds each input element with unit roundoff
``u_in`` (0 for fp32 GEMMs; TF32 ``2^-10``, bf16 ``2^-8``), accumulates ``d`` products in a format with unit
roundoff ``u`` in any order (fp32: ``2^-24``) and rounds the result with ``u_out``, then (Higham, *Accuracy and
Stability of Numerical Algorithms*, §3.1, with ``γ_n = n u / (1 − n u)``)::

    |s~ − s| <= ((1 + u_in)^2 (1 + γ_{d+1}) (1 + u_out) − 1) · Σ_i |q_i| |g_i|  +  tiny,
    Σ_i |q_i| |g_i| <= ||q|| · ||g||  (Cauchy–Schwarz),

where ``tiny = 8 (d+1) 2^-126 (1 + ||q|| + max||g||)`` covers flushed subnormals. The float64 score itself is
within ``γ_{d+8}(2^-53) ||q|| ||g||`` of the real inner product; it is added twice. With ``max_c ||g_c||`` this gives
one ``E(q)`` for the whole gallery. The bf16 scorer of the ``blas`` backend knows its rounding residuals exactly
(``q = q_hi + q_lo`` with ``q_hi = bf16(q)``) and uses the tighter
``||q_lo|| max||g|| + ||q_hi|| max||g_lo|| + γ_{d+1} ||q_hi|| max||g_hi||`` (products of bf16 numbers are exact in
fp32). Queries whose scores could overflow the backend's format (``||q|| max||g|| >= 2^125``) are settled entirely
in float64.

**top-k.** The backend returns its best ``k' > k`` candidates by ``s~``. Every other row has ``s~ <= s~_(k')`` (the
worst candidate's score), hence a float64 score ``< s~_(k') + E``. The candidates are re-scored in float64 and
sorted by (float64 desc, index asc); when the k-th float64 score is ``> s~_(k') + E`` no other row can enter or tie
the top k and the answer is certified. Otherwise ``k'`` grows fourfold for that query, and past ``G/4`` the query is
settled by a float64 pass over the whole gallery.

**ranks.** ``rank(t) = #{c: s_c > s_t} + #{c: s_c == s_t, c < t}`` on float64 scores. With ``s_t`` in float64 and
``E(q)``, a row with ``s~ > s_t + E`` is above in float64 and one with ``s~ < s_t − E`` below; the rows of the band
between are re-scored in float64 and counted with the tie rule.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

Tensor = torch.Tensor

U32 = 2.0 ** -24
U64 = 2.0 ** -53
U_BF16 = 2.0 ** -8
U_FP16 = 2.0 ** -11
U_TF32 = 2.0 ** -10  # TF32 keeps 10 fraction bits; 2^-10 also covers truncation instead of rounding
OVERFLOW_NORM = 2.0 ** 125  # ||q|| max||g|| from which fp32 / bf16 scores could overflow
_SAFE = 1.0 + 1e-9  # margin over the float64 rounding of the bound's own arithmetic
_CHUNK = 1 << 22  # elements of the temporaries built at once by the torch paths


def gamma(n: float, u: float) -> float:
    """``γ_n = n u / (1 − n u)``."""
    return n * u / (1.0 - n * u)


def _codes():
    from .._backend import DTYPE_CODES, extension  # noqa: PLC0415

    return DTYPE_CODES, extension()


def _cpu_rows(t: Tensor) -> Tensor:
    """float32/float64 rows with unit stride (fp16/bf16 widened exactly to float32)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.dim() != 2 or t.stride(1) != 1 or t.stride(0) < t.shape[1]:
        t = t.contiguous()
    return t


def _pair(q: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
    q, g = _cpu_rows(q), _cpu_rows(g)
    if q.dtype != g.dtype:
        q, g = q.double(), g.double()
    return q, g


def rescore(q: Tensor, g: Tensor, idx: Tensor) -> Tensor:
    """float64 scores ``q_i · g_idx[i, j]`` [Q, n] for idx [Q, n] int64 (−1 → −inf): the one float64 score.

    CPU: ``ccr_fast._C.exact_rescore`` (csrc/cpu/exact.cpp, a fixed summation order: equal rows give equal scores).
    Other devices: float64 torch products summed along d.
    """
    n_q, n = idx.shape
    if n_q == 0 or n == 0:
        return torch.empty((n_q, n), dtype=torch.float64, device=q.device)
    if q.device.type == "cpu":
        codes, C = _codes()
        q, g = _pair(q, g)
        idx = idx.to(torch.int64).contiguous()
        out = torch.empty((n_q, n), dtype=torch.float64)
        C.exact_rescore(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], q.shape[1],
                        idx.data_ptr(), n, out.data_ptr(), codes[q.dtype])
        return out
    qd = q.double()
    out = torch.empty((n_q, n), dtype=torch.float64, device=q.device)
    rows = max(1, _CHUNK // max(1, n * q.shape[1]))
    for r0 in range(0, n_q, rows):
        ix = idx[r0:r0 + rows]
        s = (g[ix.clamp_min(0)].double() * qd[r0:r0 + rows, None, :]).sum(-1)
        out[r0:r0 + rows] = torch.where(ix >= 0, s, torch.full_like(s, float("-inf")))
    return out


def full_topk64(q: Tensor, g: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The float64 top-k over the whole gallery: scores [Q, k] float64, indices [Q, k] int64 (ties → lower index)."""
    n_q, n_g = q.shape[0], g.shape[0]
    if q.device.type == "cpu":
        codes, C = _codes()
        q, g = _pair(q, g)
        s = torch.empty((n_q, k), dtype=torch.float64)
        i = torch.empty((n_q, k), dtype=torch.int64)
        if n_q:
            C.exact_topk_f64(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, n_g, q.shape[1], k,
                             s.data_ptr(), i.data_ptr(), codes[q.dtype])
        return s, i
    best_s = best_i = None
    cols = max(k, _CHUNK // max(1, n_q * q.shape[1]))
    for c0 in range(0, n_g, cols):
        c = torch.arange(c0, min(n_g, c0 + cols), device=q.device)
        s = rescore(q, g, c.expand(n_q, -1))
        ix = c.expand(n_q, -1)
        if best_s is not None:
            s, ix = torch.cat([best_s, s], 1), torch.cat([best_i, ix], 1)
        best_s, best_i = _sort_exact(s, ix)
        best_s, best_i = best_s[:, :k], best_i[:, :k]
    return best_s, best_i


def _sort_exact(s64: Tensor, idx: Tensor) -> Tuple[Tensor, Tensor]:
    """Sort each row by (score desc, index asc)."""
    o = torch.argsort(idx, dim=1)
    idx, s64 = idx.gather(1, o), s64.gather(1, o)
    s64, o = torch.sort(s64, dim=1, descending=True, stable=True)
    return s64, idx.gather(1, o)


def max_row_norm(g: Tensor) -> float:
    """An upper bound of max_c ||g_c||: float32 norms inflated by ``(1 + γ_{d+2}(2^-24))`` (a sum of squares and a
    square root) plus the subnormal term, float64 for float64 rows; +inf when a float32 square overflows (the caller then settles in
    float64)."""
    if g.dtype == torch.float64:
        return float(torch.linalg.vector_norm(g, dim=1).max()) * (1 + gamma(g.shape[1] + 2, U64))
    norms = torch.linalg.vector_norm(g.float() if g.dtype != torch.float32 else g, dim=1)
    # components below 2^-63 may square to (flushed) subnormals: they add at most sqrt(d) 2^-63 to a norm
    return float(norms.max()) * (1 + 2 * gamma(g.shape[1] + 2, U32)) + math.sqrt(g.shape[1]) * 2.0 ** -63


def generic_bound(q: Tensor, g: Tensor, *, u_in: float = 0.0, u_acc: float = U32, u_out: float = 0.0,
                  g_max: Optional[float] = None, overflow: float = OVERFLOW_NORM) -> Tensor:
    """E(q) [Q] float64 (module docstring); +inf where the backend's scores could overflow."""
    d = q.shape[1]
    qn = torch.linalg.vector_norm(q.double(), dim=1) * (1 + 1e-12)
    gm = max_row_norm(g) if g_max is None else g_max
    rel = (1 + u_in) ** 2 * (1 + gamma(d + 1, u_acc)) * (1 + u_out) - 1 + 2 * gamma(d + 8, U64)
    tiny = 8.0 * (d + 1) * 2.0 ** -126 * (1 + qn + gm)
    err = (rel * qn * gm + tiny) * _SAFE
    return torch.where(qn * gm < overflow, err, torch.full_like(err, float("inf")))


def error_units(backend: str, device: torch.device, dtype: torch.dtype) -> dict:
    """The rounding model of a backend's scores (keyword arguments of :func:`generic_bound`).

    CPU backends and fp64: exact inputs, fp32 (fp64) accumulation. CUDA: fp32 inputs may be rounded to TF32 and
    fp16/bf16 GEMMs may round their output to 16 bits; the bound assumes both (a wider band only costs candidates).
    """
    if dtype == torch.float64:
        return {"u_in": 0.0, "u_acc": U64, "u_out": 0.0, "overflow": 2.0 ** 1000}
    if device.type == "cpu":
        return {"u_in": 0.0, "u_acc": U32, "u_out": 0.0}
    if dtype == torch.float32:
        return {"u_in": U_TF32, "u_acc": U32, "u_out": 0.0}
    return {"u_in": 0.0, "u_acc": U32, "u_out": U_BF16, "overflow": 2.0 ** 14 if dtype == torch.float16 else
            OVERFLOW_NORM}


Candidates = Callable[[Tensor, int], Tuple[Tensor, Tensor, Tensor]]


def settle_topk(q: Tensor, g: Tensor, k: int, cand_s: Tensor, cand_i: Tensor, err: Tensor
                ) -> Tuple[Tensor, Tensor, Tensor]:
    """Re-score candidates in float64 and certify them: (scores [n, k] float64, indices [n, k], ok [n] bool)."""
    s64, idx = _sort_exact(rescore(q, g, cand_i), cand_i)
    if cand_i.shape[1] >= g.shape[0]:
        ok = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
    else:
        worst = cand_s.to(torch.float64).min(dim=1).values  # NaN anywhere -> not certified
        ok = s64[:, k - 1] > worst + err.to(s64.device)
        ok &= ~torch.isnan(cand_s).any(dim=1)
    return s64[:, :k], idx[:, :k], ok


def exact_topk(q: Tensor, g: Tensor, k: int, candidates: Candidates, k_first: int) -> Tuple[Tensor, Tensor]:
    """Float64-exact top-k from a candidate provider ``candidates(q_rows, k') -> (scores, indices, E)``.

    Returns scores [Q, k] float64 and indices [Q, k] int64, ordered by (float64 score desc, index asc).
    """
    n_q, n_g = q.shape[0], g.shape[0]
    out_s = torch.empty((n_q, k), dtype=torch.float64, device=q.device)
    out_i = torch.empty((n_q, k), dtype=torch.int64, device=q.device)
    todo = torch.arange(n_q, device=q.device)
    kp = min(n_g, max(k_first, k + 1))
    full = []
    while todo.numel():
        if kp < n_g and kp > max(4 * k, n_g // 4):
            full.append(todo)
            break
        qs = q if todo.numel() == n_q else q[todo]
        cs, ci, err = candidates(qs, kp)
        s64, ix, ok = settle_topk(qs, g, k, cs, ci, err)
        out_s[todo[ok]] = s64[ok]
        out_i[todo[ok]] = ix[ok]
        bad = ~ok
        overflow = bad & torch.isinf(err.to(bad.device))
        if bool(overflow.any()):
            full.append(todo[overflow])
            bad &= ~overflow
        todo = todo[bad]
        kp = min(n_g, kp * 4)
    for rows in full:
        if rows.numel():
            s64, ix = full_topk64(q[rows], g, k)
            out_s[rows], out_i[rows] = s64, ix
    return out_s, out_i


def exact_ranks(q: Tensor, g: Tensor, targets: Tensor, scores: Callable[[Tensor], Tensor], err: Tensor
                ) -> Tensor:
    """Float64-exact ranks of every target [Q, T] (−1 at padding) from a backend's approximate scores.

    ``scores(q_rows)`` returns the backend's scores of those rows against the whole gallery ([r, G]); ``err`` is
    E(q) [Q] (+inf: count that query entirely in float64).
    """
    n_q, n_g = q.shape[0], g.shape[0]
    n_t = targets.shape[1]
    dev = q.device
    valid = targets >= 0
    st = rescore(q, g, targets.clamp_min(0))
    err = err.to(device=dev, dtype=torch.float64)
    counts = torch.zeros((n_q, n_t), dtype=torch.int64, device=dev)
    rows = max(1, _CHUNK // max(1, n_g * n_t))
    cand = torch.arange(n_g, device=dev)
    for r0 in range(0, n_q, rows):
        r1 = min(n_q, r0 + rows)
        s = scores(q[r0:r1]).to(torch.float64)  # [r, G]
        sub_t, sub_st, e = targets[r0:r1], st[r0:r1], err[r0:r1, None]
        fin = torch.isfinite(e[:, 0])
        hi, lo = sub_st + e, sub_st - e
        above = (s[:, None, :] > hi[:, :, None]).sum(-1)
        band = (s[:, None, :] >= lo[:, :, None]) & ~(s[:, None, :] > hi[:, :, None])
        band &= fin[:, None, None]
        r_i, t_j, c = band.nonzero(as_tuple=True)
        cnt = torch.where(fin[:, None], above, torch.zeros_like(above))
        if c.numel():
            sc = rescore(q[r0:r1][r_i], g, c[:, None])[:, 0]
            ref = sub_st[r_i, t_j]
            add = (sc > ref) | ((sc == ref) & (c < sub_t[r_i, t_j]))
            cnt.index_put_((r_i, t_j), add.to(torch.int64), accumulate=True)
        for r in torch.nonzero(~fin).flatten().tolist():  # overflow guard: the whole row in float64
            s64 = rescore(q[r0 + r:r0 + r + 1], g, cand[None, :])[0]
            ref = sub_st[r]
            cnt[r] = ((s64[None, :] > ref[:, None]) | ((s64[None, :] == ref[:, None]) &
                                                       (cand[None, :] < sub_t[r][:, None]))).sum(-1)
        counts[r0:r1] = cnt
    return torch.where(valid, counts, torch.full_like(counts, -1))
