"""Operand helpers of the C++ CPU backends (``cpu`` and ``blas``)."""
from __future__ import annotations

from typing import Tuple

import torch

from ...ops._common import cpu_operand

Tensor = torch.Tensor


def cpu_pair(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Both operands as the CPU kernels take them: float32/float64 rows with unit stride, one dtype (the wider)."""
    a, b = cpu_operand(a), cpu_operand(b)
    if a.dtype != b.dtype:
        a, b = a.double(), b.double()
    return a, b
