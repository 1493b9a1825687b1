"""Triton streaming top-k of inner products (docs/interop.md, "topk"): no Q×G matrix in memory.

Each score is packed with its gallery index into one int64 key,
``key = orderable_bits(score) << 32 | (0xFFFFFFFF − index)``, so that a larger key means a larger score and, for
equal scores, a lower index: one integer sort orders by (score desc, index asc).

:func:`_topk_kernel`, grid (query blocks, gallery splits): a program streams its split of the gallery in
``BLOCK_N``-row tiles, computes the [BLOCK_M, BLOCK_N] score tile with the shared tile dot, and keeps a sorted
buffer of the best k keys per query (a [BLOCK_M, BLOCK_N >= k] register tile). A tile is merged only when one of
its keys beats some row's current k-th key: by k rounds of "row max, remove it" for k <= 16, else by a bitonic
``tl.sort`` of the 2·BLOCK_N candidates keeping the upper half. Each split writes its k best keys to a
[Q, splits, k] workspace; the host merges the splits with one ``torch.topk`` on the keys and decodes them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import autotune_configs, block_d, check_operands, device_guard, dot_flags, interpreting, tile_dot

MAX_K = 1024
KEY_MIN = tl.constexpr(-(2 ** 63))  # below every real key: empty buffer slots and masked columns
# k up to this value merges by k rounds of max-extraction, above it by a bitonic tl.sort of 2·BLOCK_N keys.
SELECT_ROUNDS_MAX_K = 16
_LOW32 = 0xFFFFFFFF

_CONFIGS = autotune_configs([
    ({}, 4, 1),  # the interpreter's single config; the tile sizes are chosen by the host (they depend on k)
    ({}, 4, 2),
    ({}, 8, 2),
    ({}, 8, 3),
])


@triton.jit
def _orderable(s):
    """fp32 -> int32 whose signed order is the float order (−0.0 folded onto +0.0)."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.autotune(configs=_CONFIGS, key=["Q", "G", "D", "K", "BLOCK_N"])
@triton.jit
def _topk_kernel(Q_ptr, stride_qm, stride_qd, G_ptr, stride_gm, stride_gd, WS_ptr, Q, G, D, chunk, n_splits, K,
                 SELECT_SORT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Top-K keys of query rows [pid0·BLOCK_M, +BLOCK_M) over gallery rows [pid1·chunk, +chunk).

    Writes ``WS[q, pid1, 0:K]`` (int64 keys, descending; INT64_MIN where the split has fewer than K rows).
    Requires K <= BLOCK_N; ``chunk`` is a multiple of BLOCK_N. The merge keeps the K best of (buffer ∪ tile) by
    ``tl.sort`` (SELECT_SORT, large K) or by K rounds of row max + removal (small K).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1).to(tl.int64)
    n_lo = split * chunk
    n_hi = tl.minimum(n_lo + chunk, G)
    lane = tl.arange(0, BLOCK_N)
    best = tl.full((BLOCK_M, BLOCK_N), KEY_MIN, dtype=tl.int64)
    kth = tl.full((BLOCK_M,), KEY_MIN, dtype=tl.int64)
    low32 = tl.full((BLOCK_N,), 0xFFFFFFFF, dtype=tl.int64)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + lane.to(tl.int64)
        s = tile_dot(Q_ptr, stride_qm, stride_qd, rows, Q, G_ptr, stride_gm, stride_gd, cols, G, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, CAST_FP32, DOT_MODE)
        keys = (_orderable(s).to(tl.int64) << 32) | (low32 - cols)[None, :]
        keys = tl.where((cols < n_hi)[None, :], keys, KEY_MIN)
        if tl.max(tl.sum((keys > kth[:, None]).to(tl.int32), axis=1), axis=0) > 0:
            both = tl.reshape(tl.join(best, keys), (BLOCK_M, 2 * BLOCK_N))
            if SELECT_SORT:
                both = tl.sort(both, dim=1, descending=True)
                # descending rows: the max over the two halves of each row is its first half
                best = tl.max(tl.reshape(both, (BLOCK_M, 2, BLOCK_N)), axis=1)
                kth = tl.sum(tl.where(lane[None, :] == K - 1, best, 0), axis=1)
            else:
                # K rounds of "take the row max, remove it" (keys are unique within a row)
                for j in range(K):
                    kth = tl.max(both, axis=1)
                    best = tl.where(lane[None, :] == j, kth[:, None], best)
                    both = tl.where(both == kth[:, None], KEY_MIN, both)
    out = WS_ptr + (rows[:, None] * n_splits + split) * K + lane[None, :]
    tl.store(out, best, mask=(rows < Q)[:, None] & (lane < K)[None, :])


