"""``"cuda"`` ranks host functions (docs/interop.md, "ranks") over ``ccr_fast._C``."""
from __future__ import annotations

import torch

from ..registry import DTYPE_CODES
from ._common import ext, pair, ld, workspace, stream


def target_ranks(q, g, targets, *, return_all: bool = False, num_splits: int = 0):
    """0-based stable descending rank of each query's target(s); min over valid targets (-1 = padding).

    Args:
        q: [Q, d]; g: [G, d]; targets: int64 [Q] or [Q, T] padded with -1.
        return_all: also return the rank of every target ([Q, T], -1 at padding).
    Returns:
        ranks [Q] int64 (-1 for a row without a valid target), and all_ranks [Q, T] when return_all.
    """
    q, g = pair("q", q, "g", g)
    Q, d = q.shape
    G = g.shape[0]
    dev = q.device
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must have dtype int64, got {targets.dtype}")
    if targets.device != dev:
        raise ValueError(f"targets must be on {dev}, got {targets.device}")
    if targets.dim() == 1:
        targets = targets.unsqueeze(1)
    if targets.dim() != 2 or targets.shape[0] != Q or targets.shape[1] == 0:
        raise ValueError(f"targets must have shape ({Q},) or ({Q}, T>=1), got {tuple(targets.shape)}")
    targets = targets.contiguous()
    lo, hi = int(targets.min()), int(targets.max())  # host read: out-of-range indices must not reach the kernel
    if lo < -1 or hi >= G:
        raise ValueError(f"targets must be -1 (padding) or in [0, {G}), got values in [{lo}, {hi}]")
    T = targets.shape[1]
    C = ext()
    with torch.cuda.device(dev):
        ranks = torch.empty(Q, dtype=torch.int64, device=dev)
        all_ranks = torch.empty(Q, T, dtype=torch.int64, device=dev) if return_all else None
        ws = workspace(C.target_ranks_workspace_bytes(Q, G, T, num_splits), dev)
        C.target_ranks_cuda(q.data_ptr(), ld(q), g.data_ptr(), ld(g), Q, G, d, targets.data_ptr(), T,
                            ranks.data_ptr(), all_ranks.data_ptr() if return_all else 0, DTYPE_CODES[q.dtype],
                            ws.data_ptr(), num_splits, dev.index, stream(dev))
    return (ranks, all_ranks) if return_all else ranks
