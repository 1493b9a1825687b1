"""Target-rank counting op family (docs/interop.md, "ranks").

For each query ``i`` and target ``t`` (a gallery index), the 0-based rank in the stable descending order::

    rank(t) = #{c : s_c > s_t} + #{c : s_c == s_t and c < t},   s_c = q_i · g_c

on the float64 scores (docs/exactness.md: fast scores, an error band around the float64 target score, the band
re-scored in float64; ties to the lower index).
``targets`` is ``[Q]`` or ``[Q, T]`` padded with −1; the best (smallest) rank over the valid targets is returned,
−1 for a row without one. Counting needs no sort and O(Q·T) memory: the kernels stream the gallery.

Contents:
    * :func:`target_ranks_torch`: the plain-torch reference (``"torch"`` backend and oracle; materialises the
      scores one block of query rows at a time);
    * ``HOST``: ``{backend: host functions}`` (``ccr_fast.backends.<name>.ranks``, imported lazily); the ``cpu``
      and ``blas`` CPU kernels are exact in float64 themselves; other backends are made exact through their
      similarity kernel and :func:`ccr_fast.ops.exact.exact_ranks`;
    * :func:`target_ranks_backend`: the kernel contract on a named backend;
    * the custom ops ``ccr_fast::target_ranks`` (→ ranks[Q]) and ``ccr_fast::target_ranks_all`` (→ ranks[Q],
      all_ranks[Q, T]) with fake kernels (no autograd);
    * :func:`count_target_ranks`: the validated entry point behind :func:`ccr_fast.retrieval.target_ranks`.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from . import dispatch, exact
from ._common import acc_dtype
from ._validate import check_pair, check_targets

_REFERENCE_BLOCK_ELEMS = 1 << 22  # compare-tensor elements (rows · T · G) the reference builds at once


def target_ranks_torch(q: Tensor, g: Tensor, targets: Tensor, return_all: bool = False
                       ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Reference ranks: ranks [Q] int64 (and all_ranks [Q, T] with −1 at padding when ``return_all``)."""
    acc = acc_dtype(q.dtype)
    gt = g.to(acc).T
    n_g = g.shape[0]
    n_t = targets.shape[1]
    cand = torch.arange(n_g, device=q.device)
    rows = max(1, _REFERENCE_BLOCK_ELEMS // max(1, n_g * n_t))
    out = []
    for q0 in range(0, q.shape[0], rows):
        s = q[q0:q0 + rows].to(acc) @ gt  # [r, G]
        t = targets[q0:q0 + rows]  # [r, T]
        valid = t >= 0
        st = s.gather(1, t.clamp_min(0))  # the targets' scores, taken from the same product
        above = (s[:, None, :] > st[:, :, None]) | ((s[:, None, :] == st[:, :, None]) & (cand < t[:, :, None]))
        out.append(torch.where(valid, above.sum(dim=2), torch.full_like(t, -1)))
    all_ranks = torch.cat(out)
    big = torch.iinfo(torch.int64).max
    best = torch.where(all_ranks >= 0, all_ranks, torch.full_like(all_ranks, big)).min(dim=1).values
    ranks = torch.where(best == big, torch.full_like(best, -1), best)
    return (ranks, all_ranks) if return_all else ranks


HOST = dispatch.host_table("ranks", {"target_ranks": target_ranks_torch})

# Backends whose CPU kernels are exact in float64 themselves (csrc/cpu/ranks.cpp, blas_retrieval.cpp: GEMM tiles,
# band counts around the float64 target score, the band re-scored in float64) and take ``return_all``.
_EXACT_KERNELS = ("cpu", "blas")


def target_ranks_backend(q: Tensor, g: Tensor, targets: Tensor, *, backend: str, return_all: bool = False
                         ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Float64-exact ranks on a concrete ``backend`` (no validation); ``targets`` is [Q, T] int64.

    ``cpu``/``blas`` on CPU tensors: their fused kernels (exact in float64). Every other backend (and device):
    the backend's similarity kernel scores row blocks and :func:`ccr_fast.ops.exact.exact_ranks` counts the rows
    clearly above the float64 target score and re-scores the ambiguous band in float64 (docs/exactness.md).
    """
    if backend in _EXACT_KERNELS and q.device.type == "cpu":
        return dispatch.host(HOST, backend, "target_ranks", q.device)(q, g, targets, return_all)
    from . import similarity as _sim  # noqa: PLC0415 - similarity imports nothing from here

    sim = dispatch.host(_sim.HOST, backend, "similarity", q.device)
    err = exact.generic_bound(q, g, **exact.error_units(backend, q.device, q.dtype))
    all_ranks = exact.exact_ranks(q, g, targets, lambda rows: sim(rows, g), err)
    big = torch.iinfo(torch.int64).max
    best = torch.where(all_ranks >= 0, all_ranks, torch.full_like(all_ranks, big)).min(dim=1).values
    ranks = torch.where(best == big, torch.full_like(best, -1), best)
    return (ranks, all_ranks) if return_all else ranks


@torch.library.custom_op("ccr_fast::target_ranks", mutates_args=())
def target_ranks_op(q: Tensor, g: Tensor, targets: Tensor, backend: str) -> Tensor:
    """Custom op: best rank per query [Q] int64."""
    return target_ranks_backend(q, g, targets, backend=backend)


@target_ranks_op.register_fake
def _target_ranks_fake(q, g, targets, backend):
    return q.new_empty((q.shape[0],), dtype=torch.int64)


@torch.library.custom_op("ccr_fast::target_ranks_all", mutates_args=())
def target_ranks_all_op(q: Tensor, g: Tensor, targets: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    """Custom op: best rank per query [Q] and the rank of every target [Q, T] (−1 at padding), int64."""
    return target_ranks_backend(q, g, targets, backend=backend, return_all=True)


@target_ranks_all_op.register_fake
def _target_ranks_all_fake(q, g, targets, backend):
    return (q.new_empty((q.shape[0],), dtype=torch.int64),
            q.new_empty((q.shape[0], targets.shape[1]), dtype=torch.int64))



def count_target_ranks(queries: Tensor, gallery: Tensor, targets: Tensor, *, backend: str = "auto",
                       return_all: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """0-based stable descending rank of each query's target(s), streamed over the gallery.

    Args:
        queries: [Q, d] float tensor. gallery: [G, d], same device and dtype.
        targets: integer [Q] or [Q, T] gallery indices in [0, G); −1 marks padding.
        backend: ``"auto"``, ``"blas"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"torch"``.
        return_all: also return the rank of every target, [Q, T] int64 (−1 at padding; [Q, 1] for 1-D targets).

    Returns:
        ranks [Q] int64: the best rank over the valid targets of each row (−1 for a row with none); with
        ``return_all``, ``(ranks, all_ranks)``.

    Raises:
        TypeError / ValueError naming the bad argument (shapes, dtypes, devices, NaN/Inf, target range);
        RuntimeError for an unavailable backend.
    """
    check_pair(queries, gallery)
    targets = check_targets(targets, queries.shape[0], gallery.shape[0], queries.device)
    name = dispatch.resolve("ranks", backend, queries.device, queries.dtype, work=queries.shape[0] * gallery.shape[0])
    queries, gallery = queries.detach(), gallery.detach()
    if return_all:
        return torch.ops.ccr_fast.target_ranks_all(queries, gallery, targets, name)
    return torch.ops.ccr_fast.target_ranks(queries, gallery, targets, name)
