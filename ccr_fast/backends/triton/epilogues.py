"""Triton epilogues of the ``blas`` backend on CUDA: memory-bound passes over a score chunk that cuBLAS wrote.

The GEMM ``S = A Bᵀ`` (fp32 scores, fp32 accumulation) is done by ``torch.mm`` in ``ccr_fast.backends.blas.gpu``;
the kernels here read ``S`` (or one row chunk of it, ``[m, n]`` with row stride ``ld``) once and write only
vectors, small per-block partials, or the gradient matrix dZ:

* :func:`lse_partials`: row log-sum-exp and positive sums of ``Z = scale·S`` per column split, and the column
  log-sum-exp / positive-sum partials of each row block (the caller merges them with ``torch.logsumexp``);
* :func:`dz`: ``dZ = (row_coef·exp(Z − lse_row) + col_coef·exp(Z − lse_col) − w_pos·[pos]) · inv_norm``, formed in
  fp32 and rounded once to the output dtype (bf16/fp16 for bf16/fp16 inputs);
* :func:`hardest`: VSE++ hardest negatives (packed int64 keys: max score, lowest index on ties) or hinge sums, per
  row and per column, excluding the diagonal by index;
* :func:`triplet_weights`: the sum-of-hinges gradient weights (0/1/2, exact in any dtype) and active counts;
* :func:`topk_partials`: the k best packed keys of each row per column split (k <= ``EPILOGUE_MAX_K``);
* :func:`rank_counts`: ``#{c: s_c > s_t or (s_c == s_t and c < t)}`` per target, with ``s_t`` read from the same
  ``S`` (so the target's score is the very value it is compared in).

Every −inf/+inf in ``S`` is handled: a block whose maximum is ±inf uses 0 as its shift, so an all −inf row gives
lse = −inf and a +inf gives +inf, never NaN. Grids put the long axis first (CUDA allows 2³¹−1 blocks there and
65535 on the others). All partial buffers are owned by one program: no atomics, deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import KEY_MIN, interpreting, merge_topk, orderable

# k up to this value is selected in registers by :func:`topk_partials`; above it the caller sorts packed keys.
EPILOGUE_MAX_K = 64
_MAX_GRID_Y = 65535


def _tiles():
    """(BLOCK_M, BLOCK_N, num_warps) of the streaming epilogues: 64×64 fp32 tiles and 8 warps on a GPU (larger
    tiles spill in the loops: gpu-check --compile-only), small ones interpreted. Loops run with num_stages=1."""
    return (16, 32, 4) if interpreting() else (64, 64, 8)


@triton.jit
def _shift(m):
    """The exp shift of a block maximum: ``m``, or 0 where ``m`` is ±inf (so exp never sees inf − inf)."""
    return tl.where((m == float("inf")) | (m == float("-inf")), 0.0, m)


def group_ids(n: int, base: int, off: int, div: int, device) -> torch.Tensor:
    """int32 group ids ``(base + i + off) // div`` of ``n`` consecutive rows (the positive rule's two sides are
    compared as loaded vectors: a 64-bit division per element costs the epilogues registers they need)."""
    return torch.div(torch.arange(base + off, base + off + n, device=device), div, rounding_mode="floor").to(
        torch.int32)


# ------------------------------------------------------------------------------------------------- contrastive
@triton.jit
def _lse_partials_kernel(S_ptr, ld, scale_ptr, M, N, chunk, RGID_ptr, CGID_ptr,
                         ROW_LSE_ptr, ROW_POS_ptr, COL_LSE_ptr, COL_POS_ptr,
                         COMPUTE_COL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (split j, row block i) over rows [i·BM, +BM) and columns [j·chunk, +chunk) of ``Z = scale·S``.

    Writes ROW_LSE[j, r], ROW_POS[j, r] (the split's row logsumexp / positive sum) and, per column tile,
    COL_LSE[i, c] (the block's column logsumexp, COMPUTE_COL only) and COL_POS[i, c]. (r, c) is positive iff
    RGID[r] == CGID[c] (int32 group ids from :func:`group_ids`).
    """
    split = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rgid = tl.load(RGID_ptr + rows, mask=row_ok, other=-1)
    scale = tl.load(scale_ptr)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < n_hi
        ok = row_ok[:, None] & col_ok[None, :]
        z = scale * tl.load(S_ptr + rows[:, None] * ld + cols[None, :], mask=ok, other=0.0)
        cgid = tl.load(CGID_ptr + cols, mask=col_ok, other=-2)
        is_pos = (rgid[:, None] == cgid[None, :]) & ok
        pz = tl.where(is_pos, z, 0.0)
        pos += tl.sum(pz, axis=1)
        tl.store(COL_POS_ptr + blk * N + cols, tl.sum(pz, axis=0), mask=col_ok)
        z = tl.where(ok, z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        sh = _shift(m_new)
        l_i = l_i * tl.exp(m_i - sh) + tl.sum(tl.exp(z - sh[:, None]), axis=1)
        m_i = m_new
        if COMPUTE_COL:
            c_sh = _shift(tl.max(z, axis=0))
            c_lse = c_sh + tl.log(tl.sum(tl.exp(z - c_sh[None, :]), axis=0))
            tl.store(COL_LSE_ptr + blk * N + cols, c_lse, mask=col_ok)
    tl.store(ROW_LSE_ptr + split * M + rows, _shift(m_i) + tl.log(l_i), mask=row_ok)
    tl.store(ROW_POS_ptr + split * M + rows, pos, mask=row_ok)


def _splits(n_blocks: int, n: int, block_n: int) -> int:
    """Column splits so that about two waves of programs run (one split under the interpreter)."""
    if interpreting():
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, min(triton.cdiv(n, block_n), triton.cdiv(2 * sms, n_blocks)))


