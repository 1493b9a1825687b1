"""``"blas"`` similarity host function (docs/interop.md, "similarity"): the GEMM in tiles over the OpenMP threads.
CPU tensors only; the CUDA host functions are
``ccr_fast.backends.blas.gpu`` (a separate entry of the dispatch table)."""
from __future__ import annotations

import torch

from .._operands import cpu_pair
from ..registry import DTYPE_CODES, extension
from . import _gemm

Tensor = torch.Tensor


def similarity(q: Tensor, g: Tensor) -> Tensor:
    """scores [Q, G] (acc dtype) = q gᵀ."""
    _gemm.ensure()
    q, g = cpu_pair(q, g)
    out = torch.empty(q.shape[0], g.shape[0], dtype=q.dtype)
    extension().blas_similarity(q.data_ptr(), g.data_ptr(), q.shape[0], g.shape[0], q.shape[1], q.stride(0),
                                g.stride(0), DTYPE_CODES[q.dtype], out.data_ptr(), out.stride(0))
    return out
