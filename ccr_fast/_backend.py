"""Compatibility names for ``ccr_fast.backends.registry`` (the ``_C`` loader, what is usable, the report).

New code imports :mod:`ccr_fast.backends.registry` (and :mod:`ccr_fast.ops.dispatch` for the backend choice);
this module keeps the old import paths working: ``DTYPE_CODES``, ``BACKENDS``, ``_C``, ``extension``, ``usable``,
``backends`` and ``resolve_backend``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .backends.registry import _C, _C_ERROR, BACKENDS, DTYPE_CODES, backends, extension, usable  # noqa: F401


def resolve_backend(requested: str, device: torch.device, op: str = "",
                    supported=("blas", "cuda", "triton", "cpu", "torch"), dtype: Optional[torch.dtype] = None,
                    work: int = 0) -> str:
    """Compatibility wrapper of :func:`ccr_fast.ops.dispatch.resolve` (the one resolution)."""
    from .ops._autotable import op_family  # noqa: PLC0415 - ops imports the backends below this module
    from .ops.dispatch import resolve  # noqa: PLC0415

    return resolve(op_family(op), requested, device, dtype, work, tuple(supported))
