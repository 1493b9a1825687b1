"""Auto-dispatch table: which GPU backend ``backend="auto"`` tries first, per op family and input dtype, on CUDA.

``ccr_fast._backend.resolve_backend`` walks the returned tuple and takes the first backend usable on the device
(then falls back to ``"torch"``). The order below is the initial, unmeasured guess ("cuda" before "triton").

MUST be refreshed from benchmark JSON (``benchmarks/`` results on the GPU machines): for each op family and dtype, put
first the backend with the lower median time at the realistic shapes, and note the source file and date next to
the entry. Keep the table small and literal: it is read by people, not learned.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .._backend import AUTO_CUDA_PREFERENCE

# The op families of ccr_fast/ops/, and the names the op modules pass as ``op=`` to resolve_backend.
OP_FAMILIES = ("contrastive", "triplet", "topk", "ranks", "similarity")
_ALIASES = {
    "contrastive loss": "contrastive", "clip_loss": "contrastive", "one_to_k_loss": "contrastive",
    "triplet loss": "triplet", "triplet_loss": "triplet",
    "target_ranks": "ranks", "rank": "ranks",
}

_DEFAULT: Tuple[str, ...] = tuple(AUTO_CUDA_PREFERENCE)  # ("cuda", "triton")

# {family: {dtype or None (any dtype): order}}. Unmeasured so far: every entry is the default order.
# Source: none yet (initial guess, to be replaced by benchmark results).
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
    gets the default order ("cuda", "triton").
    """
    if dtype in _NO_GPU_DTYPES:
        return ()
    per_dtype = _TABLE.get(op_family(op), {})
    return per_dtype.get(dtype, per_dtype.get(None, _DEFAULT))
