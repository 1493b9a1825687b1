"""``"cpu"`` top-k host function (docs/interop.md, "topk") over ``ccr_fast._C``."""
from __future__ import annotations

from typing import Tuple

import torch

from ..registry import DTYPE_CODES, extension
from ._util import cpu_pair

Tensor = torch.Tensor


def topk(q: Tensor, g: Tensor, k: int, block_size: int = 0, num_splits: int = 0) -> Tuple[Tensor, Tensor]:
    """scores [Q, k] acc, indices [Q, k] int64: sorted descending, ties -> lower gallery index.

    Args:
        q: [Q, d], g: [G, d]. k: 1 <= k <= G.
        block_size: gallery rows per streamed block (0 = the kernel's default, ~256 KiB per block).
        num_splits: gallery splits merged at the end (0 = automatic: split only when Q < 2·threads); values > 1
            force the split-and-merge path (tests).
    """
    q, g = cpu_pair(q, g)
    n_q, d = q.shape
    scores = torch.empty(n_q, k, dtype=q.dtype)
    indices = torch.empty(n_q, k, dtype=torch.int64)
    extension().topk_cpu(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], d, int(k),
                         int(block_size), scores.data_ptr(), indices.data_ptr(), DTYPE_CODES[q.dtype],
                         int(num_splits))
    return scores, indices
