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
    * the CPU host functions over ``ccr_fast._C``: :func:`contrastive_forward_cpu`, :func:`contrastive_backward_cpu`;
    * :func:`contrastive_forward` / :func:`contrastive_backward`: dispatch to a named backend (``"cuda"`` →
      ``ccr_fast.ops._cuda``, ``"triton"`` → ``ccr_fast.backends.triton.contrastive``, imported lazily);
    * the custom ops ``ccr_fast::contrastive_fwd`` (→ loss, lse_row, lse_col) and ``ccr_fast::contrastive_bwd``
      (→ dx, dy, dscale) with fake kernels and autograd, so ``torch.compile(fullgraph=True)`` sees one opaque op;
    * :func:`contrastive_loss`: the entry the public losses call (autocast policy, backend choice).

Autocast policy (kernels.md §6, the ``custom_fwd``/``custom_bwd``-without-casting rule): when autocast is enabled
for the inputs' device, float16/float32/bfloat16 features are cast to the autocast dtype (fp64 is left alone),
all reductions stay fp32 and the loss is fp32; gradients come back in each input's own dtype (the cast is part
of the autograd graph). Without autocast, the inputs' dtype is used as is.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._backend import DTYPE_CODES, extension, resolve_backend
from ._common import acc_dtype, cpu_operand, rows_contiguous

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
# CPU host functions (ccr_fast._C)
# ---------------------------------------------------------------------------------------------------------------


def contrastive_forward_cpu(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int,
                            col_div: int, compute_col: bool, *, tile_m: int = 0,
                            tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """CPU kernel forward (same contract as :func:`contrastive_forward_torch`).

    fp16/bf16 operands are converted to float32 first. ``tile_m``/``tile_n`` override the kernel's tile sizes
    (0 = default; tests use small tiles to exercise the multi-tile paths).
    """
    x, y = cpu_operand(x), cpu_operand(y)
    if x.dtype != y.dtype:  # float32 vs float64: compute in the wider one
        x, y = x.double(), y.double()
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    lse_row, pos_row = torch.empty(M, dtype=acc), torch.empty(M, dtype=acc)
    lse_col, pos_col = torch.empty(N, dtype=acc), torch.empty(N, dtype=acc)
    extension().contrastive_forward_cpu(
        x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc], float(scale),
        int(row_off), int(row_div), int(col_off), int(col_div), bool(compute_col),
        lse_row.data_ptr(), lse_col.data_ptr(), pos_row.data_ptr(), pos_col.data_ptr(), tile_m=tile_m, tile_n=tile_n)
    return lse_row, lse_col, pos_row, pos_col


def contrastive_backward_cpu(x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor,
                             row_coef: Tensor, col_coef: Tensor, w_pos: float, row_off: int, row_div: int,
                             col_off: int, col_div: int, *, tile_m: int = 0,
                             tile_n: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """CPU kernel backward (same contract as :func:`contrastive_backward_torch`)."""
    x, y = cpu_operand(x), cpu_operand(y)
    if x.dtype != y.dtype:
        x, y = x.double(), y.double()
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    vec = [t.to(acc).contiguous() for t in (lse_row, lse_col, row_coef, col_coef)]
    dx, dy, dscale = torch.empty(M, d, dtype=acc), torch.empty(N, d, dtype=acc), torch.empty((), dtype=acc)
    extension().contrastive_backward_cpu(
        x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc], float(scale),
        vec[0].data_ptr(), vec[1].data_ptr(), vec[2].data_ptr(), vec[3].data_ptr(), float(w_pos),
        int(row_off), int(row_div), int(col_off), int(col_div), dx.data_ptr(), dy.data_ptr(), dscale.data_ptr(),
        tile_m=tile_m, tile_n=tile_n)
    return dx, dy, dscale


# ---------------------------------------------------------------------------------------------------------------
# Backend dispatch
# ---------------------------------------------------------------------------------------------------------------


