"""Triton similarity: ``scores = q gᵀ`` in fp32 (docs/interop.md, "similarity")."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import autotune_configs, block_d, check_operands, device_guard, dot_flags, tile_dot

# GPU configs: none spills on sm_80/sm_90 with triton 3.6 or 3.9 (gpu-check --compile-only; 128x64 and 64x128 at
# 4 warps did, and 128x128 on sm_80 with 3.6).
_CONFIGS = autotune_configs([
    ({"BLOCK_M": 32, "BLOCK_N": 32}, 4, 1),  # the interpreter's single config
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
    ({"BLOCK_M": 64, "BLOCK_N": 128}, 8, 4),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
])


@triton.autotune(configs=_CONFIGS, key=["Q", "G", "D"])
@triton.jit
def _similarity_kernel(Q_ptr, stride_qm, stride_qd, G_ptr, stride_gm, stride_gd, OUT_ptr, Q, G, D,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] output tile per program; fp32 accumulator.

    Grid (cdiv(G, BLOCK_N), cdiv(Q, BLOCK_M)): the gallery, the long axis, is grid axis 0 (up to 2³¹−1 blocks;
    axis 1 allows only 65535, which 64-row gallery tiles exceed past ~4.2M rows).
    """
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
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
    rows_per_launch = 65535 * 32  # grid axis 1 holds at most 65535 query blocks of >= 32 rows

    with device_guard(q):
        for r0 in range(0, n_q, rows_per_launch):
            qc, oc = q[r0:r0 + rows_per_launch], out[r0:r0 + rows_per_launch]
            m = qc.shape[0]

            def grid(meta, m=m):
                return (triton.cdiv(n_g, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))

            _similarity_kernel[grid](qc, qc.stride(0), qc.stride(1), g, g.stride(0), g.stride(1), oc, m, n_g, d,
                                     BLOCK_D=block_d(d), **dot_flags(q.dtype))
    return out