def _check_grid_y(n_blocks: int, block_m: int):
    if n_blocks > _MAX_GRID_Y:
        raise ValueError(f"score chunk has too many rows for one epilogue launch: {n_blocks * block_m} "
                         f"(at most {_MAX_GRID_Y * block_m})")


def lse_partials(s, scale, row_base, a_off, a_div, b_off, b_div, compute_col):
    """Row LSE / positive sums and per-row-block column partials of ``Z = scale · s``.

    Args:
        s: [m, n] float32 scores, unit column stride. scale: 0-dim float32 tensor (device of ``s``).
        row_base: global index of row 0 of ``s``; a_off, a_div, b_off, b_div: the positive rule
            ``(row_base + r + a_off) // a_div == (c + b_off) // b_div``. compute_col: also the column LSE partials.

    Returns:
        lse_row [m], pos_row [m], col_lse_part [m_blocks, n] (None unless compute_col), col_pos_part [m_blocks, n];
        the caller reduces the partials over dim 0 (logsumexp / sum).
    """
    m, n = s.shape
    bm, bn, warps = _tiles()
    n_blocks = triton.cdiv(m, bm)
    _check_grid_y(n_blocks, bm)
    splits = _splits(n_blocks, n, bn)
    chunk = triton.cdiv(triton.cdiv(n, splits), bn) * bn
    splits = triton.cdiv(n, chunk)
    dev = s.device
    row_lse = torch.empty((splits, m), dtype=torch.float32, device=dev)
    row_pos = torch.empty((splits, m), dtype=torch.float32, device=dev)
    col_lse = torch.empty((n_blocks, n), dtype=torch.float32, device=dev) if compute_col else row_lse
    col_pos = torch.empty((n_blocks, n), dtype=torch.float32, device=dev)
    rgid, cgid = group_ids(m, row_base, a_off, a_div, dev), group_ids(n, 0, b_off, b_div, dev)
    _lse_partials_kernel[(splits, n_blocks)](s, s.stride(0), scale, m, n, chunk, rgid, cgid,
                                             row_lse, row_pos, col_lse, col_pos, COMPUTE_COL=bool(compute_col),
                                             BLOCK_M=bm, BLOCK_N=bn, num_stages=1, num_warps=warps)
    lse_row = row_lse[0] if splits == 1 else torch.logsumexp(row_lse, 0)
    pos_row = row_pos.sum(0)
    return lse_row, pos_row, (col_lse if compute_col else None), col_pos


