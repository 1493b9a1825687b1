"""Triton sigmoid (SigLIP) kernels (contract: ``ccr_fast/ops/sigmoid.py``).

One row-owned kernel, :func:`_sigmoid_rows_kernel`: for rows ``a`` of A against every row ``b`` of B it forms the score
tiles (:func:`tile_dot`, fp32 accumulation), ``t = −label·(scale·s + bias)`` and, in fp32, the row sums of
``softplus(t)``, of ``G = −weight·label·sigmoid(t)`` and of ``G·s``, plus ``DA[a, dchunk] = scale·Σ_b G·B[b, dchunk]``.
It runs with ``(A, B) = (x, y)`` for the loss, dscale, dbias and dx, and (when the gradients are wanted) with
``(y, x)`` for dy (the column-owned pass). Z is never materialised; deterministic (no atomics).
Label rule as the contrastive kernels: ``(a, b)`` is positive iff ``positives`` and
``(a + a_off) // a_div == (b + b_off) // b_div``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (autotune_configs, block_d, block_dout, check_operands, device_guard, dot_flags, mma,
                     scale_operand, tile_dot)

_CONFIGS = autotune_configs([
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1),  # the interpreter's single config
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 8, 2),
    ({"BLOCK_M": 32, "BLOCK_N": 32}, 4, 2),
])


@triton.jit
def _log1p(e):
    """log(1 + e) for e >= 0, accurate for tiny e (log(u)·e/(u − 1) with u = 1 + e rounded)."""
    u = 1.0 + e
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, e, tl.log(u) * (e / den))


@triton.autotune(configs=_CONFIGS, key=["M", "N", "D", "NEED_DA", "WANT_SUMS"])
@triton.jit
def _sigmoid_rows_kernel(A_ptr, stride_am, stride_ad, B_ptr, stride_bm, stride_bd, scale_ptr, bias_ptr, weight,
                         a_off, a_div, b_off, b_div, positives, DA_ptr, LOSS_ptr, DS_ptr, DB_ptr, M, N, D,
                         NEED_DA: tl.constexpr, WANT_SUMS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
                         CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr, GRAD_DOT_MODE: tl.constexpr):
    """Grid (cdiv(M, BLOCK_M), cdiv(D, BLOCK_DO)); the programs of feature chunk 0 write the per-row sums."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    dout = pid_d.to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dout_ok = dout < D
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    loss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ds = tl.zeros((BLOCK_M,), dtype=tl.float32)
    db = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        s = tile_dot(A_ptr, stride_am, stride_ad, rows, M, B_ptr, stride_bm, stride_bd, cols, N, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
        pos = (((rows + a_off) // a_div)[:, None] == ((cols + b_off) // b_div)[None, :]) & (positives != 0)
        label = tl.where(pos, 1.0, -1.0)
        t = -label * (scale * s + bias)
        e = tl.exp(-tl.abs(t))
        sig = tl.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        ok = row_ok[:, None] & col_ok[None, :]
        g = tl.where(ok, -weight * label * sig, 0.0)
        if WANT_SUMS:
            loss += tl.sum(tl.where(ok, tl.maximum(t, 0.0) + _log1p(e), 0.0), axis=1)
            ds += tl.sum(g * s, axis=1)
            db += tl.sum(g, axis=1)
        if NEED_DA:
            b = tl.load(B_ptr + cols[:, None] * stride_bm + dout[None, :] * stride_bd,
                        mask=col_ok[:, None] & dout_ok[None, :], other=0.0)
            acc += mma(g, b.to(tl.float32), False, GRAD_DOT_MODE)
    if NEED_DA:
        tl.store(DA_ptr + rows[:, None] * D + dout[None, :], scale * acc, mask=row_ok[:, None] & dout_ok[None, :])
    if WANT_SUMS:
        if pid_d == 0:
            tl.store(LOSS_ptr + rows, loss, mask=row_ok)
            tl.store(DS_ptr + rows, ds, mask=row_ok)
            tl.store(DB_ptr + rows, db, mask=row_ok)


def _rows(a, b, scale, bias, weight, rule, positives, need_da, want_sums):
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    f32 = dict(dtype=torch.float32, device=a.device)
    da = torch.empty((m, d), **f32) if need_da else torch.empty((1,), **f32)
    sums = [torch.empty(m, **f32) if want_sums else torch.empty((1,), **f32) for _ in range(3)]
    bdo = block_dout(d) if need_da else 16
    flags = dot_flags(a.dtype)
    grad_mode = 2 if flags["DOT_MODE"] == 0 else flags["DOT_MODE"]

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(d, bdo) if need_da else 1)

    _sigmoid_rows_kernel[grid](a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1), scale, bias, float(weight),
                               *rule, int(bool(positives)), da, *sums, m, n, d, NEED_DA=need_da,
                               WANT_SUMS=want_sums, BLOCK_D=block_d(d), BLOCK_DO=bdo, GRAD_DOT_MODE=grad_mode,
                               **flags)
    return da, sums


def sigmoid_forward(x, y, scale, bias, k, pos_off, positives, weight, need_grad):
    """loss, dx [M, d], dy [N, d], dscale, dbias (float32; dx, dy empty [0] unless ``need_grad``).

    Args:
        x: [M, d]; y: [N, d] (fp32/fp16/bf16, one dtype, CUDA or the interpreter). scale, bias: 0-dim tensors
        (loaded in the kernel, no host sync). k >= 1, pos_off >= 0, positives: the label rule; weight: loss factor.
    """
    check_operands(("x", "y"), (x, y))
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(pos_off, bool) or not isinstance(pos_off, int) or pos_off < 0:
        raise ValueError(f"pos_off must be an int >= 0, got {pos_off!r}")
    s, b = scale_operand(scale, x.device), scale_operand(bias, x.device)
    with device_guard(x):
        dx, (loss, ds, db) = _rows(x, y, s, b, weight, (pos_off, 1, 0, k), positives, bool(need_grad), True)
        if need_grad:
            dy, _ = _rows(y, x, s, b, weight, (0, k, pos_off, 1), positives, True, False)
        else:
            dx = dy = x.new_empty((0,), dtype=torch.float32)
    return weight * loss.sum(), dx, dy, ds.sum(), db.sum()
