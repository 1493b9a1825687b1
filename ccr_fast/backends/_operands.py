"""Operand layout of the host functions (the kernels' side of docs/interop.md): unit stride along d, fp16/bf16
widened to float32 for the C++ CPU kernels, one dtype per pair."""
from __future__ import annotations

from typing import Tuple

import torch

Tensor = torch.Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / output dtype of the kernels: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_contiguous(t: Tensor) -> Tensor:
    """A 2-D view with unit stride along the last dim (row stride free); copies only when needed."""
    if t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.shape[1]:
        return t
    return t.contiguous()


def cpu_operand(t: Tensor) -> Tensor:
    """fp16/bf16 -> float32 for the CPU kernels (docs/interop.md); rows made contiguous."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return rows_contiguous(t)


def cpu_pair(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Both operands as the CPU kernels take them: float32/float64 rows with unit stride, one dtype (the wider)."""
    if a.device.type != "cpu" or b.device.type != "cpu":
        raise ValueError(f"the C++ CPU host functions take CPU tensors, got {a.device} and {b.device}")
    a, b = cpu_operand(a), cpu_operand(b)
    if a.dtype != b.dtype:
        a, b = a.double(), b.double()
    return a, b
