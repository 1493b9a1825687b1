"""Similarity op family: ``scores = queries · galleryᵀ`` (docs/interop.md, "similarity").

Contents: the plain-torch reference (:func:`similarity_torch`, the ``"torch"`` backend and the oracle), ``HOST``
(``{backend: host functions}``, ``ccr_fast.backends.<name>.similarity`` imported lazily), the custom op
``ccr_fast::similarity`` (fake kernel and autograd: ``dq = grad · g``, ``dg = gradᵀ · q``) and the validated entry
:func:`similarity`.

Scores are accumulated in fp32 (fp64 for fp64 inputs) and returned in the input dtype. Under autocast the
operands are cast to the autocast dtype first (fp64 left alone), like a matmul.
"""
from __future__ import annotations

import torch

from . import dispatch
from ._common import acc_dtype
from ._validate import check_pair

Tensor = torch.Tensor


def similarity_torch(q: Tensor, g: Tensor) -> Tensor:
    """Reference: ``q gᵀ`` in the accumulation dtype. q: [Q, d], g: [G, d] → [Q, G] acc."""
    acc = acc_dtype(q.dtype)
    return q.to(acc) @ g.to(acc).T


HOST = dispatch.host_table("similarity", {"similarity": similarity_torch})


def similarity_backend(q: Tensor, g: Tensor, backend: str) -> Tensor:
    """Scores [Q, G] in the accumulation dtype from a concrete ``backend`` (no autograd, no validation)."""
    return dispatch.host(HOST, backend, "similarity", q.device)(q, g)


@torch.library.custom_op("ccr_fast::similarity", mutates_args=())
def similarity_op(q: Tensor, g: Tensor, backend: str) -> Tensor:
    """Scores ``q gᵀ`` [Q, G] in q's dtype (fp32/fp64 accumulation) from a concrete backend."""
    with torch.autocast(q.device.type, enabled=False):
        return similarity_backend(q, g, backend).to(q.dtype)


@similarity_op.register_fake
def _similarity_fake(q, g, backend):
    return q.new_empty((q.shape[0], g.shape[0]))


def _sim_setup_context(ctx, inputs, output):
    q, g, _ = inputs
    ctx.save_for_backward(q, g)


def _sim_backward(ctx, grad):
    q, g = ctx.saved_tensors
    acc = acc_dtype(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        ga = grad.to(acc)
        dq = (ga @ g.to(acc)).to(q.dtype) if ctx.needs_input_grad[0] else None
        dg = (ga.T @ q.to(acc)).to(g.dtype) if ctx.needs_input_grad[1] else None
    return dq, dg, None


similarity_op.register_autograd(_sim_backward, setup_context=_sim_setup_context)


def similarity(queries: Tensor, gallery: Tensor, *, backend: str = "auto") -> Tensor:
    """Inner products of every query with every gallery row (cosine scores for L2-normalised inputs).

    Args:
        queries: [Q, d]. gallery: [G, d], same device and dtype (mixed dtypes only under autocast).
        backend: "auto", "blas", "cuda", "triton", "cpu" or "torch".

    Returns:
        scores [Q, G] in the (autocast) input dtype, accumulated in fp32 (fp64 for fp64).
    """
    check_pair(queries, gallery, finite=False, autocast_dtypes=True)
    queries, gallery = dispatch.autocast_operands(queries, gallery)
    name = dispatch.resolve("similarity", backend, queries.device, queries.dtype,
                            work=queries.shape[0] * gallery.shape[0])
    return torch.ops.ccr_fast.similarity(queries, gallery, name)