@triton.jit
def _dz_kernel(S_ptr, ld, DZ_ptr, ld_dz, scale_ptr, LSE_R_ptr, LSE_C_ptr, COEF_R_ptr, COEF_C_ptr, w_pos, inv_ptr,
               M, N, RGID_ptr, CGID_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One [BM, BN] tile of ``dZ·inv`` (columns on grid axis 0, rows on axis 1); fp32 math, one final rounding."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    col_ok = cols < N
    ok = row_ok[:, None] & col_ok[None, :]
    scale = tl.load(scale_ptr)
    inv = tl.load(inv_ptr)
    z = scale * tl.load(S_ptr + rows[:, None] * ld + cols[None, :], mask=ok, other=0.0)
    lse_r = tl.load(LSE_R_ptr + rows, mask=row_ok, other=0.0)
    coef_r = tl.load(COEF_R_ptr + rows, mask=row_ok, other=0.0)
    lse_c = tl.load(LSE_C_ptr + cols, mask=col_ok, other=0.0)
    coef_c = tl.load(COEF_C_ptr + cols, mask=col_ok, other=0.0)
    g = tl.where(coef_r[:, None] != 0.0, coef_r[:, None] * tl.exp(z - lse_r[:, None]), 0.0)
    g += tl.where(coef_c[None, :] != 0.0, coef_c[None, :] * tl.exp(z - lse_c[None, :]), 0.0)
    rgid = tl.load(RGID_ptr + rows, mask=row_ok, other=-1)
    cgid = tl.load(CGID_ptr + cols, mask=col_ok, other=-2)
    g -= tl.where(rgid[:, None] == cgid[None, :], w_pos, 0.0)
    tl.store(DZ_ptr + rows[:, None] * ld_dz + cols[None, :], (g * inv).to(DZ_ptr.dtype.element_ty), mask=ok)


def dz(s, out, scale, lse_row, lse_col, row_coef, col_coef, w_pos, inv_norm, row_base, a_off, a_div, b_off, b_div):
    """Write ``out[r, c] = inv_norm · dZ[r, c]`` (contract of ``contrastive_backward``) from the scores ``s``.

    Args:
        s: [m, n] float32 scores of rows row_base.. (unit column stride). out: [m, n] float32/float16/bfloat16.
        scale, inv_norm: 0-dim float32 tensors. lse_row, row_coef: [m] float32 (this chunk's rows);
        lse_col, col_coef: [n] float32. w_pos: float. The positive rule as in :func:`lse_partials`.
    """
    m, n = s.shape
    bm, bn, warps = _tiles()
    _check_grid_y(triton.cdiv(m, bm), bm)
    grid = (triton.cdiv(n, bn), triton.cdiv(m, bm))
    rgid, cgid = group_ids(m, row_base, a_off, a_div, s.device), group_ids(n, 0, b_off, b_div, s.device)
    _dz_kernel[grid](s, s.stride(0), out, out.stride(0), scale, lse_row, lse_col, row_coef, col_coef, float(w_pos),
                     inv_norm, m, n, rgid, cgid, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
    return out


# ------------------------------------------------------------------------------------------------- triplet
@triton.jit
def _hardest_kernel(S_ptr, ld, DIAG_ptr, margin, M, N, chunk, row_base, ROW_ptr, COL_ptr,
                    MAX_VIOLATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (split j, row block i) of ``S[i, c] = b_(row_base+i) · a_c``, diagonal excluded by index.

    MAX_VIOLATION: ROW[j, r] = max packed key of row r over the split, COL[i, c] = max packed key of column c over
    the block (key = orderable score << 32 | (2³²−1 − index): max score, lowest index on ties).
    Else: ROW[j, r] = Σ_c max(0, margin + S − DIAG[row]), COL[i, c] = Σ_r max(0, margin + S − DIAG[c]) (float32).
    """
    split = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    grow = rows + row_base
    row_ok = rows < M
    p_row = tl.load(DIAG_ptr + grow, mask=row_ok, other=0.0)
    best = tl.full((BLOCK_M,), KEY_MIN, dtype=tl.int64)
    cost = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, N)
    low32 = tl.full((BLOCK_N,), 0xFFFFFFFF, dtype=tl.int64)
    low32_m = tl.full((BLOCK_M,), 0xFFFFFFFF, dtype=tl.int64)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < n_hi
        neg = row_ok[:, None] & col_ok[None, :] & (grow[:, None] != cols[None, :])
        s = tl.load(S_ptr + rows[:, None] * ld + cols[None, :], mask=neg, other=0.0)
        if MAX_VIOLATION:
            keys = (orderable(s).to(tl.int64) << 32) | (low32 - cols)[None, :]
            keys = tl.where(neg, keys, KEY_MIN)
            best = tl.maximum(best, tl.max(keys, axis=1))
            # column keys carry the row index
            ckeys = (orderable(s).to(tl.int64) << 32) | (low32_m - grow)[:, None]
            ckeys = tl.where(neg, ckeys, KEY_MIN)
            tl.store(COL_ptr + blk * N + cols, tl.max(ckeys, axis=0), mask=col_ok)
        else:
            p_col = tl.load(DIAG_ptr + cols, mask=col_ok, other=0.0)
            cost += tl.sum(tl.where(neg, tl.maximum(margin + s - p_row[:, None], 0.0), 0.0), axis=1)
            c_cost = tl.sum(tl.where(neg, tl.maximum(margin + s - p_col[None, :], 0.0), 0.0), axis=0)
            tl.store(COL_ptr + blk * N + cols, c_cost, mask=col_ok)
    if MAX_VIOLATION:
        tl.store(ROW_ptr + split * M + rows, best, mask=row_ok)
    else:
        tl.store(ROW_ptr + split * M + rows, cost, mask=row_ok)


def hardest(s, diag, margin, row_base, max_violation):
    """Per-row and per-row-block column results of the VSE++ sweep over a score chunk.

    Args:
        s: [m, n] float32, ``s[r, c] = b_(row_base+r) · a_c``. diag: [n] float32 ``S[i, i]``. margin: float.

    Returns:
        max_violation: (row_keys [m] int64, col_key_part [m_blocks, n] int64) — reduce with ``amax(0)``;
        else (row_cost [m] float32, col_cost_part [m_blocks, n] float32) — reduce with ``sum(0)``.
    """
    m, n = s.shape
    bm, bn, warps = _tiles()
    n_blocks = triton.cdiv(m, bm)
    _check_grid_y(n_blocks, bm)
    splits = _splits(n_blocks, n, bn)
    chunk = triton.cdiv(triton.cdiv(n, splits), bn) * bn
    splits = triton.cdiv(n, chunk)
    dt = torch.int64 if max_violation else torch.float32
    row = torch.empty((splits, m), dtype=dt, device=s.device)
    col = torch.empty((n_blocks, n), dtype=dt, device=s.device)
    _hardest_kernel[(splits, n_blocks)](s, s.stride(0), diag, float(margin), m, n, chunk, row_base, row, col,
                                        MAX_VIOLATION=bool(max_violation), BLOCK_M=bm, BLOCK_N=bn, num_stages=1, num_warps=warps)
    return (row.amax(0) if max_violation else row.sum(0)), col


@triton.jit
def _triplet_weights_kernel(S_ptr, ld, W_ptr, ld_w, DIAG_ptr, margin, NACT_R_ptr, NACT_C_ptr, M, N, row_base,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One tile of ``W = [r≠c]([margin + S − DIAG[r] > 0] + [margin + S − DIAG[c] > 0])`` (0, 1 or 2) and the
    tile's active counts: NACT_R[col block, r] (row hinges) and NACT_C[row block, c] (column hinges)."""
    cb = tl.program_id(0).to(tl.int64)
    rb = tl.program_id(1).to(tl.int64)
    cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    grow = rows + row_base
    row_ok = rows < M
    col_ok = cols < N
    neg = row_ok[:, None] & col_ok[None, :] & (grow[:, None] != cols[None, :])
    s = tl.load(S_ptr + rows[:, None] * ld + cols[None, :], mask=neg, other=0.0)
    p_r = tl.load(DIAG_ptr + grow, mask=row_ok, other=0.0)
    p_c = tl.load(DIAG_ptr + cols, mask=col_ok, other=0.0)
    act_r = (neg & (margin + s - p_r[:, None] > 0.0)).to(tl.float32)
    act_c = (neg & (margin + s - p_c[None, :] > 0.0)).to(tl.float32)
    tl.store(W_ptr + rows[:, None] * ld_w + cols[None, :], (act_r + act_c).to(W_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
    tl.store(NACT_R_ptr + cb * M + rows, tl.sum(act_r, axis=1), mask=row_ok)
    tl.store(NACT_C_ptr + rb * N + cols, tl.sum(act_c, axis=0), mask=col_ok)


def triplet_weights(s, out, diag, margin, row_base):
    """Sum-of-hinges gradient weights of a chunk into ``out`` [m, n] and the active counts.

    Returns:
        nact_row [m] float32 (row hinges active per row), nact_col_part [m_blocks, n] float32 (reduce with sum(0)).
    """
    m, n = s.shape
    bm, bn, warps = _tiles()
    n_blocks = triton.cdiv(m, bm)
    _check_grid_y(n_blocks, bm)
    n_cb = triton.cdiv(n, bn)
    nact_r = torch.empty((n_cb, m), dtype=torch.float32, device=s.device)
    nact_c = torch.empty((n_blocks, n), dtype=torch.float32, device=s.device)
    _triplet_weights_kernel[(n_cb, n_blocks)](s, s.stride(0), out, out.stride(0), diag, float(margin), nact_r, nact_c,
                                              m, n, row_base, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
    return nact_r.sum(0), nact_c


# ------------------------------------------------------------------------------------------------- top-k, ranks
@triton.jit
def _topk_partials_kernel(S_ptr, ld, WS_ptr, M, N, chunk, n_splits, col_base, K,
                          SELECT_SORT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (split j, row block i): the K best packed keys of each row over columns [j·chunk, +chunk) →
    WS[r, j, 0:K] (descending; KEY_MIN where the split has fewer than K columns). Index = col_base + c."""
    split = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, N)
    lane = tl.arange(0, BLOCK_N)
    best = tl.full((BLOCK_M, BLOCK_N), KEY_MIN, dtype=tl.int64)
    kth = tl.full((BLOCK_M,), KEY_MIN, dtype=tl.int64)
    low32 = tl.full((BLOCK_N,), 0xFFFFFFFF, dtype=tl.int64)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + lane.to(tl.int64)
        ok = row_ok[:, None] & (cols < n_hi)[None, :]
        s = tl.load(S_ptr + rows[:, None] * ld + cols[None, :], mask=ok, other=0.0)
        keys = (orderable(s).to(tl.int64) << 32) | (low32 - (cols + col_base))[None, :]
        keys = tl.where(ok, keys, KEY_MIN)
        best, kth = merge_topk(best, kth, keys, lane, K, SELECT_SORT, BLOCK_M, BLOCK_N)
    out = WS_ptr + (rows[:, None] * n_splits + split) * K + lane[None, :]
    tl.store(out, best, mask=row_ok[:, None] & (lane < K)[None, :])


def topk_partials(s, k, col_base=0):
    """The k best packed keys per row of a score chunk, per column split.

    Args:
        s: [m, n] float32 scores (unit column stride); k: 1 <= k <= min(n, EPILOGUE_MAX_K); col_base: global index
            of column 0.

    Returns:
        keys [m, splits·k] int64 (each split's k best, descending; merge with ``torch.topk``).
    """
    m, n = s.shape
    if not 1 <= k <= min(n, EPILOGUE_MAX_K):
        raise ValueError(f"k must be in [1, min(n={n}, {EPILOGUE_MAX_K})], got {k}")
    kp = triton.next_power_of_2(k)
    if interpreting():
        bm, bn = 16, max(16, kp)
    else:
        bn = max(64, kp)
        bm = 32  # 64-row blocks spill in either merge at 4 warps (gpu-check --compile-only)
    n_blocks = triton.cdiv(m, bm)
    _check_grid_y(n_blocks, bm)
    splits = _splits(n_blocks, n, bn)
    chunk = triton.cdiv(triton.cdiv(n, splits), bn) * bn
    splits = triton.cdiv(n, chunk)
    ws = torch.empty((m, splits, k), dtype=torch.int64, device=s.device)
    _topk_partials_kernel[(splits, n_blocks)](s, s.stride(0), ws, m, n, chunk, splits, col_base, k,
                                              SELECT_SORT=k > 16, BLOCK_M=bm, BLOCK_N=bn,
                                              num_stages=1, num_warps=8)  # 4 warps spill (triton 3.6, sm_90)
    return ws.view(m, splits * k)


@triton.jit
def _rank_counts_kernel(S_ptr, ld, TGT_ptr, WS_ptr, M, N, T, chunk, TP: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (split j, row block i): WS[j, r, t] = #{c in split: s_c > s_t or (s_c == s_t and c < t)} with
    ``s_t = S[r, TGT[r, t]]`` read from S itself (int32; garbage for padding targets, dropped by the host)."""
    split = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    tcol = tl.arange(0, TP)
    t_ok = row_ok[:, None] & (tcol < T)[None, :]
    tg = tl.load(TGT_ptr + rows[:, None] * T + tcol[None, :], mask=t_ok, other=-1)
    valid = t_ok & (tg >= 0) & (tg < N)
    s_t = tl.load(S_ptr + rows[:, None] * ld + tg, mask=valid, other=0.0)
    counts = tl.zeros((BLOCK_M, TP), dtype=tl.int32)
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        ok = row_ok[:, None] & (cols < n_hi)[None, :]
        s = tl.load(S_ptr + rows[:, None] * ld + cols[None, :], mask=ok, other=0.0)
        for t in range(T):
            st = tl.sum(tl.where(tcol[None, :] == t, s_t, 0.0), axis=1)[:, None]
            it = tl.sum(tl.where(tcol[None, :] == t, tg, 0), axis=1)[:, None]
            ahead = ok & ((s > st) | ((s == st) & (cols[None, :] < it)))
            cnt = tl.sum(ahead.to(tl.int32), axis=1)
            counts += tl.where(tcol[None, :] == t, cnt[:, None], 0)
    tl.store(WS_ptr + (split * M + rows[:, None]) * T + tcol[None, :], counts, mask=t_ok)


def rank_counts(s, targets):
    """Per-target counts of the candidates ranked ahead, over a full-width score chunk.

    Args:
        s: [m, G] float32 scores (all gallery columns); targets: [m, T] int64 in [0, G) or −1.

    Returns:
        counts [m, T] int64 (meaningless where the target is −1).
    """
    m, n = s.shape
    n_t = targets.shape[1]
    bm, bn, warps = _tiles()
    n_blocks = triton.cdiv(m, bm)
    _check_grid_y(n_blocks, bm)
    splits = _splits(n_blocks, n, bn)
    chunk = triton.cdiv(triton.cdiv(n, splits), bn) * bn
    splits = triton.cdiv(n, chunk)
    ws = torch.empty((splits, m, n_t), dtype=torch.int32, device=s.device)
    _rank_counts_kernel[(splits, n_blocks)](s, s.stride(0), targets, ws, m, n, n_t, chunk,
                                            TP=triton.next_power_of_2(n_t), BLOCK_M=bm, BLOCK_N=bn, num_stages=1, num_warps=warps)
    return ws.sum(0, dtype=torch.int64)
