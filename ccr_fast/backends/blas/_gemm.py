"""The CPU GEMM of the ``"blas"`` backend (found and registered with ``ccr_fast._C`` once, at import, by
:mod:`ccr_fast.backends.registry`) and a direct call of it for the benchmarks' GEMM floor.

:func:`ensure` is a plain read of the registration (no lock, no I/O): the host functions call it first so that a
missing GEMM is a RuntimeError saying why, never a call through a null pointer.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..registry import DTYPE_CODES, describe_gemm, extension, gemm_name, measure_gemm, workspace_mb  # noqa: F401

describe = describe_gemm
measure = measure_gemm


def ensure() -> str:
    """The registered GEMM's description; RuntimeError saying why when there is none."""
    return gemm_name()


def status() -> Tuple[bool, str]:
    """Whether the CPU GEMM is registered, and its description (or why not)."""
    try:
        return True, gemm_name()
    except RuntimeError as exc:
        return False, str(exc)


def mm(a, b, *, trans_a: bool = False, trans_b: bool = False, out=None):
    """``op(a) @ op(b)`` for contiguous 2-D CPU float32/float64 tensors through the registered GEMM (all threads).

    ``op`` transposes when ``trans_*`` is set (the tensor is passed as stored, no copy). Used for the benchmarks'
    GEMM floor; returns ``out`` ([M, N], allocated when None).
    """
    ensure()
    if not (a.is_contiguous() and b.is_contiguous()) or a.dtype != b.dtype:
        raise ValueError("mm: a and b must be contiguous CPU tensors of one dtype")
    M, K = (a.shape[1], a.shape[0]) if trans_a else tuple(a.shape)
    N = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = torch.empty(M, N, dtype=a.dtype)
    extension().blas_gemm(trans_a, trans_b, M, N, K, a.data_ptr(), a.shape[1], b.data_ptr(), b.shape[1],
                          out.data_ptr(), N, DTYPE_CODES[a.dtype])
    return out
