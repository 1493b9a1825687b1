"""Triton fused rank counting (docs/interop.md, "ranks"): ``rank(t) = #{c: s_c > s_t} + #{c: s_c == s_t, c < t}``.

:func:`_ranks_kernel`, grid (query blocks, gallery splits), square [BLOCK, BLOCK] tiles:

1. prologue: the target scores ``s_t`` come from a tile dot of the query block against the gathered target rows
   (row j of the gathered tile is query j's target), i.e. the same tile shape, dtype and feature loop as the sweep,
   so ``s_t`` equals the sweep's score of column t bit for bit and the target never outranks itself;
2. sweep: each gallery tile of the split is compared against every target of the block and the counts are
   accumulated in int32 registers; the [splits, Q, T] int64 counts are summed and minimised on the host.

No Q×G matrix; memory O(splits·Q·T).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import autotune_configs, block_d, check_operands, device_guard, dot_flags, interpreting, tile_dot

_CONFIGS = autotune_configs([
    ({}, 4, 1),  # the interpreter's single config; the tile size is the host's (it fixes the arithmetic)
    ({}, 8, 1),  # 8 warps: with 4, T = 8 targets spill on sm_80 (gpu-check --compile-only)
    ({}, 8, 2),
    ({}, 8, 3),
])


@triton.autotune(configs=_CONFIGS, key=["Q", "G", "D", "T"])
@triton.jit
def _ranks_kernel(Q_ptr, stride_qm, stride_qd, G_ptr, stride_gm, stride_gd, TGT_ptr, WS_ptr, Q, G, D, T,
                  chunk, TP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                  CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Counts for queries [pid0·BLOCK, +BLOCK) over gallery rows [pid1·chunk, +chunk) for all T targets.

    ``WS[pid1, q, t] = #{c in split: s_c > s_t or (s_c == s_t and c < t)}`` (int64; garbage for padding targets).
    TP = next_pow2(T) is the width of the per-query target registers.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < Q
    split = tl.program_id(1).to(tl.int64)
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, G)
    tcol = tl.arange(0, TP)
    eye = tl.arange(0, BLOCK)[:, None] == tl.arange(0, BLOCK)[None, :]
    s_tgt = tl.zeros((BLOCK, TP), dtype=tl.float32)
    i_tgt = tl.zeros((BLOCK, TP), dtype=tl.int64)
    for t in range(T):
        tg = tl.load(TGT_ptr + rows * T + t, mask=row_ok, other=-1)
        tg = tl.where((tg >= 0) & (tg < G), tg, G)  # padding reads zeros and counts garbage, dropped by the host
        st = tile_dot(Q_ptr, stride_qm, stride_qd, rows, Q, G_ptr, stride_gm, stride_gd, tg, G, D,
                      BLOCK, BLOCK, BLOCK_D, CAST_FP32, DOT_MODE)
        st = tl.sum(tl.where(eye, st, 0.0), axis=1)
        s_tgt = tl.where(tcol[None, :] == t, st[:, None], s_tgt)
        i_tgt = tl.where(tcol[None, :] == t, tg[:, None], i_tgt)
    counts = tl.zeros((BLOCK, TP), dtype=tl.int32)
    for n0 in range(n_lo, n_hi, BLOCK):
        cols = n0 + tl.arange(0, BLOCK).to(tl.int64)
        s = tile_dot(Q_ptr, stride_qm, stride_qd, rows, Q, G_ptr, stride_gm, stride_gd, cols, G, D,
                     BLOCK, BLOCK, BLOCK_D, CAST_FP32, DOT_MODE)
        col_ok = (cols < n_hi)[None, :]
        for t in range(T):
            st = tl.sum(tl.where(tcol[None, :] == t, s_tgt, 0.0), axis=1)[:, None]
            tg = tl.sum(tl.where(tcol[None, :] == t, i_tgt, 0), axis=1)[:, None]
            ahead = col_ok & ((s > st) | ((s == st) & (cols[None, :] < tg)))
            cnt = tl.sum(ahead.to(tl.int32), axis=1)
            counts += tl.where(tcol[None, :] == t, cnt[:, None], 0)
    out = WS_ptr + (split * Q + rows[:, None]) * T + tcol[None, :]
    tl.store(out, counts.to(tl.int64), mask=row_ok[:, None] & (tcol < T)[None, :])


def _block() -> int:
    return 16 if interpreting() else 64


def target_ranks(q: torch.Tensor, g: torch.Tensor, targets: torch.Tensor, *, block_size: int = 0) -> torch.Tensor:
    """0-based rank of each query's best target in the stable descending order of its gallery scores.

    Args:
        q: [Q, d] queries; g: [G, d] gallery (fp32/fp16/bf16, one dtype, any strides).
        targets: int64 [Q] or [Q, T], entries in [0, G) or −1 (padding).
        block_size: gallery rows per program (rounded up to the tile); 0 = enough splits to fill the GPU.

    Returns:
        ranks [Q] int64: the minimum rank over the valid targets, −1 for a row without one.
    """
    check_operands(("q", "g"), (q, g))
    n_q, n_g, d = q.shape[0], g.shape[0], q.shape[1]
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64 or targets.dim() not in (1, 2) or targets.shape[0] != n_q:
        raise ValueError(f"targets must be int64 of shape [{n_q}] or [{n_q}, T], got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    if targets.device != q.device:
        raise ValueError(f"targets must be on the device of q ({q.device}), got {targets.device}")
    if targets.dim() == 1:
        targets = targets[:, None]
    if targets.shape[1] == 0:
        raise ValueError(f"targets must have at least one column, got shape {tuple(targets.shape)}")
    if bool(((targets < -1) | (targets >= n_g)).any()):
        raise ValueError(f"targets entries must be in [0, G={n_g}) or -1 (padding), got min "
                         f"{int(targets.min())} max {int(targets.max())}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0:
        raise ValueError(f"block_size must be an int >= 0 (0 = default), got {block_size!r}")
    targets = targets.contiguous()
    n_t = targets.shape[1]
    block = _block()
    with device_guard(q):
        if block_size > 0:
            chunk = triton.cdiv(block_size, block) * block
        elif interpreting():
            chunk = triton.cdiv(n_g, block) * block
        else:
            sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
            splits = max(1, min(triton.cdiv(n_g, block), triton.cdiv(2 * sms, triton.cdiv(n_q, block))))
            chunk = triton.cdiv(triton.cdiv(n_g, splits), block) * block
        n_splits = triton.cdiv(n_g, chunk)
        ws = torch.empty((n_splits, n_q, n_t), dtype=torch.int64, device=q.device)
        grid = (triton.cdiv(n_q, block), n_splits)
        _ranks_kernel[grid](q, q.stride(0), q.stride(1), g, g.stride(0), g.stride(1), targets, ws, n_q, n_g, d, n_t,
                            chunk, TP=triton.next_power_of_2(n_t), BLOCK=block, BLOCK_D=block_d(d),
                            **dot_flags(q.dtype))
        counts = ws.sum(0)
        valid = targets >= 0
        best = torch.where(valid, counts, torch.iinfo(torch.int64).max).min(1).values
        return torch.where(valid.any(1), best, torch.full_like(best, -1))
