"""Triton contrastive kernels: row/column log-sum-exp and positive sums of ``Z = scale · x yᵀ``, and the gradient.

Contract: docs/interop.md, "contrastive". ``(r, c)`` is positive iff
``(r + row_off) // row_div == (c + col_off) // col_div``. Z is never materialised:

* forward: :func:`_lse_pos_kernel` is row-owned (grid over row blocks of A, loop over tiles of B, online max /
  sum-exp in fp32). It runs once with ``(A, B) = (x, y)`` for ``lse_row, pos_row`` and once with ``(y, x)`` for
  ``lse_col, pos_col`` (the column-owned pass). Without ``compute_col`` the second pass only visits the tiles that
  hold positives.
* backward: :func:`_grad_kernel` recomputes the tiles. With ``(A, B) = (x, y)`` it is row-owned and gives ``dx``
  (and per-row ``dscale`` terms); with ``(y, x)`` it is column-owned and gives ``dy``. Deterministic: no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (autotune_configs, block_d, block_dout, check_operands, device_guard, dot_flags, mma,
                     scale_operand, tile_dot)

# GPU configs: none spills on sm_80/sm_90 (gpu-check --compile-only; 64x128 at 4 warps and 128x128 did).
_FWD_CONFIGS = autotune_configs([
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1),  # the interpreter's single config
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
    ({"BLOCK_M": 64, "BLOCK_N": 128}, 8, 3),
])
# The gradient holds a [BLOCK_M, BLOCK_DO <= 128] fp32 accumulator and an fp32 operand tile: 8 warps for 64-row
# blocks; 64x64 and 32x64 at 4 warps spill on sm_80 (gpu-check --compile-only).
_BWD_CONFIGS = autotune_configs([
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1),
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 8, 2),
    ({"BLOCK_M": 32, "BLOCK_N": 32}, 4, 2),
])


@triton.jit
def _positive(ra, cb, a_off, a_div, b_off, b_div):
    """[len(ra), len(cb)] mask of positive pairs by the group-id rule."""
    return ((ra + a_off) // a_div)[:, None] == ((cb + b_off) // b_div)[None, :]


@triton.autotune(configs=_FWD_CONFIGS, key=["M", "N", "D", "COMPUTE_LSE"])
@triton.jit
def _lse_pos_kernel(A_ptr, stride_am, stride_ad, B_ptr, stride_bm, stride_bd, scale_ptr,
                    a_off, a_div, b_off, b_div, LSE_ptr, POS_ptr, M, N, D,
                    COMPUTE_LSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Row-owned: for rows r of A, ``LSE[r] = logsumexp_c scale·A_r·B_c`` and ``POS[r] = Σ_{c pos} scale·A_r·B_c``.

    Grid: (cdiv(M, BLOCK_M),). Accumulators fp32 (running max, rescaled sum of exps, positive sum).
    With COMPUTE_LSE false only the B tiles that can hold positives of this row block are visited; LSE gets 0.
    """
    m0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    scale = tl.load(scale_ptr)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if COMPUTE_LSE:
        n_lo = m0 * 0
        n_hi = N + m0 * 0
    else:
        # groups are monotone in the index, so the positives of this block are one contiguous column range
        g_lo = (m0 + a_off) // a_div
        g_hi = (tl.minimum(m0 + BLOCK_M, M) - 1 + a_off) // a_div
        n_lo = tl.maximum(g_lo * b_div - b_off, 0)
        n_hi = tl.minimum((g_hi + 1) * b_div - b_off, N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        z = scale * tile_dot(A_ptr, stride_am, stride_ad, rows, M, B_ptr, stride_bm, stride_bd, cols, N, D,
                             BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
        col_ok = (cols < N)[None, :]
        is_pos = _positive(rows, cols, a_off, a_div, b_off, b_div) & col_ok
        pos += tl.sum(tl.where(is_pos, z, 0.0), axis=1)
        if COMPUTE_LSE:
            z = tl.where(col_ok, z, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(z, axis=1))
            # shift 0 where the running max is ±inf: a tile that starts at −inf must not give exp(−inf + inf) = NaN
            sh = tl.where((m_new == float("inf")) | (m_new == float("-inf")), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - sh) + tl.sum(tl.exp(z - sh[:, None]), axis=1)
            m_i = m_new
    row_ok = rows < M
    if COMPUTE_LSE:
        sh = tl.where((m_i == float("inf")) | (m_i == float("-inf")), 0.0, m_i)
        tl.store(LSE_ptr + rows, sh + tl.log(l_i), mask=row_ok)
    else:
        tl.store(LSE_ptr + rows, tl.zeros((BLOCK_M,), dtype=tl.float32), mask=row_ok)
    tl.store(POS_ptr + rows, pos, mask=row_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=["M", "N", "D"])
@triton.jit
def _grad_kernel(A_ptr, stride_am, stride_ad, B_ptr, stride_bm, stride_bd, scale_ptr,
                 LSE_A_ptr, LSE_B_ptr, COEF_A_ptr, COEF_B_ptr, w_pos, a_off, a_div, b_off, b_div,
                 DA_ptr, DS_ROW_ptr, M, N, D,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
                 CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr, GRAD_DOT_MODE: tl.constexpr):
    """Row-owned gradient: ``DA[r, dchunk] = scale · Σ_c dZ[r, c] · B[c, dchunk]`` with
    ``dZ = coef_a[r]·exp(Z − lse_a[r]) + coef_b[c]·exp(Z − lse_b[c]) − w_pos·[pos(r, c)]``.

    Grid: (cdiv(M, BLOCK_M), cdiv(D, BLOCK_DO)); the programs of feature chunk 0 also write the per-row scale
    gradient ``DS_ROW[r] = Σ_c dZ[r, c] · (A_r · B_c)`` (every row written whatever the config: autotune-safe). dZ is formed in fp32; for fp16/bf16 inputs the gradient
    product is a TF32 dot (GRAD_DOT_MODE 2: exact on fp16/bf16 B, fp32 range for dZ, so small dZ entries never
    underflow an fp16 operand). A zero coefficient contributes exactly 0 (its LSE may be unset).
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    dout = pid_d.to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dout_ok = dout < D
    scale = tl.load(scale_ptr)
    lse_a = tl.load(LSE_A_ptr + rows, mask=row_ok, other=0.0)
    coef_a = tl.load(COEF_A_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    ds = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        s = tile_dot(A_ptr, stride_am, stride_ad, rows, M, B_ptr, stride_bm, stride_bd, cols, N, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
        z = scale * s
        lse_b = tl.load(LSE_B_ptr + cols, mask=col_ok, other=0.0)
        coef_b = tl.load(COEF_B_ptr + cols, mask=col_ok, other=0.0)
        dz = tl.where(coef_a[:, None] != 0.0, coef_a[:, None] * tl.exp(z - lse_a[:, None]), 0.0)
        dz += tl.where(coef_b[None, :] != 0.0, coef_b[None, :] * tl.exp(z - lse_b[None, :]), 0.0)
        dz -= tl.where(_positive(rows, cols, a_off, a_div, b_off, b_div), w_pos, 0.0)
        dz = tl.where(row_ok[:, None] & col_ok[None, :], dz, 0.0)
        ds += tl.sum(tl.where(dz != 0.0, dz * s, 0.0), axis=1)  # 0 · (−inf score) adds 0, not NaN
        b = tl.load(B_ptr + cols[:, None] * stride_bm + dout[None, :] * stride_bd,
                    mask=col_ok[:, None] & dout_ok[None, :], other=0.0)
        acc += mma(dz, b.to(tl.float32), False, GRAD_DOT_MODE)
    tl.store(DA_ptr + rows[:, None] * D + dout[None, :], scale * acc, mask=row_ok[:, None] & dout_ok[None, :])
    if pid_d == 0:
        tl.store(DS_ROW_ptr + rows, ds, mask=row_ok)


def _check_vec(name, t, n, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {t.device}")
    return t.detach().to(torch.float32).contiguous()


def _check_ids(row_off, row_div, col_off, col_div):
    for name, v, lo in (("row_off", row_off, 0), ("row_div", row_div, 1), ("col_off", col_off, 0),
                        ("col_div", col_div, 1)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")


def _lse_pos(a, b, scale, a_off, a_div, b_off, b_div, compute_lse):
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    lse = torch.empty(m, dtype=torch.float32, device=a.device)
    pos = torch.empty(m, dtype=torch.float32, device=a.device)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]),)

    _lse_pos_kernel[grid](a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1), scale,
                          a_off, a_div, b_off, b_div, lse, pos, m, n, d,
                          COMPUTE_LSE=compute_lse, BLOCK_D=block_d(d), **dot_flags(a.dtype))
    return lse, pos


def contrastive_forward(x, y, scale, row_off, row_div, col_off, col_div, compute_col):
    """Row/column LSE and positive sums of ``Z = scale · x yᵀ`` (never materialised).

    Args:
        x: [M, d] rows; y: [N, d] columns (fp32/fp16/bf16, one dtype, any strides).
        scale: 0-dim float32 tensor on the device of x (loaded in the kernel, no host sync).
        row_off, row_div, col_off, col_div: ints of the positive rule
            ``(r + row_off) // row_div == (c + col_off) // col_div``.
        compute_col: also compute ``lse_col`` (else it is returned as zeros).

    Returns:
        lse_row [M], lse_col [N], pos_row [M], pos_col [N], all float32.
    """
    check_operands(("x", "y"), (x, y))
    _check_ids(row_off, row_div, col_off, col_div)
    s = scale_operand(scale, x.device)
    with device_guard(x):
        lse_row, pos_row = _lse_pos(x, y, s, row_off, row_div, col_off, col_div, True)
        lse_col, pos_col = _lse_pos(y, x, s, col_off, col_div, row_off, row_div, bool(compute_col))
    return lse_row, lse_col, pos_row, pos_col


def _grad(a, b, scale, lse_a, lse_b, coef_a, coef_b, w_pos, a_off, a_div, b_off, b_div):
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    da = torch.empty((m, d), dtype=torch.float32, device=a.device)
    ds_row = torch.empty(m, dtype=torch.float32, device=a.device)
    bdo = block_dout(d)
    flags = dot_flags(a.dtype)
    grad_mode = 2 if flags["DOT_MODE"] == 0 else flags["DOT_MODE"]

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(d, bdo))

    _grad_kernel[grid](a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1), scale,
                       lse_a, lse_b, coef_a, coef_b, float(w_pos), a_off, a_div, b_off, b_div,
                       da, ds_row, m, n, d, BLOCK_D=block_d(d), BLOCK_DO=bdo, GRAD_DOT_MODE=grad_mode, **flags)
    return da, ds_row.sum()


def contrastive_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div, col_off,
                         col_div):
    """Gradients of the contrastive losses through the saved LSEs (docs/interop.md).

    ``dZ[r,c] = row_coef[r]·exp(Z[r,c] − lse_row[r]) + col_coef[c]·exp(Z[r,c] − lse_col[c]) − w_pos·[pos(r,c)]``.

    Args:
        x: [M, d]; y: [N, d]; scale: 0-dim float32 tensor.
        lse_row [M], lse_col [N], row_coef [M], col_coef [N]: float32 vectors (``lse_col`` may be anything where
            ``col_coef`` is zero).
        w_pos: float weight of the positives; the ints of the positive rule as in :func:`contrastive_forward`.

    Returns:
        dx [M, d] float32 (``scale · dZ y``), dy [N, d] float32 (``scale · dZᵀ x``),
        dscale 0-dim float32 (``Σ dZ ⊙ x yᵀ``).
    """
    check_operands(("x", "y"), (x, y))
    _check_ids(row_off, row_div, col_off, col_div)
    m, n = x.shape[0], y.shape[0]
    s = scale_operand(scale, x.device)
    lse_row = _check_vec("lse_row", lse_row, m, x.device)
    lse_col = _check_vec("lse_col", lse_col, n, x.device)
    row_coef = _check_vec("row_coef", row_coef, m, x.device)
    col_coef = _check_vec("col_coef", col_coef, n, x.device)
    with device_guard(x):
        dx, dscale = _grad(x, y, s, lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div, col_off, col_div)
        dy, _ = _grad(y, x, s, lse_col, lse_row, col_coef, row_coef, w_pos, col_off, col_div, row_off, row_div)
    return dx, dy, dscale
