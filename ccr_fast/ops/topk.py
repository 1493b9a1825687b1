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

Exactness (docs/exactness.md): every backend only proposes candidates; :mod:`ccr_fast.ops.exact` re-scores them in
float64, proves with an error bound that no other gallery row can belong to the top k, and orders them by (float64
score desc, index asc). Scores are returned in the input dtype (the float64 scores rounded); indices are int64.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import dispatch, exact
from ._common import acc_dtype
from ._validate import check_int, check_pair

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


def _host_or_none(backend: str, name: str, device: torch.device):
    try:
        return dispatch.host(HOST, backend, name, device)
    except (AttributeError, KeyError):
        return None


def candidates_backend(q: Tensor, g: Tensor, kp: int, block_size: int, *, backend: str
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """A backend's best ``kp`` candidates by its own scores and their error bound E(q) [Q] float64.

    A host module may define ``topk_candidates(q, g, kp, block_size) -> (scores, indices, E)`` (its own scorer and
    bound, e.g. the bf16 scorer of ``blas``; it returns None when it does not apply); otherwise its ``topk`` gives
    the candidates and :func:`ccr_fast.ops.exact.generic_bound` the bound, with the backend's rounding model.
    """
    fn = _host_or_none(backend, "topk_candidates", q.device)
    if fn is not None:
        res = fn(q, g, int(kp), int(block_size))
        if res is not None:
            return res
    s, i = dispatch.host(HOST, backend, "topk", q.device)(q, g, int(kp), int(block_size))
    return s, i, exact.generic_bound(q, g, **exact.error_units(backend, q.device, q.dtype))


def topk_backend(q: Tensor, g: Tensor, k: int, block_size: int, *, backend: str) -> Tuple[Tensor, Tensor]:
    """Float64-exact top-k on a concrete ``backend`` (no validation): scores [Q, k] acc, indices [Q, k] int64.

    The backend proposes ``k' > k`` candidates, :func:`ccr_fast.ops.exact.exact_topk` certifies them against the
    error bound (widening ``k'`` or settling a query in float64 where it cannot) and orders them by (float64 score
    desc, index asc). The scores returned are the float64 scores rounded to the acc dtype.
    """
    n_g = g.shape[0]
    first = _host_or_none(backend, "candidate_count", q.device)
    k_first = min(n_g, (first or (lambda k: k + max(8, k // 2)))(int(k)))
    s64, idx = exact.exact_topk(q, g, int(k), lambda qs, kp: candidates_backend(qs, g, kp, block_size,
                                                                                 backend=backend), k_first)
    return s64.to(acc_dtype(q.dtype)), idx


@torch.library.custom_op("ccr_fast::topk", mutates_args=())
def topk_op(q: Tensor, g: Tensor, k: int, block_size: int, backend: str) -> Tuple[Tensor, Tensor]:
    """Custom op wrapper of :func:`topk_backend` (outputs in the acc dtype / int64)."""
    return topk_backend(q, g, k, block_size, backend=backend)


@topk_op.register_fake
def _topk_fake(q, g, k, block_size, backend):
    n_q = q.shape[0]
    return q.new_empty((n_q, k), dtype=acc_dtype(q.dtype)), q.new_empty((n_q, k), dtype=torch.int64)


def _check_pair(queries, gallery) -> None:
    check_pair(queries, gallery)


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
    check_int("k", k, low=1, high=gallery.shape[0], high_name="G", what=" (gallery rows)")
    block_size = 0 if block_size is None else check_int("block_size", block_size, low=1,
                                                        what=" (or None for the default)")
    name = dispatch.resolve("topk", backend, queries.device, queries.dtype, work=queries.shape[0] * gallery.shape[0])
    # top-k is not differentiable here: the op sees detached operands
    scores, indices = torch.ops.ccr_fast.topk(queries.detach(), gallery.detach(), k, block_size, name)
    return scores.to(queries.dtype), indices
