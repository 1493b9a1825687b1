"""Auto-dispatch tables of ``backend="auto"`` (read by :func:`ccr_fast.ops.dispatch.resolve`).

CUDA: which GPU backend is tried first, per op family and input dtype. ``resolve`` walks the returned tuple and
takes the first backend that is usable on the device, takes the dtype and passes its one-time conformance probe
(then falls back to ``"torch"``). The order is blas (cuBLAS GEMM + fused epilogues), then triton; the SIMT
``"cuda"`` backend (exact fp32, slow on tensor-core work) is never chosen by ``auto`` but stays available by name.

CPU: ``"blas"`` (vendor GEMM in row chunks + fused C++ epilogues) or ``"cpu"`` (fully fused C++ kernels), by
problem size: the work measure (M·N scores) from which blas was measured faster.

MUST be refreshed from benchmark JSON (``benchmarks/`` results on the GPU machines): for each op family and dtype, put
first the backend with the lower median time at the realistic shapes, and note the source file and date next to
the entry. Keep the table small and literal: it is read by people, not learned.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch


# The op families of ccr_fast/ops/, and the names the op modules pass as ``op=`` to resolve_backend.
OP_FAMILIES = ("contrastive", "triplet", "topk", "ranks", "similarity")
_ALIASES = {
    "contrastive loss": "contrastive", "clip_loss": "contrastive", "one_to_k_loss": "contrastive",
    "triplet loss": "triplet", "triplet_loss": "triplet",
    "target_ranks": "ranks", "rank": "ranks",
}

_DEFAULT: Tuple[str, ...] = ("blas", "triton")

# {family: {dtype or None (any dtype): order}}. Unmeasured on GPUs so far: every entry is the default order, so
# every GPU backend is probed once before auto uses it. Source: issue 14 (design order), no GPU benchmark JSON yet.
_TABLE: Dict[str, Dict[Optional[torch.dtype], Tuple[str, ...]]] = {
    "contrastive": {None: _DEFAULT},
    "triplet": {None: _DEFAULT},
    "topk": {None: _DEFAULT},
    "ranks": {None: _DEFAULT},
    "similarity": {None: _DEFAULT},
}

# Neither GPU backend takes float64 inputs (docs/interop.md): "auto" then goes straight to the torch reference.
_NO_GPU_DTYPES = (torch.float64,)


def op_family(op: str) -> str:
    """Normalise an op name (``"contrastive loss"``, ``"target_ranks"``, ...) to its family; unknown names pass."""
    name = (op or "").strip().lower()
    return _ALIASES.get(name, name)


def preferred_cuda_backends(op: str, dtype: Optional[torch.dtype] = None) -> Tuple[str, ...]:
    """GPU backends to try, in order, for ``op`` on CUDA tensors of ``dtype`` (None = unknown dtype).

    Returns an empty tuple when no GPU backend takes ``dtype`` (the caller then uses ``"torch"``); an unknown op
    gets the default order ("blas", "triton").
    """
    if dtype in _NO_GPU_DTYPES:
        return ()
    per_dtype = _TABLE.get(op_family(op), {})
    return per_dtype.get(dtype, per_dtype.get(None, _DEFAULT))


# CPU: smallest work (number of scores M·N, or Q·G) from which "blas" beat "cpu" at d=256, fp32, 2 threads.
# Source: a cpu-vs-blas crossover sweep (2026-12-03, AMD EPYC, 2 threads, machine load ~8: small sizes are noisy;
# CLIP B=512/1024 and triplet B=512: blas faster; top-k Q=100: cpu faster at G=1k/10k, blas at G=100k; ranks and
# similarity: blas from G=10k) and benchmarks/results/side_by_side-cpu.json (large sizes: blas 1.6-3x faster).
# Refresh by hand from benchmarks/results/{losses,retrieval}-cpu.json.
CPU_BLAS_MIN_WORK: Dict[str, int] = {
    "contrastive": 512 * 512,
    "triplet": 512 * 512,
    # topk: blas = bf16 BRGeMM candidates + float64 settling (docs/exactness.md) for fp32 inputs. Re-measured
    # 2026-12-07 (Sapphire Rapids with AMX, 2 threads, load ~25, medians of 5, exact top-10, d=256): Q·G = 1M
    # cpu 504 / blas 476 ms; 4M (Q=100) 1177 / 704; 4M (Q=1000, G=4k) 1104 / 1460; 10M 2892 / 1424; 20M 3571 /
    # 2496; side by side Q=1k G=100k: blas 3180 ms, cpu 8896, faiss IndexFlatIP 21810 (load 18).
    "topk": 4_000_000,
    "ranks": 1_000_000,
    "similarity": 1_000_000,
    # sigmoid (SigLIP) fwd+bwd, fp32, d=256, 2 threads (2026-12-07, machine load ~28, noisy): cpu and blas tie at
    # B=512, blas 1.6-1.9x faster at B=1024 and 2x at 4096/8192 (benchmarks/results/sigmoid-cpu.json)
    "sigmoid": 1024 * 1024,
}


def cpu_prefers_blas(op: str, dtype: Optional[torch.dtype] = None, work: int = 0) -> bool:
    """Whether ``auto`` should take ``"blas"`` over ``"cpu"`` for ``op`` on CPU tensors with ``work`` scores."""
    limit = CPU_BLAS_MIN_WORK.get(op_family(op))
    return limit is not None and work >= limit
