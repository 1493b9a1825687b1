"""``"blas"`` top-k host function (docs/interop.md, "topk"): GEMM tiles + a threshold-filtered bounded heap per row
(csrc/cpu/blas_retrieval.cpp). CPU tensors only; the CUDA host functions are
``ccr_fast.backends.blas.gpu`` (a separate entry of the dispatch table)."""
from __future__ import annotations

from typing import Tuple

import torch

from .._bf16_candidates import lowp_bound
from .._operands import cpu_pair
from ..registry import DTYPE_CODES, extension
from . import _gemm

Tensor = torch.Tensor


def topk(q: Tensor, g: Tensor, k: int, block_size: int = 0, *, num_splits: int = 0) -> Tuple[Tensor, Tensor]:
    """scores [Q, k] acc, indices [Q, k] int64: sorted descending, ties -> lower gallery index.

    ``block_size``: gallery rows per GEMM tile (0 = 1024). ``num_splits`` > 1 forces the gallery split-and-merge
    path (tests; 0 = automatic, used when there are too few query tiles for the threads).
    """
    _gemm.ensure()
    q, g = cpu_pair(q, g)
    n_q, d = q.shape
    scores = torch.empty(n_q, k, dtype=q.dtype)
    indices = torch.empty(n_q, k, dtype=torch.int64)
    extension().blas_topk(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], d, int(k),
                          scores.data_ptr(), indices.data_ptr(), DTYPE_CODES[q.dtype], tile_n=int(block_size),
                          num_splits=int(num_splits))
    return scores, indices


# Candidates the bf16 scorer proposes for a top-k: its bound is ~2^-8 ||q|| ||g|| wide, so it keeps more rows than
# the fp32 paths (a query the bound cannot certify is widened fourfold, then settled in float64).
def candidate_count(k: int) -> int:
    """k' of the first candidate round of ``topk_candidates``."""
    return 2 * k + 32


def topk_candidates(q: Tensor, g: Tensor, kp: int, block_size: int = 0):
    """bf16 candidates of fp32 inputs (csrc/cpu/exact.cpp ``lowp_topk``), or None when the bf16 GEMM is absent.

    The gallery and queries are rounded to bf16 (``x = x_hi + x_lo``), scored by the oneDNN BRGeMM (bf16 products,
    fp32 accumulation, fp32 scores) with a fused bounded heap per query. Returns scores [Q, kp] float32, indices
    [Q, kp] int64 (best first) and the bound E(q) [Q] float64 of |score − float64 score| for every gallery row:
    ``(||q_lo|| max||g|| + ||q_hi|| max||g_lo|| + γ_{d+1}(2^-24) ||q_hi|| max||g_hi|| + 2 γ_{d+8}(2^-53) ||q||
    max||g||)`` plus a subnormal term (docs/exactness.md).
    """
    if q.dtype != torch.float32 or g.dtype != torch.float32 or q.device.type != "cpu":
        return None
    try:
        from . import _lowp  # noqa: PLC0415
    except ImportError:
        return None
    if not hasattr(extension(), "lowp_topk") or not _lowp.available():
        return None
    q, g = cpu_pair(q, g)
    n_q, d = q.shape
    scores = torch.empty(n_q, kp, dtype=torch.float32)
    indices = torch.empty(n_q, kp, dtype=torch.int64)
    q_norms = torch.empty(n_q, 3, dtype=torch.float64)
    g_max = torch.empty(3, dtype=torch.float64)
    extension().lowp_topk(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], d, int(kp),
                          scores.data_ptr(), indices.data_ptr(), q_norms.data_ptr(), g_max.data_ptr())
    return scores, indices, lowp_bound(q_norms, g_max.tolist(), d)
