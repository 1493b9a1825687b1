"""Sigmoid (SigLIP) op family: the pairwise sigmoid loss of SigLIP / mSigLIP (open_clip ``SigLipLoss``).

With ``Z = scale · x yᵀ + bias`` (M×N, never materialised by the kernels), texts image-major with ``k`` per row
item, and the label rule ``label(r, c) = +1`` if ``positives`` and ``c // k == r + pos_off``, else ``−1``::

    loss   = weight · Σ_{r,c} softplus(−label · Z[r, c])            (= −weight · Σ logsigmoid(label · Z))
    G      = dloss/dZ = −weight · label · sigmoid(−label · Z)
    dx     = scale · G y,   dy = scale · Gᵀ x,   dscale = Σ G ⊙ (x yᵀ),   dbias = Σ G

``sigmoid_loss`` is ``weight = 1/B, k = K, pos_off = 0``; the distributed ``SigLipLoss`` adds blocks of other
ranks' texts with ``positives=False`` (all labels −1).

The loss is a terminal scalar, so the fused kernels form the gradients in the same pass as the loss (one score
GEMM and two gradient GEMMs per tile while the tile is hot) when
``need_grad``; the autograd backward then only multiplies the saved gradients by the upstream gradient (a call
made with ``need_grad=False`` that is differentiated after all recomputes them in its backward).

Contents:
    * :func:`sigmoid_forward_torch`: the plain-torch reference of the kernel contract (the tests' oracle);
    * ``HOST``: ``{backend: host functions}`` (``ccr_fast.backends.<name>.sigmoid``);
    * the custom op ``ccr_fast::sigmoid_fwd`` (→ loss, dx, dy, dscale, dbias) with a fake kernel and autograd;
    * :func:`sigmoid_loss_op`: the entry :func:`ccr_fast.losses.sigmoid_loss` and ``SigLipLoss`` call.

Backends: ``torch`` (this module), ``cpu`` (fused C++, our tile GEMM), ``blas`` (CPU: OpenBLAS tiles + the fused
C++ epilogue; CUDA: cuBLAS row chunks + a torch epilogue), ``triton`` (fused kernels). No SIMT ``cuda`` kernel.

Dtype policy: the loss, G and all reductions are float32 (float64 for float64 inputs); fp16/bf16 operands go to
the GEMMs in their own precision where the backend has such a GEMM (``blas`` on CUDA, ``triton``), the fused CPU
kernels widen them to float32 (exact). Gradients come back in each input's dtype. Autocast as
:func:`ccr_fast.ops.dispatch.autocast_operands`.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from . import dispatch
from ._common import acc_dtype

Tensor = torch.Tensor


def label_signs(M: int, N: int, k: int, pos_off: int, positives: bool, device=None, dtype=torch.float64) -> Tensor:
    """Dense ``[M, N]`` labels (+1 / −1) of the rule in the module docstring (reference / tests only: O(M·N))."""
    if not positives:
        return -torch.ones(M, N, dtype=dtype, device=device)
    pos = (torch.arange(M, device=device)[:, None] + pos_off) == (torch.arange(N, device=device)[None, :] // k)
    return pos.to(dtype) * 2 - 1


def sigmoid_forward_torch(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool,
                          weight: float, need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference forward of the kernel contract (materialises Z in the accumulation dtype).

    Args:
        x: [M, d]. y: [N, d]. scale, bias: 0-dim tensors. k, pos_off, positives: the label rule.
        weight: multiplier of the summed loss. need_grad: also return the gradients (else empty [0] tensors).

    Returns:
        loss 0-dim, dx [M, d], dy [N, d], dscale 0-dim, dbias 0-dim, all in the acc dtype.
    """
    acc = acc_dtype(x.dtype)
    xa, ya = x.to(acc), y.to(acc)
    s, b = scale.to(acc), bias.to(acc)
    raw = xa @ ya.T
    label = label_signs(x.shape[0], y.shape[0], k, pos_off, positives, x.device, acc)
    t = -label * (s * raw + b)
    loss = -weight * F.logsigmoid(-t).sum()
    if not need_grad:
        e = x.new_empty((0,), dtype=acc)
        return loss, e, e.clone(), torch.zeros_like(loss), torch.zeros_like(loss)
    g = -weight * label * torch.sigmoid(t)
    return loss, s * (g @ ya), s * (g.T @ xa), (g * raw).sum(), g.sum()


HOST = dispatch.host_table("sigmoid", {"sigmoid_forward": sigmoid_forward_torch})


