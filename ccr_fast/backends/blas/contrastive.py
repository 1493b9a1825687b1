"""``"blas"`` contrastive host functions (docs/interop.md, "contrastive"): GEMM tiles + fused LSE / dZ epilogues.

CPU tensors (csrc/cpu/blas.cpp); the CUDA host functions with the same arguments are ``ccr_fast.backends.blas.gpu``
(a separate entry of the dispatch table).
Extra keyword (this backend only): ``keep`` [M, N] acc (forward: also store the raw scores ``x yᵀ`` there) and
``saved`` (backward: those scores, read only, so no tile is recomputed), see :mod:`ccr_fast.ops.contrastive`
("Keep-Z"). The backward runs one pass with per-thread ``[N, d]`` dy partials when they fit the workspace budget
(``CCR_FAST_BLAS_WORKSPACE_MB``), else a row pass for dx and a column pass for dy.

bf16 CPU inputs (when :mod:`._lowp` is available) run their GEMMs in bf16 with fp32 accumulation (oneDNN BRGeMM);
the LSEs, dZ (formed in fp32, rounded once to bf16 as a GEMM operand) and dscale stay fp32. The operands are
copied into zero-padded bf16 buffers (rows and d to multiples of 64); Z is recomputed in the backward (no
keep-Z for bf16). fp16 (and bf16 without the bf16 GEMM) are widened to fp32 exactly and take the fp32 path
(docs/precision.md).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._operands import cpu_pair
from ..registry import DTYPE_CODES, extension
from . import _gemm, _lowp

Tensor = torch.Tensor


def _lowp_ok(x: Tensor) -> bool:
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and _lowp.available()


def _pad64(t: Tensor) -> Tensor:
    """``t`` [n, d] as a contiguous bf16 [ceil64(n), ceil64(d)] copy, zero padded (no copy when already so)."""
    n, d = t.shape
    n_p, d_p = -(-n // 64) * 64, -(-d // 64) * 64
    if (n_p, d_p) == (n, d) and t.is_contiguous():
        return t
    out = t.new_zeros(n_p, d_p)
    out[:n, :d] = t
    return out


def _bf16_forward(x, y, scale, row_off, row_div, col_off, col_div, compute_col, tile_m, tile_n):
    M, N = x.shape[0], y.shape[0]
    xp, yp = _pad64(x), _pad64(y)
    out = [torch.empty(n, dtype=torch.float32) for n in (M, N, M, N)]
    extension().blas_contrastive_forward_bf16(
        xp.data_ptr(), yp.data_ptr(), M, N, xp.shape[0], yp.shape[0], xp.shape[1], float(scale), int(row_off),
        int(row_div), int(col_off), int(col_div), bool(compute_col), out[0].data_ptr(), out[1].data_ptr(),
        out[2].data_ptr(), out[3].data_ptr(), tile_m=tile_m, tile_n=tile_n)
    return out[0], out[1], out[2], out[3]


def _bf16_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div, col_off, col_div,
                   tile_m, tile_n):
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    xp, yp = _pad64(x), _pad64(y)
    Mp, Np, dp = xp.shape[0], yp.shape[0], xp.shape[1]
    vec = [t.to(torch.float32).contiguous() for t in (lse_row, lse_col, row_coef, col_coef)]
    dx, dy = torch.empty(Mp, dp), torch.empty(Np, dp)
    dscale = torch.empty(())
    parts = torch.empty(extension().cpu_num_threads(), dp, Np)
    extension().blas_contrastive_backward_bf16(
        xp.data_ptr(), yp.data_ptr(), M, N, Mp, Np, dp, float(scale), vec[0].data_ptr(), vec[1].data_ptr(),
        vec[2].data_ptr(), vec[3].data_ptr(), float(w_pos), int(row_off), int(row_div), int(col_off), int(col_div),
        dx.data_ptr(), dy.data_ptr(), dscale.data_ptr(), parts.data_ptr(), tile_m=tile_m, tile_n=tile_n)
    return dx[:M, :d], dy[:N, :d], dscale


def contrastive_forward(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int,
                        col_div: int, compute_col: bool, *, keep: Optional[Tensor] = None, tile_m: int = 0,
                        tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """lse_row [M], lse_col [N], pos_row [M], pos_col [N] (acc dtype) of ``Z = scale · x yᵀ``."""
    if keep is None and _lowp_ok(x) and y.dtype == torch.bfloat16:
        return _bf16_forward(x, y, scale, row_off, row_div, col_off, col_div, compute_col, tile_m, tile_n)
    _gemm.ensure()
    x, y = cpu_pair(x, y)
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    if keep is not None and (keep.shape != (M, N) or keep.dtype != acc or not keep.is_contiguous()):
        raise ValueError(f"keep must be a contiguous [{M}, {N}] {acc} tensor, got {tuple(keep.shape)} {keep.dtype}")
    lse_row, pos_row = torch.empty(M, dtype=acc), torch.empty(M, dtype=acc)
    lse_col, pos_col = torch.empty(N, dtype=acc), torch.empty(N, dtype=acc)
    extension().blas_contrastive_forward(
        x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc], float(scale),
        int(row_off), int(row_div), int(col_off), int(col_div), bool(compute_col), lse_row.data_ptr(),
        lse_col.data_ptr(), pos_row.data_ptr(), pos_col.data_ptr(), keep=0 if keep is None else keep.data_ptr(),
        tile_m=tile_m, tile_n=tile_n)
    return lse_row, lse_col, pos_row, pos_col


def contrastive_backward(x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor,
                         row_coef: Tensor, col_coef: Tensor, w_pos: float, row_off: int, row_div: int,
                         col_off: int, col_div: int, *, saved: Optional[Tensor] = None, tile_m: int = 0,
                         tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """dx [M, d], dy [N, d], dscale 0-dim (acc dtype); ``saved``: the forward's kept scores (read only)."""
    if saved is None and _lowp_ok(x) and y.dtype == torch.bfloat16:
        return _bf16_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div, col_off,
                              col_div, tile_m, tile_n)
    _gemm.ensure()
    x, y = cpu_pair(x, y)
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    if saved is not None and (saved.shape != (M, N) or saved.dtype != acc or not saved.is_contiguous()):
        raise ValueError(f"saved must be a contiguous [{M}, {N}] {acc} tensor, got {tuple(saved.shape)} "
                         f"{saved.dtype}")
    vec = [t.to(acc).contiguous() for t in (lse_row, lse_col, row_coef, col_coef)]
    dx, dy, dscale = torch.empty(M, d, dtype=acc), torch.empty(N, d, dtype=acc), torch.empty((), dtype=acc)
    threads = extension().cpu_num_threads()
    parts_bytes = threads * N * d * dx.element_size()
    parts = torch.empty(threads, N, d, dtype=acc) if parts_bytes <= _gemm.workspace_mb() * (1 << 20) else None
    extension().blas_contrastive_backward(
        x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc], float(scale),
        vec[0].data_ptr(), vec[1].data_ptr(), vec[2].data_ptr(), vec[3].data_ptr(), float(w_pos),
        int(row_off), int(row_div), int(col_off), int(col_div), dx.data_ptr(), dy.data_ptr(), dscale.data_ptr(),
        saved=0 if saved is None else saved.data_ptr(), dy_parts=0 if parts is None else parts.data_ptr(),
        tile_m=tile_m, tile_n=tile_n)
    return dx, dy, dscale
