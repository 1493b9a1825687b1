"""Input validation and small helpers shared by the op families (messages name the argument, expected, given)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name: str, t, *, ndim: Optional[int] = None, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
                 nonempty: bool = True) -> torch.Tensor:
    """Validate one tensor argument; raise TypeError/ValueError naming it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    return t


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor], *, dtype: bool = True) -> None:
    """All tensors on one device (and of one dtype)."""
    d0, t0 = names[0], tensors[0]
    for n, t in zip(names[1:], tensors[1:]):
        if t.device != t0.device:
            raise ValueError(f"{n} must be on the same device as {d0} ({t0.device}), got {t.device}")
        if dtype and t.dtype != t0.dtype:
            raise ValueError(f"{n} must have the same dtype as {d0} ({t0.dtype}), got {t.dtype}")


_FINITE_CHUNK = 1 << 20  # elements checked at once by the exact fallback (bounds its temporaries to a few MiB)


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` when ``t`` holds NaN or Inf.

    Fast path: any NaN/Inf element makes the sum non-finite, so a finite sum proves the tensor finite (one
    read, no temporaries). A non-finite sum (a NaN/Inf, or an overflow of huge finite values) is decided exactly in
    row chunks.
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    if t.dim() == 0 or t.numel() <= _FINITE_CHUNK:
        ok = bool(torch.isfinite(t).all())
    else:
        rows = max(1, _FINITE_CHUNK // max(1, t[0].numel()))
        ok = all(bool(torch.isfinite(t[i:i + rows]).all()) for i in range(0, t.shape[0], rows))
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf values")


def as_scale(logit_scale: Union[float, int, torch.Tensor], device: torch.device, name: str = "logit_scale") -> torch.Tensor:
    """``logit_scale`` (float or 0-dim / 1-element tensor) as a 0-dim tensor on ``device`` (grad preserved)."""
    if isinstance(logit_scale, bool):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got bool")
    if isinstance(logit_scale, (float, int)):
        return torch.tensor(float(logit_scale), dtype=torch.float32, device=device)
    if not isinstance(logit_scale, torch.Tensor):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(logit_scale).__name__}")
    if logit_scale.numel() != 1:
        raise ValueError(f"{name} must be a scalar (0-dim) tensor, got shape {tuple(logit_scale.shape)}")
    if logit_scale.device != device:
        raise ValueError(f"{name} must be on the same device as the features ({device}), got {logit_scale.device}")
    if not logit_scale.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {logit_scale.dtype}")
    return logit_scale.reshape(())


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / output dtype of the kernels: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A 2-D view with unit stride along the last dim (row stride free); copies only when needed."""
    if t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.shape[1]:
        return t
    return t.contiguous()


def cpu_operand(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> float32 for the CPU kernels (docs/interop.md); rows made contiguous."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return rows_contiguous(t)
