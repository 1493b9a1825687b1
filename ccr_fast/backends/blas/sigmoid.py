"""``"blas"`` sigmoid (SigLIP) host functions for CPU tensors (contract: ``ccr_fast/ops/sigmoid.py``).

The registered vendor GEMM (OpenBLAS, :mod:`._gemm`) over R×W tiles with the fused C++ epilogue of
csrc/cpu/sigmoid.cpp: per tile the scores, the softplus sum, G and both gradient GEMMs while the tile is hot.
fp16/bf16 operands are widened to float32 (exact). :func:`chunked` is the torch form of the same loop, used on CUDA
(:mod:`.sigmoid_gpu`).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .._operands import acc_dtype
from ..cpu import sigmoid as _cpu
from . import _gemm

Tensor = torch.Tensor

CHUNK_BYTES = 64 << 20  # float32 score chunk of :func:`chunked`


def _mm32(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """``a @ b`` in the operands' dtype with an ``acc``-dtype result: fp16/bf16 on CUDA through cuBLAS with fp32
    output (``out_dtype``, no rounding of the products to 8/11 bits); elsewhere the product cast to ``acc``."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without mm(out_dtype=): widen the operands (exact products)
            return a.float() @ b.float()
    return (a @ b).to(acc)


def chunked(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool, weight: float,
            need_grad: bool, rows: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The contract in torch over row chunks of ``rows`` (default: ``CHUNK_BYTES`` of float32 scores), O(rows·N).

    Scores and the gradient GEMMs run in the operands' dtype (fp16/bf16 GEMMs accumulate in fp32 on cuBLAS; G is
    rounded to the operand dtype once, as a GEMM operand); the epilogue (softplus, sigmoid, sums) in float32
    (float64 for float64 inputs).
    """
    acc = acc_dtype(x.dtype)
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    rows = rows or max(1, CHUNK_BYTES // (4 * N))
    s, b = scale.to(acc), bias.to(acc)
    loss = torch.zeros((), dtype=acc, device=x.device)
    dscale, dbias = torch.zeros_like(loss), torch.zeros_like(loss)
    dx = torch.empty(M, d, dtype=acc, device=x.device) if need_grad else x.new_empty((0,), dtype=acc)
    dy = torch.zeros(N, d, dtype=acc, device=x.device) if need_grad else x.new_empty((0,), dtype=acc)
    cols = torch.arange(N, device=x.device) // k
    for r0 in range(0, M, rows):
        xc = x[r0:r0 + rows]
        raw = _mm32(xc, y.T, acc)
        if positives:
            pos = (torch.arange(r0, r0 + xc.shape[0], device=x.device)[:, None] + pos_off) == cols[None, :]
            label = pos.to(acc) * 2 - 1
        else:
            label = torch.full((), -1.0, dtype=acc, device=x.device)
        t = -label * (s * raw + b)
        loss = loss - F.logsigmoid(-t).sum()
        if need_grad:
            g = -weight * label * torch.sigmoid(t)
            dscale = dscale + (g * raw).sum()
            dbias = dbias + g.sum()
            gl = g.to(x.dtype)
            dx[r0:r0 + rows] = _mm32(gl, y, acc) * s
            dy += _mm32(gl.T, xc, acc) * s
    return loss * weight, dx, dy, dscale, dbias


def sigmoid_forward(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool,
                    weight: float, need_grad: bool, *, tile_m: int = 0, tile_n: int = 0
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """loss, dx [M, d], dy [N, d], dscale, dbias (acc dtype; dx, dy empty unless ``need_grad``) for CPU tensors.
    ``tile_m``/``tile_n`` override the tile sizes (tests)."""
    _gemm.ensure()
    return _cpu.run("blas_sigmoid_forward", x, y, scale, bias, k, pos_off, positives, weight, need_grad, tile_m,
                    tile_n)
