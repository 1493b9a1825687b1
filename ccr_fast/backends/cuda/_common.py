"""Helpers of the ``"cuda"`` host functions: operand checks, workspaces, the stream (see the package docstring)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._operands import rows_contiguous
from ..registry import extension

CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def ext():
    C = extension()
    if not getattr(C, "with_cuda", False):
        raise RuntimeError("backend 'cuda' is not available: extension built without CUDA")
    return C


def operand(name: str, t, d: Optional[int] = None) -> torch.Tensor:
    """A 2-D CUDA feature matrix [rows, d] with unit stride along d."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor for backend 'cuda', got device {t.device}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [rows, d], got shape {tuple(t.shape)}")
    if t.dtype not in CUDA_DTYPES:
        raise ValueError(f"{name} must have dtype float32, float16 or bfloat16 on CUDA, got {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise ValueError(f"{name} must have feature size d={d}, got shape {tuple(t.shape)}")
    return rows_contiguous(t)


def pair(n1: str, t1, n2: str, t2) -> Tuple[torch.Tensor, torch.Tensor]:
    a = operand(n1, t1)
    b = operand(n2, t2, a.shape[1])
    if b.device != a.device:
        raise ValueError(f"{n2} must be on the same device as {n1} ({a.device}), got {b.device}")
    if b.dtype != a.dtype:
        raise ValueError(f"{n2} must have the same dtype as {n1} ({a.dtype}), got {b.dtype}")
    return a, b


def vector(name: str, t, n: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """A contiguous 1-D tensor of n elements of ``dtype`` on ``device`` (converted when the dtype differs)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    return t.to(dtype).contiguous()


def scale_operand(scale, device: torch.device) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a 0-dim float32 tensor on {device}, got {type(scale).__name__}")
    if scale.numel() != 1 or scale.device != device:
        raise ValueError(f"scale must be a 0-dim tensor on {device}, got shape {tuple(scale.shape)} on {scale.device}")
    return scale.detach().reshape(()).to(torch.float32).contiguous()


def int_arg(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def ld(t: torch.Tensor) -> int:
    """Row stride in elements (a 1-row view may carry any stride(0); it is never used then)."""
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)


def stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
