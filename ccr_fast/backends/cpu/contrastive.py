"""``"cpu"`` contrastive host functions (docs/interop.md, "contrastive") over ``ccr_fast._C``."""
from __future__ import annotations

from typing import Tuple

import torch

from ..registry import DTYPE_CODES, extension
from ._util import cpu_pair

Tensor = torch.Tensor


def contrastive_forward(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int,
                        col_div: int, compute_col: bool, *, tile_m: int = 0,
                        tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """lse_row [M], lse_col [N], pos_row [M], pos_col [N] (acc dtype) of ``Z = scale · x yᵀ`` (never stored).

    ``tile_m``/``tile_n`` override the kernel's tile sizes (0 = default; tests use small tiles).
    """
    x, y = cpu_pair(x, y)
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    lse_row, pos_row = torch.empty(M, dtype=acc), torch.empty(M, dtype=acc)
    lse_col, pos_col = torch.empty(N, dtype=acc), torch.empty(N, dtype=acc)
    extension().contrastive_forward_cpu(
        x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc], float(scale),
        int(row_off), int(row_div), int(col_off), int(col_div), bool(compute_col),
        lse_row.data_ptr(), lse_col.data_ptr(), pos_row.data_ptr(), pos_col.data_ptr(), tile_m=tile_m, tile_n=tile_n)
    return lse_row, lse_col, pos_row, pos_col


def contrastive_backward(x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor,
                         row_coef: Tensor, col_coef: Tensor, w_pos: float, row_off: int, row_div: int,
                         col_off: int, col_div: int, *, tile_m: int = 0,
                         tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """dx [M, d], dy [N, d], dscale 0-dim (acc dtype) from the saved LSEs (contract backward)."""
    x, y = cpu_pair(x, y)
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    vec = [t.to(acc).contiguous() for t in (lse_row, lse_col, row_coef, col_coef)]
    dx, dy, dscale = torch.empty(M, d, dtype=acc), torch.empty(N, d, dtype=acc), torch.empty((), dtype=acc)
    extension().contrastive_backward_cpu(
        x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc], float(scale),
        vec[0].data_ptr(), vec[1].data_ptr(), vec[2].data_ptr(), vec[3].data_ptr(), float(w_pos),
        int(row_off), int(row_div), int(col_off), int(col_div), dx.data_ptr(), dy.data_ptr(), dscale.data_ptr(),
        tile_m=tile_m, tile_n=tile_n)
    return dx, dy, dscale
