"""VSE++ triplet op family (docs/interop.md, "triplet"; NRCCR's triplet loss, docs/methods.md "nrccr").

With ``S[i, j] = b_i · a_j`` (B×B, pairs on the diagonal)::

    max_violation:  row_cost[i] = [m + max_{j≠i} S[i,j] − S[i,i]]₊,   col_cost[j] = [m + max_{i≠j} S[i,j] − S[j,j]]₊
    sum:            row_cost[i] = Σ_{j≠i} [m + S[i,j] − S[i,i]]₊,      col_cost[j] = Σ_{i≠j} [m + S[i,j] − S[j,j]]₊
    loss = Σ (row_cost + col_cost)            (reduction "mean" divides by B)

Hardest-negative ties go to the lower index; a hinge at exactly 0 has gradient 0.

Contents:
    * the plain-torch reference (the ``"torch"`` backend and the tests' oracle): :func:`triplet_forward_torch`,
      :func:`triplet_backward_torch`;
    * ``HOST``: ``{backend: host functions}`` (``ccr_fast.backends.<name>.triplet``, imported lazily);
    * :func:`triplet_forward` / :func:`triplet_backward`: the kernel contract on a named backend;
    * the custom ops ``ccr_fast::triplet_fwd`` (→ summed loss, row_idx, col_idx) and ``ccr_fast::triplet_bwd``
      (→ da, db) with fake kernels and autograd;
    * :func:`triplet_loss`: the validated entry point used by :mod:`ccr_fast.losses`.

Dtype policy: accumulation and the loss are float32 (float64 for float64 inputs); gradients come back in each
input's dtype. Under autocast the operands follow :func:`ccr_fast.ops.contrastive.autocast_operands`.
Memory: the kernels never materialise S (O(B·d) plus O(threads·B) on CPU); the torch reference does.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import dispatch
from ._common import acc_dtype
from ._validate import check_bool, check_choice, check_features, check_float

REDUCTIONS = ("sum", "mean")

# ---------------------------------------------------------------------------------------------------------------
# Plain-torch reference
# ---------------------------------------------------------------------------------------------------------------


def triplet_forward_torch(a: Tensor, b: Tensor, margin: float, max_violation: bool
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference forward (materialises S; differentiable).

    Args:
        a, b: [B, d] features (any float dtype, same device). margin: hinge margin. max_violation: hardest
            negative only (True) or sum over all negatives (False).

    Returns:
        row_cost [B], col_cost [B] (acc dtype), row_idx [B], col_idx [B] (int64; −1 in sum mode).
    """
    acc = acc_dtype(a.dtype)
    s = b.to(acc) @ a.to(acc).T
    diag = s.diagonal()
    n = s.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    if max_violation:
        masked = s.masked_fill(eye, float("-inf"))
        row_idx = masked.argmax(dim=1)  # argmax returns the first maximal index: ties -> lower index
        col_idx = masked.argmax(dim=0)
        row_cost = torch.relu(margin + masked.gather(1, row_idx[:, None])[:, 0] - diag)
        col_cost = torch.relu(margin + masked.gather(0, col_idx[None, :])[0] - diag)
        return row_cost, col_cost, row_idx, col_idx
    row_cost = torch.relu(margin + s - diag[:, None]).masked_fill(eye, 0.0).sum(dim=1)
    col_cost = torch.relu(margin + s - diag[None, :]).masked_fill(eye, 0.0).sum(dim=0)
    none = torch.full((n,), -1, dtype=torch.int64, device=s.device)
    return row_cost, col_cost, none, none.clone()


def triplet_backward_torch(a: Tensor, b: Tensor, margin: float, max_violation: bool, row_idx: Tensor,
                           col_idx: Tensor, grad: float) -> Tuple[Tensor, Tensor]:
    """Reference backward of ``grad · Σ(row_cost + col_cost)``, in closed form (no autograd, so it also runs inside
    the custom op): ``dS`` gets +1 at each active hinge's negative and −1 at its positive; ``da = dSᵀ b``,
    ``db = dS a``. Max-violation mode uses the given hardest-negative indices; a hinge at exactly 0 is inactive.

    Returns:
        da [B, d], db [B, d] in the acc dtype.
    """
    acc = acc_dtype(a.dtype)
    a_, b_ = a.detach().to(acc), b.detach().to(acc)
    s = b_ @ a_.T
    diag = s.diagonal()
    n = s.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    rows = torch.arange(n, device=s.device)
    if max_violation:
        ri, ci = row_idx.to(device=s.device, dtype=torch.int64), col_idx.to(device=s.device, dtype=torch.int64)
        act_r = ((margin + s[rows, ri] - diag) > 0).to(acc)
        act_c = ((margin + s[ci, rows] - diag) > 0).to(acc)
        ds = torch.zeros_like(s)
        ds.index_put_((rows, ri), act_r, accumulate=True)
        ds.index_put_((ci, rows), act_c, accumulate=True)
        ds = ds - torch.diag(act_r + act_c)
    else:
        h_r = ((margin + s - diag[:, None]) > 0).masked_fill(eye, False).to(acc)
        h_c = ((margin + s - diag[None, :]) > 0).masked_fill(eye, False).to(acc)
        ds = h_r + h_c - torch.diag(h_r.sum(1) + h_c.sum(0))
    ds = ds * grad
    return ds.T @ b_, ds @ a_


# ---------------------------------------------------------------------------------------------------------------
# Dispatch to a concrete backend (the kernel contract, no autograd)
# ---------------------------------------------------------------------------------------------------------------

