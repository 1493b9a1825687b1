"""Streaming top-K op family (docs/interop.md, "topk").

``topk(q[Q,d], g[G,d], k)``: the k highest inner products ``q_i · g_c`` per query, sorted descending, ties broken
by the lower gallery index (a total order, so the answer is unique). The kernels stream the gallery in blocks and
keep O(Q·k) state; the Q×G matrix never exists.

Contents:
    * :func:`topk_torch`: the plain-torch reference (the ``"torch"`` backend and the tests' oracle); it
      materialises the scores one block of query rows at a time and uses a stable descending sort;
    * ``HOST``: ``{backend: host functions}`` (``ccr_fast.backends.<name>.topk``, imported lazily);
    * :func:`topk_backend`: the kernel contract on a named backend;
    * the custom op ``ccr_fast::topk`` (fake kernel; no autograd), so ``torch.compile`` sees one opaque op;
    * :func:`streaming_topk`: the validated entry point behind :func:`ccr_fast.retrieval.topk`.

Dtype policy: scores are accumulated in float32 (float64 for float64 inputs; fp16/bf16 are widened to float32
first on CPU) and returned in the input dtype by :func:`streaming_topk`; indices are int64.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import dispatch
from ._common import acc_dtype, check_finite, check_same, check_tensor

# Scores the reference materialises at once (elements): 4M fp32 = 16 MiB per block of query rows.
_REFERENCE_BLOCK_ELEMS = 1 << 22


def topk_torch(q: Tensor, g: Tensor, k: int, block_size: int = 0) -> Tuple[Tensor, Tensor]:
    """Reference top-k: scores [Q, k] (acc dtype) and indices [Q, k] int64, sorted descending, ties -> lower index.

    ``block_size`` is accepted for signature parity and ignored; the reference blocks over query rows instead.
    """
    acc = acc_dtype(q.dtype)
    gt = g.to(acc).T
    rows = max(1, _REFERENCE_BLOCK_ELEMS // max(1, g.shape[0]))
    scores, indices = [], []
    for q0 in range(0, q.shape[0], rows):
        s = q[q0:q0 + rows].to(acc) @ gt
        vals, order = torch.sort(s, dim=1, descending=True, stable=True)
        scores.append(vals[:, :k])
        indices.append(order[:, :k])
    return torch.cat(scores), torch.cat(indices)


HOST = dispatch.host_table("topk", {"topk": topk_torch})


def topk_backend(q: Tensor, g: Tensor, k: int, block_size: int, *, backend: str) -> Tuple[Tensor, Tensor]:
    """Kernel-contract top-k on a concrete ``backend`` (no validation): scores [Q, k] acc, indices [Q, k] int64."""
    return dispatch.host(HOST, backend, "topk")(q, g, int(k), int(block_size))


@torch.library.custom_op("ccr_fast::topk", mutates_args=())
def topk_op(q: Tensor, g: Tensor, k: int, block_size: int, backend: str) -> Tuple[Tensor, Tensor]:
    """Custom op wrapper of :func:`topk_backend` (outputs in the acc dtype / int64)."""
    return topk_backend(q, g, k, block_size, backend=backend)


@topk_op.register_fake
def _topk_fake(q, g, k, block_size, backend):
    n_q = q.shape[0]
    return q.new_empty((n_q, k), dtype=acc_dtype(q.dtype)), q.new_empty((n_q, k), dtype=torch.int64)


def _check_pair(queries, gallery) -> None:
    check_tensor("queries", queries, ndim=2)
    check_tensor("gallery", gallery, ndim=2)
    check_same(("queries", "gallery"), (queries, gallery))
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"gallery must have feature size d={queries.shape[1]} like queries, got shape "
                         f"{tuple(gallery.shape)}")
    if not torch.compiler.is_compiling():  # a data-dependent check: skipped inside a compiled graph
        check_finite("queries", queries)
        check_finite("gallery", gallery)


def streaming_topk(queries: Tensor, gallery: Tensor, k: int, *, block_size: Optional[int] = None,
                   backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """The k highest inner products of each query over the gallery, streamed (never the Q×G matrix).

    Args:
        queries: [Q, d] float tensor. gallery: [G, d], same device and dtype.
        k: number of results per query, 1 <= k <= G.
        block_size: gallery rows per streamed block (None = the backend's default).
        backend: ``"auto"``, ``"blas"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"torch"``.

    Returns:
        scores [Q, k] in the input dtype, sorted descending; indices [Q, k] int64, ties -> lower gallery index.

    Raises:
        TypeError / ValueError naming the bad argument (shapes, dtypes, devices, NaN/Inf, k, block_size);
        RuntimeError for an unavailable backend.
    """
    _check_pair(queries, gallery)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1 or k > gallery.shape[0]:
        raise ValueError(f"k must be in [1, G={gallery.shape[0]}] (gallery rows), got {k}")
    if block_size is None:
        block_size = 0
    elif isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int or None, got {type(block_size).__name__}")
    elif block_size < 1:
        raise ValueError(f"block_size must be >= 1 (or None for the default), got {block_size}")
    name = dispatch.resolve("topk", backend, queries.device, queries.dtype, work=queries.shape[0] * gallery.shape[0])
    # top-k is not differentiable here: the op sees detached operands
    scores, indices = torch.ops.ccr_fast.topk(queries.detach(), gallery.detach(), k, block_size, name)
    return scores.to(queries.dtype), indices
