"""``"blas"`` target-rank host function (docs/interop.md, "ranks"): GEMM tiles + fused counting against an
error-bounded estimate of each target score, exact for the GEMM's own scores (csrc/cpu/blas_retrieval.cpp).
CPU tensors only; the CUDA host functions are
``ccr_fast.backends.blas.gpu`` (a separate entry of the dispatch table)."""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .._operands import cpu_pair
from ..registry import DTYPE_CODES, extension
from . import _gemm

Tensor = torch.Tensor


def target_ranks(q: Tensor, g: Tensor, targets: Tensor, return_all: bool = False, num_splits: int = 0
                 ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """ranks [Q] int64 (best over the valid targets; −1 without one), and all_ranks [Q, T] with ``return_all``."""
    _gemm.ensure()
    q, g = cpu_pair(q, g)
    targets = targets.to(torch.int64).contiguous()
    n_q, d = q.shape
    ranks = torch.empty(n_q, dtype=torch.int64)
    all_ranks = torch.empty(n_q, targets.shape[1], dtype=torch.int64) if return_all else None
    extension().blas_target_ranks(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], d,
                                  targets.data_ptr(), targets.shape[1], ranks.data_ptr(),
                                  all_ranks.data_ptr() if return_all else 0, DTYPE_CODES[q.dtype], int(num_splits))
    return (ranks, all_ranks) if return_all else ranks
