"""Triton VSE++ triplet kernels on ``S[i, j] = b_i · a_j`` (positives on the diagonal); docs/interop.md, "triplet".

* :func:`_diag_kernel`: ``S[i, i]`` with the tile dot (one diagonal tile per program).
* :func:`_triplet_fwd_kernel`: row-owned sweep of ``X Yᵀ`` against the diagonal: the hardest negative (max, lowest
  index on ties) or the sum of hinges. ``(X, Y) = (b, a)`` gives the row direction, ``(a, b)`` the column one.
* :func:`_triplet_sum_grad_kernel`: the gradient of the sum-of-violations loss, recomputing the active set; the same
  kernel gives ``db`` with ``(b, a)`` and ``da`` with ``(a, b)`` because ``dS`` is symmetric in its two hinge terms.
* The max-violation gradient touches at most two rows per anchor: an O(B·d) gather / ``index_add_`` in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (autotune_configs, block_d, block_dout, check_operands, device_guard, dot_flags, mma,
                     tile_dot)

# GPU configs: none spills on sm_80/sm_90 (gpu-check --compile-only).
_FWD_CONFIGS = autotune_configs([
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1),  # the interpreter's single config
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
    ({"BLOCK_M": 64, "BLOCK_N": 128}, 8, 3),
])
_BWD_CONFIGS = autotune_configs([  # 64x64 spills on sm_80 with triton 3.6
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1),
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 8, 2),
    ({"BLOCK_M": 32, "BLOCK_N": 32}, 4, 2),
])
_DIAG_BLOCK = 32


@triton.jit
def _diag_kernel(X_ptr, stride_xm, stride_xd, Y_ptr, stride_ym, stride_yd, DIAG_ptr, B, D,
                 BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """``DIAG[i] = X_i · Y_i`` from the diagonal [BLOCK, BLOCK] tile of program i // BLOCK; fp32."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    s = tile_dot(X_ptr, stride_xm, stride_xd, rows, B, Y_ptr, stride_ym, stride_yd, rows, B, D,
                 BLOCK, BLOCK, BLOCK_D, CAST_FP32, DOT_MODE)
    eye = tl.arange(0, BLOCK)[:, None] == tl.arange(0, BLOCK)[None, :]
    tl.store(DIAG_ptr + rows, tl.sum(tl.where(eye, s, 0.0), axis=1), mask=rows < B)


