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

from ._utils import (KEY_MIN, autotune_configs, block_d, check_operands, device_guard, dot_flags, interpreting,
                     merge_topk, orderable, tile_dot)

MAX_K = 1024
# k up to this value merges by k rounds of max-extraction, above it by a bitonic tl.sort of 2·BLOCK_N keys.
SELECT_ROUNDS_MAX_K = 16
# k up to this value keeps its buffer in registers; above it (register blow-up: a [16, k] int64 buffer plus a
# 2k-wide sort per row) the gallery is scored in chunks by the similarity kernel and merged with torch.topk on keys.
REGISTER_MAX_K = 64
_LOW32 = 0xFFFFFFFF

_CONFIGS = autotune_configs([
    ({}, 4, 1),  # the interpreter's single config; the tile sizes are chosen by the host (they depend on k)
    ({}, 8, 1),  # 8 warps: at 4 the k = 64 sort merge spills on sm_80 with triton 3.6 (gpu-check --compile-only)
    ({}, 8, 2),
    ({}, 8, 3),
])


@triton.autotune(configs=_CONFIGS, key=["Q", "G", "D", "K", "BLOCK_N"])
@triton.jit
def _topk_kernel(Q_ptr, stride_qm, stride_qd, G_ptr, stride_gm, stride_gd, WS_ptr, Q, G, D, chunk, n_splits, K,
                 SELECT_SORT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Top-K keys of query rows [pid0·BLOCK_M, +BLOCK_M) over gallery rows [pid1·chunk, +chunk).

    Writes ``WS[q, pid1, 0:K]`` (int64 keys, descending; INT64_MIN where the split has fewer than K rows).
    Requires K <= BLOCK_N; ``chunk`` is a multiple of BLOCK_N. The merge (:func:`merge_topk`) keeps the K best of
    (buffer ∪ tile) by ``tl.sort`` (SELECT_SORT, large K) or by K rounds of row max + removal (small K).
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
        keys = (orderable(s).to(tl.int64) << 32) | (low32 - cols)[None, :]
        keys = tl.where((cols < n_hi)[None, :], keys, KEY_MIN)
        best, kth = merge_topk(best, kth, keys, lane, K, SELECT_SORT, BLOCK_M, BLOCK_N)
    out = WS_ptr + (rows[:, None] * n_splits + split) * K + lane[None, :]
    tl.store(out, best, mask=(rows < Q)[:, None] & (lane < K)[None, :])


def pack_keys(scores: torch.Tensor, col_base: int = 0) -> torch.Tensor:
    """float32 scores [m, n] -> int64 packed keys (the kernels' packing, in torch): larger key = larger score,
    then lower index ``col_base + c``."""
    s = torch.where(scores == 0, torch.zeros_like(scores), scores)
    bits = s.view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    idx = torch.arange(col_base, col_base + scores.shape[1], device=scores.device, dtype=torch.int64)
    return (ordered << 32) | (_LOW32 - idx)[None, :]


def merge_keys(best, keys, k: int):
    """The k largest of ``best`` [m, k] (or None) and ``keys`` [m, n], sorted descending (keys are unique)."""
    both = keys if best is None else torch.cat((best, keys), dim=1)
    return torch.topk(both, min(k, both.shape[1]), dim=1, sorted=True).values


def _topk_large_k(q, g, k, block_size):
    """k > REGISTER_MAX_K: similarity kernel over gallery chunks, running merge of packed keys (memory O(Q·chunk))."""
    from .similarity import similarity  # noqa: PLC0415 - sibling module

    n_q, n_g = q.shape[0], g.shape[0]
    chunk = block_size if block_size > 0 else max(k, (256 << 20) // (12 * n_q))  # ~256 MiB of scores + keys
    best = None
    for c0 in range(0, n_g, chunk):
        keys = pack_keys(similarity(q, g[c0:c0 + chunk]), c0)
        best = merge_keys(best, keys, k)
    return best


def _tiles(k: int):
    """(BLOCK_M, BLOCK_N) for a given k: BLOCK_N is the per-query buffer, a power of two >= k."""
    kp = triton.next_power_of_2(k)
    if interpreting():
        return 16, max(16, kp)
    # k <= REGISTER_MAX_K = 64: BLOCK_N = 64. A merge holds 2-3 [BLOCK_M, 64] int64 tiles per program; 64 rows
    # spill at 4 warps on sm_90 (gpu-check --compile-only), 32 rows do not.
    return 32, max(64, kp)


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
    if k > REGISTER_MAX_K:
        with device_guard(q):
            return decode_keys(_topk_large_k(q, g, k, block_size))
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


def candidate_count(k: int) -> int:
    """k' of the first candidate round of ``topk_candidates`` (the bf16 bound is ~2^-8 ||q|| ||g|| wide)."""
    return 2 * k + 32


def topk_candidates(q: torch.Tensor, g: torch.Tensor, kp: int, block_size: int = 0):
    """Candidates of the exact top-k for fp32 inputs: this kernel on ``bf16(q)``, ``bf16(g)`` (``tl.dot`` bf16,
    fp32 accumulation) and the residual bound of ``ccr_fast.backends._bf16_candidates`` (docs/exactness.md).
    None for other dtypes (the op then uses :func:`topk` and the generic bound)."""
    if q.dtype != torch.float32 or g.dtype != torch.float32 or kp > MAX_K:
        return None
    from .._bf16_candidates import bf16_norms, lowp_bound  # noqa: PLC0415

    s, i = topk(q.bfloat16(), g.bfloat16(), kp, block_size)
    g_max = bf16_norms(g).max(dim=0).values.tolist()
    return s.float(), i, lowp_bound(bf16_norms(q), g_max, q.shape[1])

