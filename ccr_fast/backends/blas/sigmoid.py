"""``"blas"`` sigmoid (SigLIP) host functions for CPU tensors (contract: ``ccr_fast/ops/sigmoid.py``).

The registered vendor GEMM (OpenBLAS, :mod:`._gemm`) over R×W tiles with the fused C++ epilogue of
csrc/cpu/sigmoid.cpp: per tile the scores, the softplus sum, G and both gradient GEMMs while the tile is hot.
bf16 operands run their GEMMs in bf16 with fp32 accumulation (the oneDNN BRGeMM of :mod:`._lowp`, when
present) and the same fp32 epilogue; fp16 operands are widened to float32 (exact). :func:`chunked` is the torch form of the same loop, used on CUDA
(:mod:`.sigmoid_gpu`).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .._operands import acc_dtype
from ..cpu import sigmoid as _cpu
from ..registry import extension
from . import _gemm, _lowp

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
    if x.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and _lowp.available():
        return _bf16_forward(x, y, scale, bias, k, pos_off, positives, weight, need_grad, tile_m, tile_n)
    _gemm.ensure()
    return _cpu.run("blas_sigmoid_forward", x, y, scale, bias, k, pos_off, positives, weight, need_grad, tile_m,
                    tile_n)


def _pad64(t: Tensor) -> Tensor:
    """``t`` [n, d] as a contiguous bf16 [ceil64(n), ceil64(d)] zero-padded copy (no copy when already so)."""
    n, d = t.shape
    n_p, d_p = -(-n // 64) * 64, -(-d // 64) * 64
    if (n_p, d_p) == (n, d) and t.is_contiguous():
        return t
    out = t.new_zeros(n_p, d_p)
    out[:n, :d] = t
    return out


def _bf16_forward(x, y, scale, bias, k, pos_off, positives, weight, need_grad, tile_m, tile_n):
    """bf16 operands through the bf16 GEMM (:mod:`._lowp`, bf16 products, fp32 accumulation) and the fp32 epilogue."""
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    xp, yp = _pad64(x), _pad64(y)
    Mp, Np, dp = xp.shape[0], yp.shape[0], xp.shape[1]
    out3 = torch.empty(3)
    if need_grad:
        dx, dy, parts = torch.empty(Mp, dp), torch.empty(Np, dp), torch.empty(extension().cpu_num_threads(), dp, Np)
        ptrs = (dx.data_ptr(), dy.data_ptr(), parts.data_ptr())
    else:
        dx = dy = torch.empty(0)
        ptrs = (0, 0, 0)
    extension().blas_sigmoid_forward_bf16(xp.data_ptr(), yp.data_ptr(), M, N, Mp, Np, dp, float(scale), float(bias),
                                          int(k), int(pos_off), bool(positives), float(weight), bool(need_grad),
                                          out3.data_ptr(), *ptrs, tile_m=tile_m, tile_n=tile_n)
    if need_grad:
        dx, dy = dx[:M, :d].contiguous(), dy[:N, :d].contiguous()
    else:
        dy = dx.clone()
    loss, dscale, dbias = (t.clone() for t in out3)
    return loss, dx, dy, dscale, dbias
