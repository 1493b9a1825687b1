"""``"cpu"`` similarity host function (docs/interop.md, "similarity") over ``ccr_fast._C``."""
from __future__ import annotations

import torch

from ..registry import DTYPE_CODES, extension
from ._util import cpu_pair

Tensor = torch.Tensor


def similarity(q: Tensor, g: Tensor) -> Tensor:
    """scores [Q, G] (acc dtype) = q gᵀ."""
    q, g = cpu_pair(q, g)
    out = torch.empty(q.shape[0], g.shape[0], dtype=q.dtype)
    extension().similarity_cpu(q.data_ptr(), g.data_ptr(), q.shape[0], g.shape[0], q.shape[1], q.stride(0),
                               g.stride(0), DTYPE_CODES[q.dtype], out.data_ptr(), out.stride(0))
    return out
