"""Shared helpers of the Triton backend: interpreter detection, autotune configs, input checks, the tile dot.

Every kernel of ``ccr_fast.backends.triton`` computes its score tiles with :func:`tile_dot` (fp32 accumulation, a loop over
the feature dimension in ``BLOCK_D`` chunks), so that all families use the same arithmetic for one tile shape.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Input dtypes the Triton kernels accept (fp64 is served by the "cpu" and "torch" backends).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_configs(configs):
    """The autotune candidate list: the first of ``configs`` under the interpreter, the others on a GPU (the
    interpreter's tiny tiles are never the fast choice there, and some spill).

    Args:
        configs: list of ``(kwargs: dict, num_warps: int, num_stages: int)``; the first is the interpreter's.
    """
    configs = configs[:1] if interpreting() else (configs[1:] or configs)
    return [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s in configs]


def check_operands(names, tensors):
    """Validate 2-D float operands of one device/dtype with equal feature size; returns them unchanged.

    Raises:
        TypeError / ValueError naming the argument, the expected and the given shape/dtype/device.
    """
    t0 = tensors[0]
    for n, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{n} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{n} must be a 2-D tensor [rows, d], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{n} must have dtype in {[str(d) for d in SUPPORTED_DTYPES]} for the triton backend, "
                             f"got {t.dtype}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{n} must be non-empty, got shape {tuple(t.shape)}")
        if t.device != t0.device:
            raise ValueError(f"{n} must be on the same device as {names[0]} ({t0.device}), got {t.device}")
        if t.dtype != t0.dtype:
            raise ValueError(f"{n} must have the same dtype as {names[0]} ({t0.dtype}), got {t.dtype}")
        if t.shape[1] != t0.shape[1]:
            raise ValueError(f"{n} must have feature size d={t0.shape[1]} like {names[0]}, got shape {tuple(t.shape)}")
        if t.device.type != "cuda" and not interpreting():
            raise ValueError(f"{n} must be a CUDA tensor for the triton backend (or set TRITON_INTERPRET=1), "
                             f"got device {t.device}")
    return tensors


def scale_operand(scale, device) -> torch.Tensor:
    """``scale`` as a 0-dim float32 tensor on ``device`` (no host sync; detached)."""
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a 0-dim float32 tensor, got {type(scale).__name__}")
    if scale.numel() != 1:
        raise ValueError(f"scale must be a 0-dim tensor, got shape {tuple(scale.shape)}")
    if scale.device != device:
        raise ValueError(f"scale must be on the device of the features ({device}), got {scale.device}")
    return scale.detach().reshape(()).to(torch.float32)


def device_guard(t: torch.Tensor):
    """Context that makes ``t``'s CUDA device current (a no-op on CPU under the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def block_d(d: int) -> int:
    """Feature chunk of the tile dot: a power of two in [16, 64] (16 is the tl.dot minimum)."""
    return max(16, min(64, triton.next_power_of_2(d)))


def block_dout(d: int) -> int:
    """Feature chunk of a gradient output held in registers: a power of two in [16, 128] (a [64, 256] fp32
    accumulator plus the fp32 operand tile spills on sm_80/sm_90: gpu-check --compile-only)."""
    return max(16, min(128, triton.next_power_of_2(d)))


def dot_flags(dtype: torch.dtype) -> dict:
    """Constexpr flags of :func:`mma` / :func:`tile_dot` for inputs of ``dtype``.

    ``CAST_FP32``: cast operands to fp32 before ``tl.dot`` (the interpreter gets bf16 dots wrong; fp16 is cast too so
    that the interpreter accumulates in fp32 like the GPU's MMA). ``DOT_MODE``: 0 = fp16/bf16 MMA, 1 = fp32 IEEE,
    2 = fp32 TF32; fp32 inputs use TF32 exactly when ``torch.backends.cuda.matmul.allow_tf32`` is set, so results
    compare like for like with ``torch.mm``.
    """
    cast = interpreting() and dtype != torch.float32
    if dtype == torch.float32 or cast:
        mode = 2 if (dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else 1
    else:
        mode = 0
    return {"CAST_FP32": cast, "DOT_MODE": mode}


@triton.jit
def mma(a, b, CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """``a @ b`` accumulated in fp32 (a [P, R], b [R, S] of one dtype); flags from :func:`dot_flags`."""
    if CAST_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if DOT_MODE == 2:
        return tl.dot(a, b, input_precision="tf32", out_dtype=tl.float32)
    elif DOT_MODE == 1:
        return tl.dot(a, b, input_precision="ieee", out_dtype=tl.float32)
    else:
        return tl.dot(a, b, out_dtype=tl.float32)


@triton.jit
def tile_dot(X_ptr, stride_xm, stride_xd, rows, n_rows, Y_ptr, stride_ym, stride_yd, cols, n_cols, D,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             CAST_FP32: tl.constexpr, DOT_MODE: tl.constexpr):
    """Score tile ``S[i, j] = X[rows[i]] . Y[cols[j]]`` in fp32, shape [BLOCK_M, BLOCK_N].

    ``rows``/``cols`` are int64 index vectors; rows >= n_rows and cols >= n_cols read zeros. The feature dimension is
    walked in ``BLOCK_D`` chunks (zero-padded past D), always in the same order, so one tile shape gives one
    arithmetic whatever kernel calls it.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        d_ok = dd < D
        x = tl.load(X_ptr + rows[:, None] * stride_xm + dd[None, :] * stride_xd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        yt = tl.load(Y_ptr + cols[None, :] * stride_ym + dd[:, None] * stride_yd,
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        acc += mma(x, yt, CAST_FP32, DOT_MODE)
    return acc


# Packed top-k keys: ``orderable(score) << 32 | (0xFFFFFFFF − index)``; a larger key = a larger score, and among
# equal scores the lower index. KEY_MIN is below every real key (empty slots, masked entries).
KEY_MIN = tl.constexpr(-(2 ** 63))


@triton.jit
def orderable(s):
    """fp32 -> int32 whose signed order is the float order (−0.0 folded onto +0.0)."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def merge_topk(best, kth, keys, lane, K, SELECT_SORT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Merge a [BLOCK_M, BLOCK_N] tile of packed keys into the per-row sorted buffer ``best`` (K <= BLOCK_N valid
    slots, descending) whose K-th key is ``kth``; returns the new (best, kth).

    Skipped when no key of the tile beats its row's K-th key (one compare per key). SELECT_SORT: a bitonic sort of
    the 2·BLOCK_N candidates keeping the upper half (large K); else K rounds of "row max, remove it" (keys are
    unique within a row).
    """
    if tl.max(tl.sum((keys > kth[:, None]).to(tl.int32), axis=1), axis=0) > 0:
        if SELECT_SORT:
            both = tl.reshape(tl.join(best, keys), (BLOCK_M, 2 * BLOCK_N))
            both = tl.sort(both, dim=1, descending=True)
            # descending rows: the max over the two halves of each row is its first half
            best = tl.max(tl.reshape(both, (BLOCK_M, 2, BLOCK_N)), axis=1)
            kth = tl.sum(tl.where(lane[None, :] == K - 1, best, 0), axis=1)
        else:
            # rounds over the two tiles side by side (a join + reshape here trips triton 3.9's layout pass)
            old = best
            new = tl.full((BLOCK_M, BLOCK_N), KEY_MIN, dtype=tl.int64)
            for j in range(K):
                kth = tl.maximum(tl.max(old, axis=1), tl.max(keys, axis=1))
                new = tl.where(lane[None, :] == j, kth[:, None], new)
                old = tl.where(old == kth[:, None], KEY_MIN, old)
                keys = tl.where(keys == kth[:, None], KEY_MIN, keys)
            best = new
    return best, kth
