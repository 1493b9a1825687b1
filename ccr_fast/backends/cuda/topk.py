"""``"cuda"`` topk host functions (docs/interop.md, "topk") over ``ccr_fast._C``."""
from __future__ import annotations

import torch

from ..registry import DTYPE_CODES
from ._common import ext, pair, int_arg, ld, workspace, stream


def topk(q, g, k: int, block_size: int = 0, *, num_splits: int = 0):
    """The k highest inner products per query, sorted descending, ties -> lower gallery index.

    Args:
        q: [Q, d] queries; g: [G, d] gallery (same dtype/device); k: 1 <= k <= G.
        block_size: at least this many gallery rows per split (0 = automatic); num_splits forces the split count.
    Returns:
        scores [Q, k] float32, indices [Q, k] int64.
    """
    q, g = pair("q", q, "g", g)
    Q, d = q.shape
    G = g.shape[0]
    k = int_arg("k", k, 1)
    if k > G:
        raise ValueError(f"k must be <= the gallery size G={G}, got k={k}")
    block_size = int_arg("block_size", int(block_size or 0), 0)
    dev = q.device
    C = ext()
    with torch.cuda.device(dev):
        scores = torch.empty(Q, k, dtype=torch.float32, device=dev)
        indices = torch.empty(Q, k, dtype=torch.int64, device=dev)
        ws = workspace(C.topk_workspace_bytes(Q, G, k, block_size, num_splits), dev)
        C.topk_cuda(q.data_ptr(), ld(q), g.data_ptr(), ld(g), Q, G, d, k, block_size,
                    scores.data_ptr(), indices.data_ptr(), DTYPE_CODES[q.dtype], ws.data_ptr(), num_splits,
                    dev.index, stream(dev))
    return scores, indices
