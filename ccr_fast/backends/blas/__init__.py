"""``"blas"`` backend: the fastest vendor GEMM present, in tiles, plus our fused epilogues (docs/interop.md).

CPU: OpenBLAS (``scipy-openblas32``, see :mod:`._gemm`) called from the C++/OpenMP tile loops of csrc/cpu/blas*.cpp,
each tile followed by a fused epilogue (log-sum-exp, dZ, hardest negatives, k-selection, rank counting).
CUDA: cuBLAS through ``torch.mm`` in chunks plus GPU epilogues (``ccr_fast.backends.blas.gpu``). The CPU and CUDA host
functions are separate modules, i.e. separate entries of the dispatch table; none of them branches on the device.

Memory: the contrastive loss keeps the whole ``M×N`` score matrix for its backward when it fits the workspace budget
(``CCR_FAST_BLAS_WORKSPACE_MB``, MiB, default 512; 0 never keeps it) and skips one GEMM; otherwise it works in
O(threads·tile) memory and recomputes the tiles in the backward.
"""
from __future__ import annotations

import torch

from ..registry import workspace_mb


def keeps_scores(M: int, N: int, dtype: torch.dtype) -> bool:
    """Whether the contrastive forward keeps its ``M×N`` scores (of ``dtype``) for the backward."""
    return M * N * torch.finfo(dtype).bits // 8 <= workspace_mb() * (1 << 20)
