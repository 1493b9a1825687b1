"""Host functions of the ``"cuda"`` backend (docs/interop.md, "The kernel-level contract"; design: docs/cuda.md).

Torch tensors in, torch tensors out. Each function validates device / dtype / shapes, allocates the outputs and the
workspace with torch (the caching allocator owns all memory), and calls ``ccr_fast._C.<fn>_cuda`` on the current
stream of the inputs' device. Nothing here synchronises the device (``scale`` stays a device tensor); the one
exception is ``target_ranks``, which checks that the target indices are in range (a host read of two scalars).

Inputs may be float32, float16 or bfloat16 (accumulation is always float32; float64 is not supported on CUDA and
raises). Outputs named "acc" in the contract are float32. Rows must be contiguous along the feature axis; a
row-strided 2-D view is passed as is, anything else is made contiguous.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._backend import DTYPE_CODES, extension
from ._common import rows_contiguous

CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------ helpers
def _ext():
    C = extension()
    if not getattr(C, "with_cuda", False):
        raise RuntimeError("backend 'cuda' is not available: extension built without CUDA")
    return C


def _operand(name: str, t, d: Optional[int] = None) -> torch.Tensor:
    """A 2-D CUDA feature matrix [rows, d] with unit stride along d."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor for backend 'cuda', got device {t.device}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [rows, d], got shape {tuple(t.shape)}")
    if t.dtype not in CUDA_DTYPES:
        raise ValueError(f"{name} must have dtype float32, float16 or bfloat16 on CUDA, got {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise ValueError(f"{name} must have feature size d={d}, got shape {tuple(t.shape)}")
    return rows_contiguous(t)


def _pair(n1: str, t1, n2: str, t2) -> Tuple[torch.Tensor, torch.Tensor]:
    a = _operand(n1, t1)
    b = _operand(n2, t2, a.shape[1])
    if b.device != a.device:
        raise ValueError(f"{n2} must be on the same device as {n1} ({a.device}), got {b.device}")
    if b.dtype != a.dtype:
        raise ValueError(f"{n2} must have the same dtype as {n1} ({a.dtype}), got {b.dtype}")
    return a, b


def _vector(name: str, t, n: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """A contiguous 1-D tensor of n elements of ``dtype`` on ``device`` (converted when the dtype differs)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    return t.to(dtype).contiguous()


def _scale(scale, device: torch.device) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a 0-dim float32 tensor on {device}, got {type(scale).__name__}")
    if scale.numel() != 1 or scale.device != device:
        raise ValueError(f"scale must be a 0-dim tensor on {device}, got shape {tuple(scale.shape)} on {scale.device}")
    return scale.detach().reshape(()).to(torch.float32).contiguous()


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def _ld(t: torch.Tensor) -> int:
    """Row stride in elements (a 1-row view may carry any stride(0); it is never used then)."""
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# ------------------------------------------------------------------------------------------------ contrastive
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
    x, y = _pair("x", x, "y", y)
    dev = x.device
    sc = _scale(scale, dev)
    row_off, col_off = _int("row_off", row_off, 0), _int("col_off", col_off, 0)
    row_div, col_div = _int("row_div", row_div, 1), _int("col_div", col_div, 1)
    M, d = x.shape
    N = y.shape[0]
    C = _ext()
    with torch.cuda.device(dev):
        lse_row = torch.empty(M, dtype=torch.float32, device=dev)
        pos_row = torch.empty(M, dtype=torch.float32, device=dev)
        lse_col = (torch.empty if compute_col else torch.zeros)(N, dtype=torch.float32, device=dev)
        pos_col = torch.empty(N, dtype=torch.float32, device=dev)
        ws = _workspace(C.contrastive_forward_workspace_bytes(M, N, bool(compute_col), num_splits), dev)
        C.contrastive_forward_cuda(x.data_ptr(), y.data_ptr(), M, N, d, _ld(x), _ld(y),
                                   DTYPE_CODES[x.dtype], sc.data_ptr(), row_off, row_div, col_off, col_div,
                                   bool(compute_col), lse_row.data_ptr(), lse_col.data_ptr(), pos_row.data_ptr(),
                                   pos_col.data_ptr(), ws.data_ptr(), num_splits, dev.index, _stream(dev))
    return lse_row, lse_col, pos_row, pos_col


def contrastive_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos: float, row_off: int,
                         row_div: int, col_off: int, col_div: int, *, num_splits: int = 0):
    """Gradients of the contrastive loss from the saved LSEs (docs/interop.md).

    ``dZ = row_coef[r] exp(Z - lse_row[r]) + col_coef[c] exp(Z - lse_col[c]) - w_pos [pos]`` (a zero coefficient
    skips its term, so an unspecified LSE is never read into the result).

    Returns:
        dx [M, d], dy [N, d] float32 contiguous, dscale 0-dim float32 (``sum dZ * x y^T``).
    """
    x, y = _pair("x", x, "y", y)
    dev = x.device
    sc = _scale(scale, dev)
    M, d = x.shape
    N = y.shape[0]
    lse_row = _vector("lse_row", lse_row, M, dev)
    lse_col = _vector("lse_col", lse_col, N, dev)
    row_coef = _vector("row_coef", row_coef, M, dev)
    col_coef = _vector("col_coef", col_coef, N, dev)
    row_off, col_off = _int("row_off", row_off, 0), _int("col_off", col_off, 0)
    row_div, col_div = _int("row_div", row_div, 1), _int("col_div", col_div, 1)
    C = _ext()
    with torch.cuda.device(dev):
        dx = torch.empty(M, d, dtype=torch.float32, device=dev)
        dy = torch.empty(N, d, dtype=torch.float32, device=dev)
        dscale = torch.empty((), dtype=torch.float32, device=dev)
        ws = _workspace(C.contrastive_backward_workspace_bytes(M, N, d, num_splits), dev)
        C.contrastive_backward_cuda(x.data_ptr(), y.data_ptr(), M, N, d, _ld(x), _ld(y),
                                    DTYPE_CODES[x.dtype], sc.data_ptr(), lse_row.data_ptr(), lse_col.data_ptr(),
                                    row_coef.data_ptr(), col_coef.data_ptr(), float(w_pos), row_off, row_div,
                                    col_off, col_div, dx.data_ptr(), dy.data_ptr(), dscale.data_ptr(),
                                    ws.data_ptr(), num_splits, dev.index, _stream(dev))
    return dx, dy, dscale


# ------------------------------------------------------------------------------------------------ triplet
def triplet_forward(a, b, margin: float, max_violation: bool, *, num_splits: int = 0):
    """VSE++ costs on ``S = b a^T`` (pairs on the diagonal).

    Returns:
        row_cost [B], col_cost [B] float32; row_idx [B], col_idx [B] int64 (hardest negatives, ties -> lower
        index; -1 in sum mode).
    """
    a, b = _pair("a", a, "b", b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b must have the same number of rows as a ({a.shape[0]}), got shape {tuple(b.shape)}")
    dev = a.device
    B, d = a.shape
    C = _ext()
    with torch.cuda.device(dev):
        row_cost = torch.empty(B, dtype=torch.float32, device=dev)
        col_cost = torch.empty(B, dtype=torch.float32, device=dev)
        row_idx = torch.empty(B, dtype=torch.int64, device=dev)
        col_idx = torch.empty(B, dtype=torch.int64, device=dev)
        ws = _workspace(C.triplet_forward_workspace_bytes(B, bool(max_violation), num_splits), dev)
        C.triplet_forward_cuda(a.data_ptr(), _ld(a), b.data_ptr(), _ld(b), B, d, float(margin),
                               bool(max_violation), row_cost.data_ptr(), col_cost.data_ptr(), row_idx.data_ptr(),
                               col_idx.data_ptr(), DTYPE_CODES[a.dtype], ws.data_ptr(), num_splits, dev.index,
                               _stream(dev))
    return row_cost, col_cost, row_idx, col_idx


def triplet_backward(a, b, margin: float, max_violation: bool, row_idx, col_idx, grad: float, *,
                     num_splits: int = 0):
    """Gradient of ``grad * sum(row_cost + col_cost)``: da [B, d], db [B, d] float32 contiguous.

    Max-violation uses the saved hardest-negative indices (their scatter is summed with atomics, so the
    order of that summation is not deterministic); sum mode recomputes the active hinges.
    """
    a, b = _pair("a", a, "b", b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b must have the same number of rows as a ({a.shape[0]}), got shape {tuple(b.shape)}")
    dev = a.device
    B, d = a.shape
    if max_violation:
        row_idx = _vector("row_idx", row_idx, B, dev, torch.int64)
        col_idx = _vector("col_idx", col_idx, B, dev, torch.int64)
    else:
        row_idx = col_idx = torch.empty(0, dtype=torch.int64, device=dev)
    C = _ext()
    with torch.cuda.device(dev):
        da = torch.empty(B, d, dtype=torch.float32, device=dev)
        db = torch.empty(B, d, dtype=torch.float32, device=dev)
        ws = _workspace(C.triplet_backward_workspace_bytes(B, d, bool(max_violation), num_splits), dev)
        C.triplet_backward_cuda(a.data_ptr(), _ld(a), b.data_ptr(), _ld(b), B, d, float(margin),
                                bool(max_violation), row_idx.data_ptr(), col_idx.data_ptr(), float(grad),
                                da.data_ptr(), db.data_ptr(), DTYPE_CODES[a.dtype], ws.data_ptr(), num_splits,
                                dev.index, _stream(dev))
    return da, db


# ------------------------------------------------------------------------------------------------ retrieval
def topk(q, g, k: int, block_size: int = 0, *, num_splits: int = 0):
    """The k highest inner products per query, sorted descending, ties -> lower gallery index.

    Args:
        q: [Q, d] queries; g: [G, d] gallery (same dtype/device); k: 1 <= k <= G.
        block_size: at least this many gallery rows per split (0 = automatic); num_splits forces the split count.
    Returns:
        scores [Q, k] float32, indices [Q, k] int64.
    """
    q, g = _pair("q", q, "g", g)
    Q, d = q.shape
    G = g.shape[0]
    k = _int("k", k, 1)
    if k > G:
        raise ValueError(f"k must be <= the gallery size G={G}, got k={k}")
    block_size = _int("block_size", int(block_size or 0), 0)
    dev = q.device
    C = _ext()
    with torch.cuda.device(dev):
        scores = torch.empty(Q, k, dtype=torch.float32, device=dev)
        indices = torch.empty(Q, k, dtype=torch.int64, device=dev)
        ws = _workspace(C.topk_workspace_bytes(Q, G, k, block_size, num_splits), dev)
        C.topk_cuda(q.data_ptr(), _ld(q), g.data_ptr(), _ld(g), Q, G, d, k, block_size,
                    scores.data_ptr(), indices.data_ptr(), DTYPE_CODES[q.dtype], ws.data_ptr(), num_splits,
                    dev.index, _stream(dev))
    return scores, indices


def target_ranks(q, g, targets, *, return_all: bool = False, num_splits: int = 0):
    """0-based stable descending rank of each query's target(s); min over valid targets (-1 = padding).

    Args:
        q: [Q, d]; g: [G, d]; targets: int64 [Q] or [Q, T] padded with -1.
        return_all: also return the rank of every target ([Q, T], -1 at padding).
    Returns:
        ranks [Q] int64 (-1 for a row without a valid target), and all_ranks [Q, T] when return_all.
    """
    q, g = _pair("q", q, "g", g)
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
    C = _ext()
    with torch.cuda.device(dev):
        ranks = torch.empty(Q, dtype=torch.int64, device=dev)
        all_ranks = torch.empty(Q, T, dtype=torch.int64, device=dev) if return_all else None
        ws = _workspace(C.target_ranks_workspace_bytes(Q, G, T, num_splits), dev)
        C.target_ranks_cuda(q.data_ptr(), _ld(q), g.data_ptr(), _ld(g), Q, G, d, targets.data_ptr(), T,
                            ranks.data_ptr(), all_ranks.data_ptr() if return_all else 0, DTYPE_CODES[q.dtype],
                            ws.data_ptr(), num_splits, dev.index, _stream(dev))
    return (ranks, all_ranks) if return_all else ranks


def similarity(q, g):
    """scores [Q, G] float32 = q g^T (fp32 accumulation; the ops layer casts to the input dtype)."""
    q, g = _pair("q", q, "g", g)
    Q, d = q.shape
    G = g.shape[0]
    dev = q.device
    C = _ext()
    with torch.cuda.device(dev):
        out = torch.empty(Q, G, dtype=torch.float32, device=dev)
        C.similarity_cuda(q.data_ptr(), g.data_ptr(), Q, G, d, _ld(q), _ld(g), DTYPE_CODES[q.dtype],
                          out.data_ptr(), _ld(out), dev.index, _stream(dev))
    return out