@triton.autotune(configs=_FWD_CONFIGS, key=["B", "D", "MAX_VIOLATION"])
@triton.jit
def _triplet_fwd_kernel(X_ptr, stride_xm, stride_xd, Y_ptr, stride_ym, stride_yd, DIAG_ptr, margin,
                        COST_ptr, IDX_ptr, B, D, MAX_VIOLATION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Row-owned: for rows r of X against all c != r of Y, with ``s = X_r · Y_c`` and ``p = DIAG[r]``:
    MAX_VIOLATION: ``IDX[r] = argmax_c s`` (lowest c on ties), ``COST[r] = max(0, margin + max_c s − p)``;
    else ``COST[r] = Σ_c max(0, margin + s − p)`` and ``IDX[r] = −1``.

    Grid: (cdiv(B, BLOCK_M),). fp32 accumulators; the running argmax only moves on a strictly larger tile max.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    p = tl.load(DIAG_ptr + rows, mask=row_ok, other=0.0)
    best = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_M,), -1, dtype=tl.int64)
    cost = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, B, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        s = tile_dot(X_ptr, stride_xm, stride_xd, rows, B, Y_ptr, stride_ym, stride_yd, cols, B, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
        neg = (cols < B)[None, :] & (rows[:, None] != cols[None, :])
        if MAX_VIOLATION:
            s = tl.where(neg, s, float("-inf"))
            t_max = tl.max(s, axis=1)
            t_idx = tl.min(tl.where(s == t_max[:, None], cols[None, :], B), axis=1)
            better = t_max > best
            best_idx = tl.where(better, t_idx, best_idx)
            best = tl.where(better, t_max, best)
        else:
            cost += tl.sum(tl.where(neg, tl.maximum(margin + s - p[:, None], 0.0), 0.0), axis=1)
    if MAX_VIOLATION:
        cost = tl.maximum(margin + best - p, 0.0)
    tl.store(COST_ptr + rows, cost, mask=row_ok)
    tl.store(IDX_ptr + rows, best_idx, mask=row_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=["B", "D"])
@triton.jit
def _triplet_sum_grad_kernel(X_ptr, stride_xm, stride_xd, Y_ptr, stride_ym, stride_yd, DIAG_ptr, margin,
                             DX_ptr, NACT_ptr, B, D,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_DO: tl.constexpr, CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Row-owned, off-diagonal part of the sum-of-hinges gradient, ``s = X_r · Y_c`` (c != r):
    ``DX[r, dchunk] = Σ_c ([margin + s − DIAG[r] > 0] + [margin + s − DIAG[c] > 0]) · Y[c, dchunk]`` and
    ``NACT[r] = Σ_c [margin + s − DIAG[r] > 0]`` (the diagonal term is added by the host).

    Grid: (cdiv(B, BLOCK_M), cdiv(D, BLOCK_DO)). The weights are 0, 1 or 2: exact in any input dtype.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    dout = tl.program_id(1).to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dout_ok = dout < D
    p_row = tl.load(DIAG_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    nact = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, B, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < B
        s = tile_dot(X_ptr, stride_xm, stride_xd, rows, B, Y_ptr, stride_ym, stride_yd, cols, B, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
        p_col = tl.load(DIAG_ptr + cols, mask=col_ok, other=0.0)
        neg = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        act_r = neg & (margin + s - p_row[:, None] > 0.0)
        act_c = neg & (margin + s - p_col[None, :] > 0.0)
        nact += tl.sum(act_r.to(tl.float32), axis=1)
        w = act_r.to(tl.float32) + act_c.to(tl.float32)
        y = tl.load(Y_ptr + cols[:, None] * stride_ym + dout[None, :] * stride_yd,
                    mask=col_ok[:, None] & dout_ok[None, :], other=0.0)
        acc += mma(w.to(y.dtype), y, CAST_FP32, DOT_MODE)
    tl.store(DX_ptr + rows[:, None] * D + dout[None, :], acc, mask=row_ok[:, None] & dout_ok[None, :])
    if tl.program_id(1) == 0:
        tl.store(NACT_ptr + rows, nact, mask=row_ok)


def _check(a, b, margin, max_violation):
    check_operands(("a", "b"), (a, b))
    if a.shape != b.shape:
        raise ValueError(f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    if a.shape[0] < 2:
        raise ValueError(f"a and b need B >= 2 rows (a negative per anchor), got shape {tuple(a.shape)}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a float, got {type(margin).__name__}")
    if not isinstance(max_violation, bool):
        raise TypeError(f"max_violation must be a bool, got {type(max_violation).__name__}")


def _diag(a, b):
    n, d = a.shape
    diag = torch.empty(n, dtype=torch.float32, device=a.device)
    _diag_kernel[(triton.cdiv(n, _DIAG_BLOCK),)](b, b.stride(0), b.stride(1), a, a.stride(0), a.stride(1), diag, n, d,
                                                 BLOCK=_DIAG_BLOCK, BLOCK_D=block_d(d), **dot_flags(a.dtype))
    return diag


def _fwd_pass(x, y, diag, margin, max_violation):
    n, d = x.shape
    cost = torch.empty(n, dtype=torch.float32, device=x.device)
    idx = torch.empty(n, dtype=torch.int64, device=x.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]),)

    _triplet_fwd_kernel[grid](x, x.stride(0), x.stride(1), y, y.stride(0), y.stride(1), diag, float(margin),
                              cost, idx, n, d, MAX_VIOLATION=max_violation, BLOCK_D=block_d(d), **dot_flags(x.dtype))
    return cost, idx


def triplet_forward(a, b, margin, max_violation):
    """Per-anchor VSE++ hinge costs of ``S = b aᵀ``.

    Args:
        a: [B, d]; b: [B, d] (fp32/fp16/bf16, one dtype); margin: float; max_violation: bool.

    Returns:
        row_cost [B] float32, col_cost [B] float32, row_idx [B] int64, col_idx [B] int64 (hardest negatives, lowest
        index on ties; −1 when ``max_violation`` is false).
    """
    _check(a, b, margin, max_violation)
    with device_guard(a):
        diag = _diag(a, b)
        row_cost, row_idx = _fwd_pass(b, a, diag, margin, max_violation)
        col_cost, col_idx = _fwd_pass(a, b, diag, margin, max_violation)
    return row_cost, col_cost, row_idx, col_idx


def _sum_grad_pass(x, y, diag, margin):
    n, d = x.shape
    dx = torch.empty((n, d), dtype=torch.float32, device=x.device)
    nact = torch.empty(n, dtype=torch.float32, device=x.device)
    bdo = block_dout(d)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(d, bdo))

    _triplet_sum_grad_kernel[grid](x, x.stride(0), x.stride(1), y, y.stride(0), y.stride(1), diag, float(margin),
                                   dx, nact, n, d, BLOCK_D=block_d(d), BLOCK_DO=bdo, **dot_flags(x.dtype))
    return dx, nact


def _check_idx(name, t, n, device):
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (n,):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be an int64 tensor of shape [{n}], got {got}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {t.device}")
    return t


def triplet_backward(a, b, margin, max_violation, row_idx, col_idx, grad):
    """Gradient of ``grad · Σ (row_cost + col_cost)`` (hinge at exactly 0 has gradient 0).

    Args:
        a, b: [B, d] as in :func:`triplet_forward`; row_idx, col_idx: [B] int64 from the forward (unused, may be −1,
            for the sum of violations); grad: float upstream weight.

    Returns:
        da [B, d] float32, db [B, d] float32.
    """
    _check(a, b, margin, max_violation)
    n = a.shape[0]
    grad = float(grad)
    af, bf = a.float(), b.float()
    with device_guard(a):
        diag = _diag(a, b)
        if not max_violation:
            db, nact_row = _sum_grad_pass(b, a, diag, margin)
            da, nact_col = _sum_grad_pass(a, b, diag, margin)
            n_diag = (nact_row + nact_col)[:, None]  # dS[i, i] = −(nact_row[i] + nact_col[i])
            return grad * (da - n_diag * bf), grad * (db - n_diag * af)
        row_idx = _check_idx("row_idx", row_idx, n, a.device)
        col_idx = _check_idx("col_idx", col_idx, n, a.device)
        # active hinges, recomputed in fp32 from the saved hardest negatives
        a_neg, b_neg = af[row_idx], bf[col_idx]
        act_r = (margin + (bf * a_neg).sum(1) - diag > 0).to(torch.float32)[:, None] * grad
        act_c = (margin + (b_neg * af).sum(1) - diag > 0).to(torch.float32)[:, None] * grad
        # row cost i: +b_i·a_{row_idx[i]} − b_i·a_i ; column cost j: +b_{col_idx[j]}·a_j − b_j·a_j
        db = act_r * (a_neg - af) - act_c * af
        da = act_c * (b_neg - bf) - act_r * bf
        db.index_add_(0, col_idx, act_c * af)
        da.index_add_(0, row_idx, act_r * bf)
    return da, db