def sigmoid_forward(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool,
                    weight: float, need_grad: bool, *, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Kernel-contract forward on a concrete ``backend`` (no autograd); see :func:`sigmoid_forward_torch`."""
    fwd = dispatch.host(HOST, backend, "sigmoid_forward", x.device)
    acc = acc_dtype(x.dtype)
    s = scale.detach().to(device=x.device, dtype=acc).reshape(())
    b = bias.detach().to(device=x.device, dtype=acc).reshape(())
    return fwd(x, y, s, b, int(k), int(pos_off), bool(positives), float(weight), bool(need_grad))


# ---------------------------------------------------------------------------------------------------------------
# Custom op (torch.compile / autograd)
# ---------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("ccr_fast::sigmoid_fwd", mutates_args=())
def sigmoid_fwd(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool,
                weight: float, need_grad: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused sigmoid loss: loss 0-dim (acc dtype) and, when ``need_grad``, the unit-upstream gradients
    dx [M, d], dy [N, d] (acc dtype), dscale, dbias (0-dim, acc dtype); else dx, dy are [0] and dscale, dbias 0."""
    with torch.autocast(x.device.type, enabled=False):
        out = sigmoid_forward(x, y, scale, bias, k, pos_off, positives, weight, need_grad, backend=backend)
    return tuple(t.contiguous() for t in out)


@sigmoid_fwd.register_fake
def _sigmoid_fwd_fake(x, y, scale, bias, k, pos_off, positives, weight, need_grad, backend):
    acc = acc_dtype(x.dtype)
    dx = x.new_empty((x.shape[0], x.shape[1]) if need_grad else (0,), dtype=acc)
    dy = x.new_empty((y.shape[0], y.shape[1]) if need_grad else (0,), dtype=acc)
    return x.new_empty((), dtype=acc), dx, dy, x.new_empty((), dtype=acc), x.new_empty((), dtype=acc)


def _setup_context(ctx, inputs, output):
    x, y, scale, bias, k, pos_off, positives, weight, need_grad, backend = inputs
    _, dx, dy, dscale, dbias = output
    ctx.mark_non_differentiable(dx, dy, dscale, dbias)
    if need_grad:
        ctx.save_for_backward(dx, dy, dscale, dbias)
    else:  # gradients not formed in the forward: recompute them in the backward
        ctx.save_for_backward(x, y, scale, bias)
    ctx.need_grad = need_grad
    ctx.args = (k, pos_off, positives, weight)
    ctx.backend = backend
    ctx.dtypes = (x.dtype, y.dtype, scale.dtype, bias.dtype)


def _backward(ctx, grad_loss, _gdx, _gdy, _gds, _gdb):
    if ctx.need_grad:
        dx, dy, dscale, dbias = ctx.saved_tensors
    else:
        x, y, scale, bias = ctx.saved_tensors
        _, dx, dy, dscale, dbias = torch.ops.ccr_fast.sigmoid_fwd(x.detach(), y.detach(), scale.detach(),
                                                                  bias.detach(), *ctx.args, True, ctx.backend)
    g = grad_loss.to(dx.dtype)
    need = ctx.needs_input_grad
    xt, yt, st, bt = ctx.dtypes
    return ((dx * g).to(xt) if need[0] else None, (dy * g).to(yt) if need[1] else None,
            (dscale * g).to(st) if need[2] else None, (dbias * g).to(bt) if need[3] else None,
            None, None, None, None, None, None)


sigmoid_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Entry point used by ccr_fast.losses
# ---------------------------------------------------------------------------------------------------------------


def sigmoid_loss_op(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, *, k: int = 1, pos_off: int = 0,
                    positives: bool = True, weight: float, backend: str = "auto") -> Tensor:
    """``weight · Σ softplus(−label · (scale · x yᵀ + bias))`` on validated inputs (module docstring).

    Args:
        x: [M, d], y: [N, d] features. scale, bias: 0-dim tensors (may require grad). k, pos_off, positives:
        the label rule. weight: loss multiplier (1/B). backend: ``"auto"`` or a backend name.

    Returns:
        0-dim loss (float32; float64 for float64 inputs).
    """
    x, y = dispatch.autocast_operands(x, y)
    name = dispatch.resolve("sigmoid", backend, x.device, x.dtype, work=x.shape[0] * y.shape[0])
    if name == "torch":
        acc = acc_dtype(x.dtype)
        label = label_signs(x.shape[0], y.shape[0], k, pos_off, positives, x.device, acc)
        z = scale.to(acc) * (x.to(acc) @ y.to(acc).T) + bias.to(acc)
        return -weight * F.logsigmoid(label * z).sum()
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, scale, bias))
    return torch.ops.ccr_fast.sigmoid_fwd(x, y, scale, bias, int(k), int(pos_off), bool(positives), float(weight),
                                          bool(need_grad), name)[0]
