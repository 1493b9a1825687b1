"""Triton similarity: ``scores = q gᵀ`` in fp32 (docs/interop.md, "similarity")."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import autotune_configs, block_d, check_operands, device_guard, dot_flags, tile_dot

_CONFIGS = autotune_configs([
    ({"BLOCK_M": 32, "BLOCK_N": 32}, 4, 1),  # the interpreter's single config
    ({"BLOCK_M": 128, "BLOCK_N": 128}, 8, 3),
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 4, 3),
    ({"BLOCK_M": 64, "BLOCK_N": 128}, 4, 4),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
])


@triton.autotune(configs=_CONFIGS, key=["Q", "G", "D"])
@triton.jit
def _similarity_kernel(Q_ptr, stride_qm, stride_qd, G_ptr, stride_gm, stride_gd, OUT_ptr, Q, G, D,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] output tile per program; grid (cdiv(Q, BLOCK_M), cdiv(G, BLOCK_N)); fp32 accumulator."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    s = tile_dot(Q_ptr, stride_qm, stride_qd, rows, Q, G_ptr, stride_gm, stride_gd, cols, G, D,
                 BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
    mask = (rows < Q)[:, None] & (cols < G)[None, :]
    tl.store(OUT_ptr + rows[:, None] * G + cols[None, :], s, mask=mask)


def similarity(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Inner products of every query with every gallery row.

    Args:
        q: [Q, d] queries (fp32/fp16/bf16, any strides).
        g: [G, d] gallery, same dtype/device as ``q``.

    Returns:
        scores [Q, G] float32 (fp32 accumulation).
    """
    check_operands(("q", "g"), (q, g))
    n_q, n_g, d = q.shape[0], g.shape[0], q.shape[1]
    out = torch.empty((n_q, n_g), dtype=torch.float32, device=q.device)

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_M"]), triton.cdiv(n_g, meta["BLOCK_N"]))

    with device_guard(q):
        _similarity_kernel[grid](q, q.stride(0), q.stride(1), g, g.stride(0), g.stride(1), out, n_q, n_g, d,
                                 BLOCK_D=block_d(d), **dot_flags(q.dtype))
    return out
