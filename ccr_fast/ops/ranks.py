"""Target-rank counting op family (docs/interop.md, "ranks").

For each query ``i`` and target ``t`` (a gallery index), the 0-based rank in the stable descending order::

    rank(t) = #{c : s_c > s_t} + #{c : s_c == s_t and c < t},   s_c = q_i · g_c

with the target's own score computed by the same arithmetic as the others (it never outranks itself).
``targets`` is ``[Q]`` or ``[Q, T]`` padded with −1; the best (smallest) rank over the valid targets is returned,
−1 for a row without one. Counting needs no sort and O(Q·T) memory: the kernels stream the gallery.

Contents:
    * :func:`target_ranks_torch`: the plain-torch reference (``"torch"`` backend and oracle; materialises the
      scores one block of query rows at a time);
    * :func:`target_ranks_cpu`: the CPU host function over ``ccr_fast._C.target_ranks_cpu`` (optionally also the
      rank of every target);
    * :func:`target_ranks_backend`: the kernel contract on a named backend (``"cuda"`` →
      ``ccr_fast.ops._cuda.target_ranks``, ``"triton"`` → ``ccr_fast.backends.triton.ranks.target_ranks``, lazily);
    * the custom ops ``ccr_fast::target_ranks`` (→ ranks[Q]) and ``ccr_fast::target_ranks_all`` (→ ranks[Q],
      all_ranks[Q, T]) with fake kernels (no autograd);
    * :func:`count_target_ranks`: the validated entry point behind :func:`ccr_fast.retrieval.target_ranks`.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from .._backend import DTYPE_CODES, extension, resolve_backend
from ._common import acc_dtype, cpu_operand, rows_contiguous
from .topk import _check_pair

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


def target_ranks_cpu(q: Tensor, g: Tensor, targets: Tensor, return_all: bool = False, num_splits: int = 0
                     ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """CPU kernel ranks (same outputs as :func:`target_ranks_torch`).

    Args:
        q: [Q, d], g: [G, d] CPU float tensors. targets: [Q, T] int64 in [−1, G).
        return_all: also return the rank of every target [Q, T] (−1 at padding).
        num_splits: gallery splits whose counts are summed (0 = automatic; > 1 forces the split path, for tests).
    """
    q, g = cpu_operand(q), cpu_operand(g)
    targets = targets.to(torch.int64).contiguous()
    n_q, d = q.shape
    ranks = torch.empty(n_q, dtype=torch.int64)
    all_ranks = torch.empty(n_q, targets.shape[1], dtype=torch.int64) if return_all else None
    extension().target_ranks_cpu(q.data_ptr(), q.stride(0), g.data_ptr(), g.stride(0), n_q, g.shape[0], d,
                                 targets.data_ptr(), targets.shape[1], ranks.data_ptr(),
                                 all_ranks.data_ptr() if return_all else 0, DTYPE_CODES[q.dtype], int(num_splits))
    return (ranks, all_ranks) if return_all else ranks


def _host_function(backend: str):
    if backend == "cpu":
        return target_ranks_cpu
    if backend == "torch":
        return target_ranks_torch
    if backend == "cuda":
        from . import _cuda  # noqa: PLC0415 - lazy: written against the same contract

        return _cuda.target_ranks
    if backend == "triton":
        from ..backends.triton import ranks as _tri  # noqa: PLC0415

        return _tri.target_ranks
    raise ValueError(f"backend must be a concrete backend ('cuda', 'triton', 'cpu', 'torch'), got {backend!r}")


def target_ranks_backend(q: Tensor, g: Tensor, targets: Tensor, *, backend: str, return_all: bool = False
                         ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Kernel-contract ranks on a concrete ``backend`` (no validation); ``targets`` is [Q, T] int64.

    With ``return_all`` the GPU backends (whose contract returns only the best rank) are called once per target
    column.
    """
    fn = _host_function(backend)
    if backend != "torch":
        q, g = rows_contiguous(q), rows_contiguous(g)
    if backend in ("cpu", "torch"):
        return fn(q, g, targets, return_all)
    ranks = fn(q, g, targets.contiguous())
    if not return_all:
        return ranks
    all_ranks = torch.stack([fn(q, g, targets[:, t:t + 1].contiguous()) for t in range(targets.shape[1])], dim=1)
    return ranks, all_ranks


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


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def count_target_ranks(queries: Tensor, gallery: Tensor, targets: Tensor, *, backend: str = "auto",
                       return_all: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """0-based stable descending rank of each query's target(s), streamed over the gallery.

    Args:
        queries: [Q, d] float tensor. gallery: [G, d], same device and dtype.
        targets: integer [Q] or [Q, T] gallery indices in [0, G); −1 marks padding.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"torch"``.
        return_all: also return the rank of every target, [Q, T] int64 (−1 at padding; [Q, 1] for 1-D targets).

    Returns:
        ranks [Q] int64: the best rank over the valid targets of each row (−1 for a row with none); with
        ``return_all``, ``(ranks, all_ranks)``.

    Raises:
        TypeError / ValueError naming the bad argument (shapes, dtypes, devices, NaN/Inf, target range);
        RuntimeError for an unavailable backend.
    """
    _check_pair(queries, gallery)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of gallery indices, got {type(targets).__name__}")
    if targets.dtype not in _INT_DTYPES:
        raise ValueError(f"targets must be an integer tensor (int64 preferred), got {targets.dtype}")
    if targets.device != queries.device:
        raise ValueError(f"targets must be on the device of queries ({queries.device}), got {targets.device}")
    if targets.dim() == 1:
        targets = targets[:, None]
    if targets.dim() != 2 or targets.shape[0] != queries.shape[0] or targets.shape[1] < 1:
        raise ValueError(f"targets must have shape [Q={queries.shape[0]}] or [Q={queries.shape[0]}, T>=1], got "
                         f"{tuple(targets.shape)}")
    targets = targets.to(torch.int64).contiguous()
    if not torch.compiler.is_compiling():
        lo, hi = int(targets.min()), int(targets.max())
        if lo < -1 or hi >= gallery.shape[0]:
            raise ValueError(f"targets must be gallery indices in [0, G={gallery.shape[0]}) or -1 for padding, got "
                             f"values in [{lo}, {hi}]")
    name = resolve_backend(backend, queries.device, op="target_ranks")
    if name in ("triton", "cuda") and queries.dtype == torch.float64:
        raise RuntimeError(f"backend {name!r} does not take float64 inputs; use backend='cpu' or 'torch'")
    queries, gallery = queries.detach(), gallery.detach()
    if return_all:
        return torch.ops.ccr_fast.target_ranks_all(queries, gallery, targets, name)
    return torch.ops.ccr_fast.target_ranks(queries, gallery, targets, name)
