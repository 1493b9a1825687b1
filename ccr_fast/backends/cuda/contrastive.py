"""``"cuda"`` contrastive host functions (docs/interop.md, "contrastive") over ``ccr_fast._C``."""
from __future__ import annotations

import torch

from ..registry import DTYPE_CODES
from ._common import ext, pair, vector, scale_operand, int_arg, ld, workspace, stream


def contrastive_forward(x, y, scale, row_off: int, row_div: int, col_off: int, col_div: int, compute_col: bool,
                        *, num_splits: int = 0):
    """Row/column log-sum-exp and positive sums of ``Z = scale * x y^T`` (never materialised).

    Args:
        x: [M, d] rows (fp32/fp16/bf16, CUDA). y: [N, d] columns, same dtype/device.
        scale: 0-dim float32 tensor on the same device.
        row_off, row_div, col_off, col_div: positive rule ``(r+row_off)//row_div == (c+col_off)//col_div``.
        compute_col: also compute ``lse_col`` (else it is left as zeros).
        num_splits: force the number of column splits per pass (tests); 0 = automatic.
    Returns:
        lse_row [M], lse_col [N], pos_row [M], pos_col [N], all float32.
    """
    x, y = pair("x", x, "y", y)
    dev = x.device
    sc = scale_operand(scale, dev)
    row_off, col_off = int_arg("row_off", row_off, 0), int_arg("col_off", col_off, 0)
    row_div, col_div = int_arg("row_div", row_div, 1), int_arg("col_div", col_div, 1)
    M, d = x.shape
    N = y.shape[0]
    C = ext()
    with torch.cuda.device(dev):
        lse_row = torch.empty(M, dtype=torch.float32, device=dev)
        pos_row = torch.empty(M, dtype=torch.float32, device=dev)
        lse_col = (torch.empty if compute_col else torch.zeros)(N, dtype=torch.float32, device=dev)
        pos_col = torch.empty(N, dtype=torch.float32, device=dev)
        ws = workspace(C.contrastive_forward_workspace_bytes(M, N, bool(compute_col), num_splits), dev)
        C.contrastive_forward_cuda(x.data_ptr(), y.data_ptr(), M, N, d, ld(x), ld(y),
                                   DTYPE_CODES[x.dtype], sc.data_ptr(), row_off, row_div, col_off, col_div,
                                   bool(compute_col), lse_row.data_ptr(), lse_col.data_ptr(), pos_row.data_ptr(),
                                   pos_col.data_ptr(), ws.data_ptr(), num_splits, dev.index, stream(dev))
    return lse_row, lse_col, pos_row, pos_col


def contrastive_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos: float, row_off: int,
                         row_div: int, col_off: int, col_div: int, *, num_splits: int = 0):
    """Gradients of the contrastive loss from the saved LSEs (docs/interop.md).

    ``dZ = row_coef[r] exp(Z - lse_row[r]) + col_coef[c] exp(Z - lse_col[c]) - w_pos [pos]`` (a zero coefficient
    skips its term, so an unspecified LSE is never read into the result).

    Returns:
        dx [M, d], dy [N, d] float32 contiguous, dscale 0-dim float32 (``sum dZ * x y^T``).
    """
    x, y = pair("x", x, "y", y)
    dev = x.device
    sc = scale_operand(scale, dev)
    M, d = x.shape
    N = y.shape[0]
    lse_row = vector("lse_row", lse_row, M, dev)
    lse_col = vector("lse_col", lse_col, N, dev)
    row_coef = vector("row_coef", row_coef, M, dev)
    col_coef = vector("col_coef", col_coef, N, dev)
    row_off, col_off = int_arg("row_off", row_off, 0), int_arg("col_off", col_off, 0)
    row_div, col_div = int_arg("row_div", row_div, 1), int_arg("col_div", col_div, 1)
    C = ext()
    with torch.cuda.device(dev):
        dx = torch.empty(M, d, dtype=torch.float32, device=dev)
        dy = torch.empty(N, d, dtype=torch.float32, device=dev)
        dscale = torch.empty((), dtype=torch.float32, device=dev)
        ws = workspace(C.contrastive_backward_workspace_bytes(M, N, d, num_splits), dev)
        C.contrastive_backward_cuda(x.data_ptr(), y.data_ptr(), M, N, d, ld(x), ld(y),
                                    DTYPE_CODES[x.dtype], sc.data_ptr(), lse_row.data_ptr(), lse_col.data_ptr(),
                                    row_coef.data_ptr(), col_coef.data_ptr(), float(w_pos), row_off, row_div,
                                    col_off, col_div, dx.data_ptr(), dy.data_ptr(), dscale.data_ptr(),
                                    ws.data_ptr(), num_splits, dev.index, stream(dev))
    return dx, dy, dscale
