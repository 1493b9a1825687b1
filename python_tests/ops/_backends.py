"""Backend lists of the python_tests/ops conformance suite (see conftest.py for the Triton interpreter fixture).

``BACKENDS`` (public-API tests on CPU tensors): the torch reference, the fused C++ kernels (``cpu``) and the vendor
GEMM + fused epilogues (``blas``). ``CONTRACT_BACKENDS`` (kernel-contract tests at small shapes, against the float64
torch reference) adds ``triton`` (marker ``triton``; through the interpreter, TRITON_INTERPRET=1, when there is no
GPU; skipped when triton is not installed) and ``cuda`` (marker ``gpu``; skipped without a CUDA device).
"""
from __future__ import annotations

import pytest
import torch

BACKENDS = ["torch", "cpu", "blas"]
CONTRACT_BACKENDS = ["cpu", "blas", pytest.param("triton", marks=pytest.mark.triton),
                     pytest.param("cuda", marks=pytest.mark.gpu)]

def device_of(backend: str) -> torch.device:
    """CUDA for the GPU backends when a GPU exists, else CPU (triton then runs in the interpreter)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