def _host_functions(backend: str):
    """(forward, backward) host functions of a concrete backend; GPU modules are imported only when asked for."""
    if backend == "cpu":
        return contrastive_forward_cpu, contrastive_backward_cpu
    if backend == "torch":
        return contrastive_forward_torch, contrastive_backward_torch
    if backend == "cuda":
        from . import _cuda  # noqa: PLC0415 - lazy: written against the same contract, may be absent

        return _cuda.contrastive_forward, _cuda.contrastive_backward
    if backend == "triton":
        from ..backends.triton import contrastive as _tri  # noqa: PLC0415

        return _tri.contrastive_forward, _tri.contrastive_backward
    raise ValueError(f"backend must be a concrete backend ('cuda', 'triton', 'cpu', 'torch'), got {backend!r}")


def _kernel_scale(scale: Tensor, x: Tensor) -> Tensor:
    """The scale as the kernels take it: a 0-dim tensor in the accumulation dtype, no grad."""
    return scale.detach().to(device=x.device, dtype=acc_dtype(x.dtype)).reshape(())


def contrastive_forward(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int, col_div: int,
                        compute_col: bool, *, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Kernel-contract forward on a concrete ``backend`` (no autograd). See the module docstring."""
    fwd, _ = _host_functions(backend)
    if backend != "torch":
        x, y = rows_contiguous(x), rows_contiguous(y)
    return fwd(x, y, _kernel_scale(scale, x), row_off, row_div, col_off, col_div, compute_col)


def contrastive_backward(x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor, row_coef: Tensor,
                         col_coef: Tensor, w_pos: float, row_off: int, row_div: int, col_off: int, col_div: int, *,
                         backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Kernel-contract backward on a concrete ``backend`` (no autograd). See the module docstring."""
    _, bwd = _host_functions(backend)
    if backend != "torch":
        x, y = rows_contiguous(x), rows_contiguous(y)
    return bwd(x, y, _kernel_scale(scale, x), lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div,
               col_off, col_div)


# ---------------------------------------------------------------------------------------------------------------
# Custom ops (torch.compile / autograd)
# ---------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("ccr_fast::contrastive_fwd", mutates_args=())
def contrastive_fwd(x: Tensor, y: Tensor, scale: Tensor, row_off: int, row_div: int, col_off: int, col_div: int,
                    w_row: float, w_col: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused contrastive loss forward.

    Args:
        x: [M, d] rows. y: [N, d] columns (same dtype/device). scale: 0-dim logit scale.
        row_off, row_div, col_off, col_div: positive rule. w_row, w_col: direction weights (``w_col = 0``:
        row-only cross-entropy, the column LSE is skipped). backend: a concrete backend name.

    Returns:
        loss 0-dim, lse_row [M], lse_col [N] (acc dtype; the LSEs are saved for backward, not differentiable).
    """
    with torch.autocast(x.device.type, enabled=False):
        lse_row, lse_col, pos_row, pos_col = contrastive_forward(
            x, y, scale, row_off, row_div, col_off, col_div, w_col != 0.0, backend=backend)
        npos_row, npos_col = positive_counts(x.shape[0], y.shape[0], row_off, row_div, col_off, col_div,
                                             x.device, lse_row.dtype)
        loss = w_row * (npos_row * lse_row - pos_row).sum()
        if w_col != 0.0:
            loss = loss + w_col * (npos_col * lse_col - pos_col).sum()
    return loss, lse_row, lse_col


@contrastive_fwd.register_fake
def _contrastive_fwd_fake(x, y, scale, row_off, row_div, col_off, col_div, w_row, w_col, backend):
    acc = acc_dtype(x.dtype)
    return x.new_empty((), dtype=acc), x.new_empty((x.shape[0],), dtype=acc), x.new_empty((y.shape[0],), dtype=acc)


@torch.library.custom_op("ccr_fast::contrastive_bwd", mutates_args=())
def contrastive_bwd(grad: Tensor, x: Tensor, y: Tensor, scale: Tensor, lse_row: Tensor, lse_col: Tensor,
                    row_off: int, row_div: int, col_off: int, col_div: int, w_row: float, w_col: float,
                    backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``grad · loss`` of :func:`contrastive_fwd`.

    The kernel runs with the unit-gradient coefficients (``row_coef = w_row·npos_row``, ``col_coef =
    w_col·npos_col``, ``w_pos = w_row + w_col``) and the results are multiplied by ``grad`` on the device
    (dZ is linear in the three coefficients), so no host sync is needed for the upstream gradient.

    Returns:
        dx [M, d] in x's dtype, dy [N, d] in y's dtype, dscale 0-dim in scale's dtype.
    """
    with torch.autocast(x.device.type, enabled=False):
        acc = lse_row.dtype
        npos_row, npos_col = positive_counts(x.shape[0], y.shape[0], row_off, row_div, col_off, col_div,
                                             x.device, acc)
        dx, dy, dscale = contrastive_backward(x, y, scale, lse_row, lse_col, w_row * npos_row, w_col * npos_col,
                                              w_row + w_col, row_off, row_div, col_off, col_div, backend=backend)
        g = grad.to(acc)
        return (dx * g).to(x.dtype), (dy * g).to(y.dtype), (dscale * g).to(scale.dtype)


@contrastive_bwd.register_fake
def _contrastive_bwd_fake(grad, x, y, scale, lse_row, lse_col, row_off, row_div, col_off, col_div, w_row, w_col,
                          backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(y, memory_format=torch.contiguous_format), scale.new_empty(())


def _fwd_setup_context(ctx, inputs, output):
    x, y, scale, row_off, row_div, col_off, col_div, w_row, w_col, backend = inputs
    _, lse_row, lse_col = output
    ctx.mark_non_differentiable(lse_row, lse_col)
    ctx.save_for_backward(x, y, scale, lse_row, lse_col)
    ctx.args = (row_off, row_div, col_off, col_div, w_row, w_col, backend)


def _fwd_backward(ctx, grad_loss, grad_lse_row, grad_lse_col):
    x, y, scale, lse_row, lse_col = ctx.saved_tensors
    dx, dy, dscale = torch.ops.ccr_fast.contrastive_bwd(grad_loss, x, y, scale, lse_row, lse_col, *ctx.args)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dy if need[1] else None, dscale if need[2] else None,
            None, None, None, None, None, None, None)


contrastive_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Entry point used by ccr_fast.losses
# ---------------------------------------------------------------------------------------------------------------


def autocast_operands(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Apply the autocast policy of this module to the two feature operands (see the module docstring)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x = x if x.dtype == torch.float64 else x.to(dt)
        y = y if y.dtype == torch.float64 else y.to(dt)
    if x.dtype != y.dtype:  # only reachable under autocast with an fp64 operand
        wide = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(wide), y.to(wide)
    return x, y


def contrastive_loss(x: Tensor, y: Tensor, scale: Tensor, *, row_off: int = 0, row_div: int = 1, col_off: int = 0,
                     col_div: int = 1, w_row: float, w_col: float, backend: str = "auto") -> Tensor:
    """Weighted two-direction contrastive cross-entropy of ``Z = scale · x yᵀ`` (module docstring), fp32 out.

    Args:
        x: [M, d], y: [N, d] validated features. scale: 0-dim tensor (may require grad).
        row_off, row_div, col_off, col_div: the positive rule. w_row, w_col: direction weights.
        backend: ``"auto"`` or a backend name (resolved with :func:`ccr_fast._backend.resolve_backend`).

    Returns:
        0-dim loss (float32; float64 for float64 inputs).
    """
    x, y = autocast_operands(x, y)
    name = resolve_backend(backend, x.device, op="contrastive loss")
    if name in ("triton", "cuda") and x.dtype == torch.float64:
        raise RuntimeError(f"backend {name!r} does not take float64 inputs; use backend='cpu' or 'torch'")
    loss, _, _ = torch.ops.ccr_fast.contrastive_fwd(x, y, scale, int(row_off), int(row_div), int(col_off),
                                                    int(col_div), float(w_row), float(w_col), name)
    return loss
