"""``"blas"`` top-k host function (docs/interop.md, "topk"): GEMM tiles + a threshold-filtered bounded heap per row
(csrc/cpu/blas_retrieval.cpp). CUDA tensors go to ``ccr_fast.backends.blas.gpu``."""
from __future__ import annotations

from typing import Tuple

import torch

from ..._backend import DTYPE_CODES, extension
from ..cpu._util import cpu_pair
from . import _gemm, gpu_function

Tensor = torch.Tensor


def topk(q: Tensor, g: Tensor, k: int, block_size: int = 0, *, num_splits: int = 0) -> Tuple[Tensor, Tensor]:
    """scores [Q, k] acc, indices [Q, k] int64: sorted descending, ties -> lower gallery index.

    ``block_size``: gallery rows per GEMM tile (0 = 1024). ``num_splits`` > 1 forces the gallery split-and-merge
    path (tests; 0 = automatic, used when there are too few query tiles for the threads).
    """
    if q.device.type == "cuda":
        return gpu_function("topk")(q, g, k, block_size)
    _gemm.ensure()
    q, g = cpu_pair(q, g)
    n_q, d = q.shape
    scores = torch.empty(n_q, k, dtype=q.dtype)
    indices = torch.empty(n_q, k, dtype=torch.int64)
    extension().blas_topk(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], d, int(k),
                          scores.data_ptr(), indices.data_ptr(), DTYPE_CODES[q.dtype], tile_n=int(block_size),
                          num_splits=int(num_splits))
    return scores, indices
