"""``"blas"`` contrastive host functions (docs/interop.md, "contrastive"): GEMM tiles + fused LSE / dZ epilogues.

CPU tensors run csrc/cpu/blas.cpp; CUDA tensors go to ``ccr_fast.backends.blas.gpu`` with the same arguments.
Extra keyword (this backend only): ``keep`` [M, N] acc (forward: also store the raw scores ``x yᵀ`` there) and
``saved`` (backward: those scores, read only, so no tile is recomputed), see :mod:`ccr_fast.ops.contrastive`
("Keep-Z"). The backward runs one pass with per-thread ``[N, d]`` dy partials when they fit the workspace budget
(``CCR_FAST_BLAS_WORKSPACE_MB``), else a row pass for dx and a column pass for dy.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._backend import DTYPE_CODES, extension
from ..cpu._util import cpu_pair
from . import _gemm, gpu_function

Tensor = torch.Tensor


def contrastive_forward(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int,
                        col_div: int, compute_col: bool, *, keep: Optional[Tensor] = None, tile_m: int = 0,
                        tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """lse_row [M], lse_col [N], pos_row [M], pos_col [N] (acc dtype) of ``Z = scale · x yᵀ``."""
    if x.device.type == "cuda":
        kw = {} if keep is None else {"keep": keep}
        return gpu_function("contrastive_forward")(x, y, scale, row_off, row_div, col_off, col_div, compute_col, **kw)
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
    if x.device.type == "cuda":
        kw = {} if saved is None else {"saved": saved}
        return gpu_function("contrastive_backward")(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos,
                                                    row_off, row_div, col_off, col_div, **kw)
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
