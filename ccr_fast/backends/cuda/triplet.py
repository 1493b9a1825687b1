"""``"cuda"`` triplet host functions (docs/interop.md, "triplet") over ``ccr_fast._C``."""
from __future__ import annotations

import torch

from ..registry import DTYPE_CODES
from ._common import ext, pair, vector, ld, workspace, stream


def triplet_forward(a, b, margin: float, max_violation: bool, *, num_splits: int = 0):
    """VSE++ costs on ``S = b a^T`` (pairs on the diagonal).

    Returns:
        row_cost [B], col_cost [B] float32; row_idx [B], col_idx [B] int64 (hardest negatives, ties -> lower
        index; -1 in sum mode).
    """
    a, b = pair("a", a, "b", b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b must have the same number of rows as a ({a.shape[0]}), got shape {tuple(b.shape)}")
    dev = a.device
    B, d = a.shape
    C = ext()
    with torch.cuda.device(dev):
        row_cost = torch.empty(B, dtype=torch.float32, device=dev)
        col_cost = torch.empty(B, dtype=torch.float32, device=dev)
        row_idx = torch.empty(B, dtype=torch.int64, device=dev)
        col_idx = torch.empty(B, dtype=torch.int64, device=dev)
        ws = workspace(C.triplet_forward_workspace_bytes(B, bool(max_violation), num_splits), dev)
        C.triplet_forward_cuda(a.data_ptr(), ld(a), b.data_ptr(), ld(b), B, d, float(margin),
                               bool(max_violation), row_cost.data_ptr(), col_cost.data_ptr(), row_idx.data_ptr(),
                               col_idx.data_ptr(), DTYPE_CODES[a.dtype], ws.data_ptr(), num_splits, dev.index,
                               stream(dev))
    return row_cost, col_cost, row_idx, col_idx


def triplet_backward(a, b, margin: float, max_violation: bool, row_idx, col_idx, grad: float, *,
                     num_splits: int = 0):
    """Gradient of ``grad * sum(row_cost + col_cost)``: da [B, d], db [B, d] float32 contiguous.

    Max-violation uses the saved hardest-negative indices (their scatter is summed with atomics, so the
    order of that summation is not deterministic); sum mode recomputes the active hinges.
    """
    a, b = pair("a", a, "b", b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b must have the same number of rows as a ({a.shape[0]}), got shape {tuple(b.shape)}")
    dev = a.device
    B, d = a.shape
    if max_violation:
        row_idx = vector("row_idx", row_idx, B, dev, torch.int64)
        col_idx = vector("col_idx", col_idx, B, dev, torch.int64)
    else:
        row_idx = col_idx = torch.empty(0, dtype=torch.int64, device=dev)
    C = ext()
    with torch.cuda.device(dev):
        da = torch.empty(B, d, dtype=torch.float32, device=dev)
        db = torch.empty(B, d, dtype=torch.float32, device=dev)
        ws = workspace(C.triplet_backward_workspace_bytes(B, d, bool(max_violation), num_splits), dev)
        C.triplet_backward_cuda(a.data_ptr(), ld(a), b.data_ptr(), ld(b), B, d, float(margin),
                                bool(max_violation), row_idx.data_ptr(), col_idx.data_ptr(), float(grad),
                                da.data_ptr(), db.data_ptr(), DTYPE_CODES[a.dtype], ws.data_ptr(), num_splits,
                                dev.index, stream(dev))
    return da, db
