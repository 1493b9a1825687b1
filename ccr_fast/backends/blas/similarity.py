"""``"blas"`` similarity host function (docs/interop.md, "similarity"): the GEMM in tiles over the OpenMP threads.
CUDA tensors go to ``ccr_fast.backends.blas.gpu``."""
from __future__ import annotations

import torch

from ..._backend import DTYPE_CODES, extension
from ..cpu._util import cpu_pair
from . import _gemm, gpu_function

Tensor = torch.Tensor


def similarity(q: Tensor, g: Tensor) -> Tensor:
    """scores [Q, G] (acc dtype) = q gᵀ."""
    if q.device.type == "cuda":
        return gpu_function("similarity")(q, g)
    _gemm.ensure()
    q, g = cpu_pair(q, g)
    out = torch.empty(q.shape[0], g.shape[0], dtype=q.dtype)
    extension().blas_similarity(q.data_ptr(), g.data_ptr(), q.shape[0], g.shape[0], q.shape[1], q.stride(0),
                                g.stride(0), DTYPE_CODES[q.dtype], out.data_ptr(), out.stride(0))
    return out
