"""``"cpu"`` triplet host functions (docs/interop.md, "triplet") over ``ccr_fast._C``."""
from __future__ import annotations

from typing import Tuple

import torch

from ..registry import DTYPE_CODES, extension
from ._util import cpu_pair

Tensor = torch.Tensor


def triplet_forward(a: Tensor, b: Tensor, margin: float, max_violation: bool
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """row_cost [B], col_cost [B] (acc dtype), row_idx [B], col_idx [B] int64 on ``S = b aᵀ``."""
    a, b = cpu_pair(a, b)
    n, d = a.shape
    acc = a.dtype
    row_cost, col_cost = torch.empty(n, dtype=acc), torch.empty(n, dtype=acc)
    row_idx, col_idx = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    extension().triplet_forward_cpu(a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), n, d, float(margin),
                                    bool(max_violation), row_cost.data_ptr(), col_cost.data_ptr(),
                                    row_idx.data_ptr(), col_idx.data_ptr(), DTYPE_CODES[acc])
    return row_cost, col_cost, row_idx, col_idx


def triplet_backward(a: Tensor, b: Tensor, margin: float, max_violation: bool, row_idx: Tensor,
                     col_idx: Tensor, grad: float) -> Tuple[Tensor, Tensor]:
    """da [B, d], db [B, d] (acc dtype) of ``grad · Σ(row_cost + col_cost)``."""
    a, b = cpu_pair(a, b)
    n, d = a.shape
    acc = a.dtype
    row_idx = row_idx.to(torch.int64).contiguous()
    col_idx = col_idx.to(torch.int64).contiguous()
    da, db = torch.empty(n, d, dtype=acc), torch.empty(n, d, dtype=acc)
    extension().triplet_backward_cpu(a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), n, d, float(margin),
                                     bool(max_violation), row_idx.data_ptr(), col_idx.data_ptr(), float(grad),
                                     da.data_ptr(), db.data_ptr(), DTYPE_CODES[acc])
    return da, db