HOST = dispatch.host_table("triplet", {"triplet_forward": triplet_forward_torch,
                                       "triplet_backward": triplet_backward_torch})


def triplet_forward(a: Tensor, b: Tensor, margin: float, max_violation: bool, *, backend: str
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Kernel-contract forward on a concrete ``backend``: row_cost, col_cost, row_idx, col_idx."""
    fwd = dispatch.host(HOST, backend, "triplet_forward", a.device)
    return fwd(a, b, float(margin), bool(max_violation))


def triplet_backward(a: Tensor, b: Tensor, margin: float, max_violation: bool, row_idx: Tensor, col_idx: Tensor,
                     grad: float, *, backend: str) -> Tuple[Tensor, Tensor]:
    """Kernel-contract backward on a concrete ``backend``: da, db (acc dtype)."""
    bwd = dispatch.host(HOST, backend, "triplet_backward", a.device)
    return bwd(a, b, float(margin), bool(max_violation), row_idx, col_idx, float(grad))


# ---------------------------------------------------------------------------------------------------------------
# Custom ops (torch.compile / autograd)
# ---------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("ccr_fast::triplet_fwd", mutates_args=())
def triplet_fwd(a: Tensor, b: Tensor, margin: float, max_violation: bool, backend: str
                ) -> Tuple[Tensor, Tensor, Tensor]:
    """Summed triplet loss (0-dim, acc dtype) plus the hardest-negative indices saved for the backward."""
    row_cost, col_cost, row_idx, col_idx = triplet_forward(a, b, margin, max_violation, backend=backend)
    return row_cost.sum() + col_cost.sum(), row_idx, col_idx


@triplet_fwd.register_fake
def _triplet_fwd_fake(a, b, margin, max_violation, backend):
    n = a.shape[0]
    return (a.new_empty((), dtype=acc_dtype(a.dtype)), a.new_empty((n,), dtype=torch.int64),
            a.new_empty((n,), dtype=torch.int64))


@torch.library.custom_op("ccr_fast::triplet_bwd", mutates_args=())
def triplet_bwd(grad: Tensor, a: Tensor, b: Tensor, row_idx: Tensor, col_idx: Tensor, margin: float,
                max_violation: bool, backend: str) -> Tuple[Tensor, Tensor]:
    """da, db (in the dtypes of a, b) of ``grad · loss``; ``grad`` is a 0-dim tensor (no host sync off-CPU)."""
    if a.device.type == "cpu":
        da, db = triplet_backward(a, b, margin, max_violation, row_idx, col_idx, float(grad), backend=backend)
    else:
        da, db = triplet_backward(a, b, margin, max_violation, row_idx, col_idx, 1.0, backend=backend)
        g = grad.to(da.dtype)
        da, db = da * g, db * g
    return da.to(a.dtype), db.to(b.dtype)


@triplet_bwd.register_fake
def _triplet_bwd_fake(grad, a, b, row_idx, col_idx, margin, max_violation, backend):
    return torch.empty_like(a, memory_format=torch.contiguous_format), torch.empty_like(
        b, memory_format=torch.contiguous_format)


def _fwd_setup_context(ctx, inputs, output):
    a, b, margin, max_violation, backend = inputs
    _, row_idx, col_idx = output
    ctx.save_for_backward(a, b, row_idx, col_idx)
    ctx.margin, ctx.max_violation, ctx.backend = margin, max_violation, backend


def _fwd_backward(ctx, grad_loss, grad_row_idx, grad_col_idx):
    a, b, row_idx, col_idx = ctx.saved_tensors
    da, db = torch.ops.ccr_fast.triplet_bwd(grad_loss, a, b, row_idx, col_idx, ctx.margin, ctx.max_violation,
                                            ctx.backend)
    return da, db, None, None, None


triplet_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Entry point used by ccr_fast.losses
# ---------------------------------------------------------------------------------------------------------------


def triplet_loss(a: Tensor, b: Tensor, *, margin: float = 0.2, max_violation: bool = True, reduction: str = "sum",
                 backend: str = "auto") -> Tensor:
    """VSE++ bidirectional hinge loss on ``S = b aᵀ`` with pairs on the diagonal (module docstring).

    Args:
        a: [B, d] features (e.g. captions), B >= 2. b: [B, d] features (e.g. videos), same device and dtype.
        margin: hinge margin α (a finite float).
        max_violation: keep only the hardest negative per row and per column (True) or sum all negatives.
        reduction: ``"sum"`` (NRCCR) or ``"mean"`` (divides by B).
        backend: ``"auto"``, ``"blas"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"torch"``.

    Returns:
        0-dim loss, float32 (float64 for float64 inputs), differentiable w.r.t. a and b.

    Raises:
        TypeError / ValueError naming the bad argument; RuntimeError for an unavailable backend.
    """
    check_features(("a", "b"), a, b)
    if a.shape[0] < 2:
        raise ValueError(f"a and b need a batch of B >= 2 rows (a negative must exist), got shape {tuple(a.shape)}")
    check_float("margin", margin)
    check_bool("max_violation", max_violation)
    check_choice("reduction", reduction, REDUCTIONS)
    a, b = dispatch.autocast_operands(a, b)
    name = dispatch.resolve("triplet", backend, a.device, a.dtype, work=a.shape[0] * a.shape[0])
    if name == "torch":
        row_cost, col_cost, _, _ = triplet_forward_torch(a, b, float(margin), max_violation)
        loss = row_cost.sum() + col_cost.sum()
    else:
        loss, _, _ = torch.ops.ccr_fast.triplet_fwd(a, b, float(margin), max_violation, name)
    if reduction == "mean":
        loss = loss / a.shape[0]
    return loss
