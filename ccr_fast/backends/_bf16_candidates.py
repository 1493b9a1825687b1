"""bf16 candidate scoring for the exact top-k (docs/exactness.md), shared by the backends.

fp32 inputs are split ``x = x_hi + x_lo`` with ``x_hi = bf16(x)`` (round to nearest even; ``x_lo`` is exact in
fp32). A backend scores ``q_hi · g_hi`` with bf16 products (exact in fp32) and fp32 accumulation; then for every
gallery row::

    |s~ − s| <= ||q_lo|| max||g|| + ||q_hi|| max||g_lo|| + (γ_{d+1}(2^-24) + u_out (1 + γ)) ||q_hi|| max||g_hi||
                + 2 γ_{d+8}(2^-53) ||q|| max||g|| + tiny

(``u_out = 2^-8`` when the GEMM rounds its output to bf16, else 0). :func:`lowp_bound` evaluates it from the norms,
:func:`bf16_norms` computes them (float64, rounded up), :func:`torch_bf16_candidates` is the scorer of the GPU
backends: bf16 GEMMs (``mm``) in gallery blocks with a running ``torch.topk``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

Tensor = torch.Tensor

_CHUNK = 1 << 22


def _gamma(n: float, u: float) -> float:
    return n * u / (1.0 - n * u)


def bf16_norms(x: Tensor) -> Tensor:
    """[N, 3] float64: ||x||, ||x − bf16(x)||, ||bf16(x)|| per row (rounded up)."""
    out = torch.empty((x.shape[0], 3), dtype=torch.float64, device=x.device)
    rows = max(1, _CHUNK // max(1, x.shape[1]))
    for r0 in range(0, x.shape[0], rows):
        xd = x[r0:r0 + rows].double()
        hi = x[r0:r0 + rows].bfloat16().double()
        out[r0:r0 + rows, 0] = torch.linalg.vector_norm(xd, dim=1)
        out[r0:r0 + rows, 1] = torch.linalg.vector_norm(xd - hi, dim=1)
        out[r0:r0 + rows, 2] = torch.linalg.vector_norm(hi, dim=1)
    return out * (1 + 1e-12)


def lowp_bound(q_norms: Tensor, g_max, d: int, *, u_out: float = 0.0) -> Tensor:
    """E(q) [Q] float64 from per-query (||q||, ||q_lo||, ||q_hi||) and the gallery maxima of the same norms."""
    dp = (d + 63) // 64 * 64  # the padded width of the CPU scorer (zero columns add nothing)
    g32 = _gamma(dp + 1, 2.0 ** -24)
    g64 = _gamma(d + 8, 2.0 ** -53)
    qn, ql, qh = (q_norms[:, j] * (1 + 1e-12) for j in range(3))
    gn, gl, gh = (float(v) * (1 + 1e-12) for v in g_max)
    err = ql * gn + qh * gl + (g32 + u_out * (1 + g32)) * qh * gh + 2 * g64 * qn * gn
    tiny = 8.0 * (dp + 1) * 2.0 ** -126 * (1 + qh + gh)
    err = (err + tiny) * (1 + 1e-9)
    return torch.where(qn * gn < 2.0 ** 125, err, torch.full_like(err, float("inf")))


def _cuda_mm(a: Tensor, b_t: Tensor) -> Tuple[Tensor, float]:
    """bf16 ``a @ b_t`` with fp32 accumulation; fp32 output when torch offers it (else bf16 output, u_out 2^-8)."""
    m = torch.backends.cuda.matmul
    old = m.allow_bf16_reduced_precision_reduction
    m.allow_bf16_reduced_precision_reduction = False  # keep cuBLAS split-K reductions in fp32
    try:
        try:
            return torch.mm(a, b_t, out_dtype=torch.float32), 0.0
        except (TypeError, RuntimeError):
            return torch.mm(a, b_t).float(), 2.0 ** -8
    finally:
        m.allow_bf16_reduced_precision_reduction = old


def torch_bf16_candidates(q: Tensor, g: Tensor, kp: int, block_size: int = 0,
                          mm: Optional[Callable[[Tensor, Tensor], Tuple[Tensor, float]]] = None
                          ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """The best ``kp`` rows per query by bf16 scores: (scores [Q, kp] fp32, indices [Q, kp] int64, E [Q] float64).

    ``mm(a_bf16, b_bf16_t) -> (fp32 scores, u_out)`` (default: cuBLAS through ``torch.mm``). None for non-fp32
    inputs. Gallery blocks of ``block_size`` rows (0: as many as fit 2^26 scores per block).
    """
    if q.dtype != torch.float32 or g.dtype != torch.float32:
        return None
    mm = mm or _cuda_mm
    n_q, n_g = q.shape[0], g.shape[0]
    qh, gh = q.bfloat16(), g.bfloat16()
    cols = block_size if block_size > 0 else max(kp, (1 << 26) // max(1, n_q))
    best_s = best_i = None
    u_out = 0.0
    for c0 in range(0, n_g, cols):
        s, u = mm(qh, gh[c0:c0 + cols].t())
        u_out = max(u_out, u)
        v, i = torch.topk(s, min(kp, s.shape[1]), dim=1)
        i = i + c0
        if best_s is not None:
            both = torch.cat([best_s, v], 1)
            v, i2 = torch.topk(both, min(kp, both.shape[1]), dim=1)
            i = torch.cat([best_i, i], 1).gather(1, i2)
        best_s, best_i = v, i
    order = torch.argsort(best_s, dim=1, descending=True, stable=True)
    best_s, best_i = best_s.gather(1, order), best_i.gather(1, order)
    g_max = bf16_norms(g).max(dim=0).values.tolist()
    return best_s, best_i, lowp_bound(bf16_norms(q), g_max, q.shape[1], u_out=u_out)