def _tiles(k: int):
    """(BLOCK_M, BLOCK_N) for a given k: BLOCK_N is the per-query buffer, a power of two >= k."""
    kp = triton.next_power_of_2(k)
    if interpreting():
        return 16, max(16, kp)
    block_n = max(64, kp)
    return (64 if block_n <= 128 else 32 if block_n <= 256 else 16), block_n


def _n_splits(n_q_blocks: int, n_g: int, block_n: int) -> int:
    """Default gallery split: enough programs for about two waves on the GPU (one split under the interpreter)."""
    if interpreting():
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, min(triton.cdiv(n_g, block_n), triton.cdiv(2 * sms, n_q_blocks)))


def decode_keys(keys: torch.Tensor):
    """int64 keys -> (scores float32, indices int64) (inverse of the kernel's packing)."""
    idx = _LOW32 - (keys & _LOW32)
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return bits.view(torch.float32), idx


def topk(q: torch.Tensor, g: torch.Tensor, k: int, block_size: int = 0):
    """The k highest inner products per query, streaming the gallery.

    Args:
        q: [Q, d] queries; g: [G, d] gallery (fp32/fp16/bf16, one dtype, any strides).
        k: 1 <= k <= min(G, 1024).
        block_size: gallery rows per program (rounded up to the tile); 0 = enough splits to fill the GPU.

    Returns:
        scores [Q, k] float32 sorted descending, indices [Q, k] int64; equal scores -> lower gallery index first.
    """
    check_operands(("q", "g"), (q, g))
    n_q, n_g, d = q.shape[0], g.shape[0], q.shape[1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n_g:
        raise ValueError(f"k must be in [1, G={n_g}] (g has shape {tuple(g.shape)}), got {k}")
    if k > MAX_K:
        raise ValueError(f"k must be <= {MAX_K} for the triton backend, got {k}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0:
        raise ValueError(f"block_size must be an int >= 0 (0 = default), got {block_size!r}")
    if n_g >= 2 ** 31:
        raise ValueError(f"g must have fewer than 2**31 rows for the triton backend, got {n_g}")
    block_m, block_n = _tiles(k)
    with device_guard(q):
        if block_size > 0:
            chunk = triton.cdiv(block_size, block_n) * block_n
        else:
            chunk = triton.cdiv(triton.cdiv(n_g, _n_splits(triton.cdiv(n_q, block_m), n_g, block_n)), block_n) * block_n
        n_splits = triton.cdiv(n_g, chunk)
        ws = torch.empty((n_q, n_splits, k), dtype=torch.int64, device=q.device)
        grid = (triton.cdiv(n_q, block_m), n_splits)
        _topk_kernel[grid](q, q.stride(0), q.stride(1), g, g.stride(0), g.stride(1), ws, n_q, n_g, d, chunk,
                           n_splits, k, SELECT_SORT=k > SELECT_ROUNDS_MAX_K, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d(d), **dot_flags(q.dtype))
        keys = ws.view(n_q, n_splits * k)
        if n_splits > 1:
            keys = torch.topk(keys, k, dim=1, sorted=True).values
        return decode_keys(keys)
