"""Contrastive op family: CLIP InfoNCE, CCR^k 1-to-K and open_clip's local loss (docs/interop.md, "contrastive").

One primitive serves every loss. With ``Z = scale · x yᵀ`` (M×N, never materialised by the kernels) and the
positive rule ``pos(r, c) ⇔ (r + row_off) // row_div == (c + col_off) // col_div``::

    loss = w_row · Σ_r (npos_row[r] · lse_row[r] − pos_row[r]) + w_col · Σ_c (npos_col[c] · lse_col[c] − pos_col[c])

i.e. the (multi-positive) cross-entropy of every row over the columns and of every column over the rows, each
direction weighted. CLIP: ``(0, 1, 0, 1)``, ``w_row = w_col = 1/(2B)``. 1-to-K (texts image-major as columns):
``(0, 1, 0, K)``. Rows (columns) without a positive contribute nothing.

Contents:
    * the plain-torch reference of the kernel contract (the ``"torch"`` backend, and the tests' oracle for
      the other backends): :func:`contrastive_forward_torch`, :func:`contrastive_backward_torch`;
    * ``HOST``: ``{backend: host functions}`` (``ccr_fast.backends.<name>.contrastive``, imported lazily);
    * :func:`contrastive_forward` / :func:`contrastive_backward`: the kernel contract on a named backend;
    * the custom ops ``ccr_fast::contrastive_fwd`` (→ loss, lse_row, lse_col, kept scores) and
      ``ccr_fast::contrastive_bwd`` (→ dx, dy, dscale) with fake kernels and autograd, so
      ``torch.compile(fullgraph=True)`` sees one opaque op;
    * :func:`contrastive_loss`: the entry the public losses call (autocast policy and backend choice through
      :mod:`ccr_fast.ops.dispatch`).

Keep-Z (``"blas"`` on CPU): when the whole ``M×N`` score matrix fits the blas workspace budget
(:func:`ccr_fast.backends.blas.keeps_scores`), the forward writes ``Z`` into a buffer saved for the backward,
which reads it instead of recomputing the tiles (one GEMM less). Otherwise the buffer is empty.

Autocast policy (the ``custom_fwd``/``custom_bwd``-without-casting rule): when autocast is enabled
for the inputs' device, float16/float32/bfloat16 features are cast to the autocast dtype (fp64 is left alone),
all reductions stay fp32 and the loss is fp32; gradients come back in each input's own dtype (the cast is part
of the autograd graph). Without autocast, the inputs' dtype is used as is.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import dispatch
from ._common import acc_dtype

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------------------------
# Positive rule helpers
# ---------------------------------------------------------------------------------------------------------------


def positive_mask(M: int, N: int, row_off: int, row_div: int, col_off: int, col_div: int,
                  device=None) -> Tensor:
    """Dense bool ``[M, N]`` mask of the positive pairs (reference / tests only: O(M·N))."""
    r = (torch.arange(M, device=device) + row_off) // row_div
    c = (torch.arange(N, device=device) + col_off) // col_div
    return r[:, None] == c[None, :]


def positive_counts(M: int, N: int, row_off: int, row_div: int, col_off: int, col_div: int, device=None,
                    dtype=torch.float32) -> Tuple[Tensor, Tensor]:
    """Number of positives of every row ``[M]`` and every column ``[N]``, in O(M + N).

    Row ``r`` (key ``g = (r + row_off) // row_div``) is positive with the columns
    ``[g·col_div − col_off, (g+1)·col_div − col_off) ∩ [0, N)``; columns likewise.
    """
    g = (torch.arange(M, device=device) + row_off) // row_div
    lo = g * col_div - col_off
    npos_row = ((lo + col_div).clamp(max=N) - lo.clamp(min=0)).clamp(min=0)
    h = (torch.arange(N, device=device) + col_off) // col_div
    lo = h * row_div - row_off
    npos_col = ((lo + row_div).clamp(max=M) - lo.clamp(min=0)).clamp(min=0)
    return npos_row.to(dtype), npos_col.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Plain-torch reference of the kernel contract (the "torch" backend)
# ---------------------------------------------------------------------------------------------------------------


def contrastive_forward_torch(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int,
                              col_div: int, compute_col: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference forward: materialises ``Z`` (M×N) in the accumulation dtype.

    Args:
        x: [M, d] rows. y: [N, d] columns. scale: 0-dim tensor.
        row_off, row_div, col_off, col_div: the positive rule. compute_col: also the column LSE.

    Returns:
        lse_row [M], lse_col [N] (zeros when not ``compute_col``), pos_row [M], pos_col [N], all acc dtype.
    """
    acc = acc_dtype(x.dtype)
    z = scale.to(acc) * (x.to(acc) @ y.to(acc).T)
    pos = positive_mask(x.shape[0], y.shape[0], row_off, row_div, col_off, col_div, x.device)
    zp = torch.where(pos, z, torch.zeros((), dtype=acc, device=z.device))
    lse_col = torch.logsumexp(z, dim=0) if compute_col else torch.zeros(y.shape[0], dtype=acc, device=x.device)
    return torch.logsumexp(z, dim=1), lse_col, zp.sum(1), zp.sum(0)


def contrastive_backward_torch(x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor,
                               row_coef: Tensor, col_coef: Tensor, w_pos: float, row_off: int, row_div: int,
                               col_off: int, col_div: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference backward: ``dZ = row_coef·P + col_coef·Q − w_pos·[pos]`` (zero coefficients skip their term).

    Returns:
        dx [M, d], dy [N, d], dscale 0-dim, all acc dtype.
    """
    acc = acc_dtype(x.dtype)
    xa, ya, s = x.to(acc), y.to(acc), scale.to(acc)
    raw = xa @ ya.T
    z = s * raw
    zero = torch.zeros((), dtype=acc, device=x.device)
    rc, cc = row_coef.to(acc)[:, None], col_coef.to(acc)[None, :]
    dz = torch.where(rc != 0, rc * torch.exp(z - lse_row.to(acc)[:, None]), zero)
    dz = dz + torch.where(cc != 0, cc * torch.exp(z - lse_col.to(acc)[None, :]), zero)
    dz = dz - w_pos * positive_mask(x.shape[0], y.shape[0], row_off, row_div, col_off, col_div, x.device).to(acc)
    return s * (dz @ ya), s * (dz.T @ xa), (dz * raw).sum()


# ---------------------------------------------------------------------------------------------------------------
# Backend dispatch
# ---------------------------------------------------------------------------------------------------------------

HOST = dispatch.host_table("contrastive", {"contrastive_forward": contrastive_forward_torch,
                                           "contrastive_backward": contrastive_backward_torch})


def _kernel_scale(scale: Tensor, x: Tensor) -> Tensor:
    """The scale as the kernels take it: a 0-dim tensor in the accumulation dtype, no grad."""
    return scale.detach().to(device=x.device, dtype=acc_dtype(x.dtype)).reshape(())


def contrastive_forward(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int, col_div: int,
                        compute_col: bool, *, backend: str, keep: Optional[Tensor] = None
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Kernel-contract forward on a concrete ``backend`` (no autograd). See the module docstring.

    ``keep`` ([M, N] acc dtype, blas only): also store ``Z`` there for :func:`contrastive_backward`.
    """
    fwd = dispatch.host(HOST, backend, "contrastive_forward", x.device)
    kw = {} if keep is None else {"keep": keep}
    return fwd(x, y, _kernel_scale(scale, x), row_off, row_div, col_off, col_div, compute_col, **kw)


def contrastive_backward(x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor, row_coef: Tensor,
                         col_coef: Tensor, w_pos: float, row_off: int, row_div: int, col_off: int, col_div: int, *,
                         backend: str, saved: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Kernel-contract backward on a concrete ``backend`` (no autograd). See the module docstring.

    ``saved`` (blas only): the raw scores kept by the forward (read only).
    """
    bwd = dispatch.host(HOST, backend, "contrastive_backward", x.device)
    kw = {} if saved is None or saved.numel() == 0 else {"saved": saved}
    return bwd(x, y, _kernel_scale(scale, x), lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div,
               col_off, col_div, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Custom ops (torch.compile / autograd)
# ---------------------------------------------------------------------------------------------------------------


def _keep_shape(x: Tensor, y: Tensor, backend: str) -> Tuple[int, ...]:
    """Shape of the kept-scores buffer: [M, N] when ``backend`` keeps Z (blas on CPU, within budget), else [0]."""
    if backend == "blas" and x.device.type == "cpu" and x.dtype != torch.bfloat16:  # bf16: recomputed (faster)
        from ..backends.blas import keeps_scores  # noqa: PLC0415

        if keeps_scores(x.shape[0], y.shape[0], acc_dtype(x.dtype)):
            return (x.shape[0], y.shape[0])
    return (0,)


@torch.library.custom_op("ccr_fast::contrastive_fwd", mutates_args=())
def contrastive_fwd(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int, col_div: int,
                    w_row: float, w_col: float, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused contrastive loss forward.

    Args:
        x: [M, d] rows. y: [N, d] columns (same dtype/device). scale: 0-dim logit scale.
        row_off, row_div, col_off, col_div: positive rule. w_row, w_col: direction weights (``w_col = 0``:
        row-only cross-entropy, the column LSE is skipped). backend: a concrete backend name.

    Returns:
        loss 0-dim, lse_row [M], lse_col [N] (acc dtype; the LSEs are saved for backward, not differentiable),
        kept [M, N] acc (the scores kept for the backward, see the module docstring) or [0].
    """
    with torch.autocast(x.device.type, enabled=False):
        kept = x.new_empty(_keep_shape(x, y, backend), dtype=acc_dtype(x.dtype))
        lse_row, lse_col, pos_row, pos_col = contrastive_forward(
            x, y, scale, row_off, row_div, col_off, col_div, w_col != 0.0, backend=backend,
            keep=kept if kept.numel() else None)
        npos_row, npos_col = positive_counts(x.shape[0], y.shape[0], row_off, row_div, col_off, col_div,
                                             x.device, lse_row.dtype)
        loss = w_row * (npos_row * lse_row - pos_row).sum()
        if w_col != 0.0:
            loss = loss + w_col * (npos_col * lse_col - pos_col).sum()
    return loss, lse_row, lse_col, kept


@contrastive_fwd.register_fake
def _contrastive_fwd_fake(x, y, scale, row_off, row_div, col_off, col_div, w_row, w_col, backend):
    acc = acc_dtype(x.dtype)
    return (x.new_empty((), dtype=acc), x.new_empty((x.shape[0],), dtype=acc), x.new_empty((y.shape[0],), dtype=acc),
            x.new_empty(_keep_shape(x, y, backend), dtype=acc))


@torch.library.custom_op("ccr_fast::contrastive_bwd", mutates_args=())
def contrastive_bwd(grad: Tensor, x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor,
                    kept: Tensor, row_off: int, row_div: int, col_off: int, col_div: int, w_row: float, w_col: float,
                    backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``grad · loss`` of :func:`contrastive_fwd`.

    The kernel runs with the unit-gradient coefficients (``row_coef = w_row·npos_row``, ``col_coef =
    w_col·npos_col``, ``w_pos = w_row + w_col``) and the results are multiplied by ``grad`` on the device
    (dZ is linear in the three coefficients), so no host sync is needed for the upstream gradient. A non-empty
    ``kept`` (the forward's raw scores) is read instead of recomputing them.

    Returns:
        dx [M, d] in x's dtype, dy [N, d] in y's dtype, dscale 0-dim in scale's dtype.
    """
    with torch.autocast(x.device.type, enabled=False):
        acc = lse_row.dtype
        npos_row, npos_col = positive_counts(x.shape[0], y.shape[0], row_off, row_div, col_off, col_div,
                                             x.device, acc)
        dx, dy, dscale = contrastive_backward(x, y, scale, lse_row, lse_col, w_row * npos_row, w_col * npos_col,
                                              w_row + w_col, row_off, row_div, col_off, col_div, backend=backend,
                                              saved=kept)
        g = grad.to(acc)
        return (dx * g).to(x.dtype), (dy * g).to(y.dtype), (dscale * g).to(scale.dtype)


@contrastive_bwd.register_fake
def _contrastive_bwd_fake(grad, x, y, scale, lse_row, lse_col, kept, row_off, row_div, col_off, col_div, w_row,
                          w_col, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(y, memory_format=torch.contiguous_format), scale.new_empty(())


def _fwd_setup_context(ctx, inputs, output):
    x, y, scale, row_off, row_div, col_off, col_div, w_row, w_col, backend = inputs
    _, lse_row, lse_col, kept = output
    ctx.mark_non_differentiable(lse_row, lse_col, kept)
    ctx.save_for_backward(x, y, scale, lse_row, lse_col, kept)
    ctx.args = (row_off, row_div, col_off, col_div, w_row, w_col, backend)


def _fwd_backward(ctx, grad_loss, grad_lse_row, grad_lse_col, grad_kept):
    x, y, scale, lse_row, lse_col, kept = ctx.saved_tensors
    dx, dy, dscale = torch.ops.ccr_fast.contrastive_bwd(grad_loss, x, y, scale, lse_row, lse_col, kept, *ctx.args)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dy if need[1] else None, dscale if need[2] else None,
            None, None, None, None, None, None, None)


contrastive_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Entry point used by ccr_fast.losses
# ---------------------------------------------------------------------------------------------------------------

autocast_operands = dispatch.autocast_operands


def contrastive_loss(x: Tensor, y: Tensor, scale: Tensor, *, row_off: int = 0, row_div: int = 1, col_off: int = 0,
                     col_div: int = 1, w_row: float, w_col: float, backend: str = "auto") -> Tensor:
    """Weighted two-direction contrastive cross-entropy of ``Z = scale · x yᵀ`` (module docstring), fp32 out.

    Args:
        x: [M, d], y: [N, d] validated features. scale: 0-dim tensor (may require grad).
        row_off, row_div, col_off, col_div: the positive rule. w_row, w_col: direction weights.
        backend: ``"auto"`` or a backend name (resolved by :func:`ccr_fast.ops.dispatch.resolve`).

    Returns:
        0-dim loss (float32; float64 for float64 inputs).
    """
    x, y = dispatch.autocast_operands(x, y)
    name = dispatch.resolve("contrastive", backend, x.device, x.dtype, work=x.shape[0] * y.shape[0])
    loss = torch.ops.ccr_fast.contrastive_fwd(x, y, scale, int(row_off), int(row_div), int(col_off), int(col_div),
                                              float(w_row), float(w_col), name)[0]
    return loss
