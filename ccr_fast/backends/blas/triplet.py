"""``"blas"`` triplet host functions (docs/interop.md, "triplet").

Forward: GEMM tiles of ``S = b aᵀ`` + fused hardest negative per row and per column (or hinge sums), csrc/cpu/
blas_retrieval.cpp. Backward: the ``"cpu"`` kernel (max-violation needs O(B·d) work from the saved indices, no
GEMM; the sum mode recomputes its active hinges there). bf16 inputs (with the bf16 GEMM of :mod:`._lowp`): the
forward's GEMM runs in bf16 with fp32 accumulation (csrc/cpu/blas.cpp), selection and hinges fp32
(docs/precision.md). CPU tensors only; the CUDA host functions are
``ccr_fast.backends.blas.gpu`` (a separate entry of the dispatch table).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._operands import cpu_pair
from ..registry import DTYPE_CODES, extension
from ..cpu import triplet as _cpu
from . import _gemm, _lowp

Tensor = torch.Tensor


def triplet_forward(a: Tensor, b: Tensor, margin: float, max_violation: bool
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """row_cost [B], col_cost [B] (acc dtype), row_idx [B], col_idx [B] int64 (−1 in sum mode)."""
    if a.dtype == torch.bfloat16 and b.dtype == torch.bfloat16 and _lowp.available():
        from .contrastive import _pad64  # noqa: PLC0415

        n = a.shape[0]
        ap, bp = _pad64(a), _pad64(b)
        row_cost, col_cost = torch.empty(n), torch.empty(n)
        row_idx, col_idx = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
        extension().blas_triplet_forward_bf16(ap.data_ptr(), bp.data_ptr(), n, ap.shape[0], ap.shape[1],
                                              float(margin), bool(max_violation), row_cost.data_ptr(),
                                              col_cost.data_ptr(), row_idx.data_ptr(), col_idx.data_ptr())
        return row_cost, col_cost, row_idx, col_idx
    _gemm.ensure()
    a, b = cpu_pair(a, b)
    n, d = a.shape
    acc = a.dtype
    row_cost, col_cost = torch.empty(n, dtype=acc), torch.empty(n, dtype=acc)
    row_idx, col_idx = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    extension().blas_triplet_forward(a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), n, d, float(margin),
                                     bool(max_violation), row_cost.data_ptr(), col_cost.data_ptr(),
                                     row_idx.data_ptr(), col_idx.data_ptr(), DTYPE_CODES[acc])
    return row_cost, col_cost, row_idx, col_idx


def triplet_backward(a: Tensor, b: Tensor, margin: float, max_violation: bool, row_idx: Tensor,
                     col_idx: Tensor, grad: float) -> Tuple[Tensor, Tensor]:
    """da [B, d], db [B, d] (acc dtype) of ``grad · Σ(row_cost + col_cost)``."""
    return _cpu.triplet_backward(a, b, margin, max_violation, row_idx, col_idx, grad)
