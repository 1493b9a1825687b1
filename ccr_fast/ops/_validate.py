"""The argument checks every op entry calls (one copy): tensors, pairs of operands, the logit scale and plain
values. A failed check raises TypeError (wrong type) or ValueError whose message names the argument, what was
expected and what was given.

Data-dependent checks (NaN/Inf, index ranges) read the data: they are skipped inside a ``torch.compile`` graph
(where they would break it), and the scale's finiteness is checked only for CPU scales (on CUDA it would be a host
synchronisation on every training step).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

Tensor = torch.Tensor
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

_FINITE_CHUNK = 1 << 20  # elements checked at once by the exact fallback (bounds its temporaries to a few MiB)


def compiling() -> bool:
    """Whether the caller is being traced by ``torch.compile`` (data-dependent checks are skipped then)."""
    return torch.compiler.is_compiling()


# ------------------------------------------------------------------------------------------------------- tensors


def check_tensor(name: str, t, *, ndim: Optional[int] = None, dtypes: Optional[Sequence[torch.dtype]] = FLOAT_DTYPES,
                 nonempty: bool = True) -> Tensor:
    """One tensor argument: its type, rank, dtype and (optionally) non-emptiness."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    return t


def check_same(names: Sequence[str], tensors: Sequence[Tensor], *, dtype: bool = True) -> None:
    """All tensors on one device (and of one dtype)."""
    d0, t0 = names[0], tensors[0]
    for n, t in zip(names[1:], tensors[1:]):
        if t.device != t0.device:
            raise ValueError(f"{n} must be on the same device as {d0} ({t0.device}), got {t.device}")
        if dtype and t.dtype != t0.dtype:
            raise ValueError(f"{n} must have the same dtype as {d0} ({t0.dtype}), got {t.dtype}")


def check_finite(name: str, t: Tensor) -> None:
    """ValueError naming ``name`` when ``t`` holds NaN or Inf (no-op while compiling).

    Fast path: any NaN/Inf element makes the sum non-finite, so a finite sum proves the tensor finite (one read, no
    temporaries). A non-finite sum (a NaN/Inf, or an overflow of huge finite values) is decided exactly in row chunks.
    """
    if compiling() or t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    if t.dim() == 0 or t.numel() <= _FINITE_CHUNK:
        ok = bool(torch.isfinite(t).all())
    else:
        rows = max(1, _FINITE_CHUNK // max(1, t[0].numel()))
        ok = all(bool(torch.isfinite(t[i:i + rows]).all()) for i in range(0, t.shape[0], rows))
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf values")


def _same_dtype_or_autocast(names: Tuple[str, str], a: Tensor, b: Tensor) -> None:
    if a.dtype != b.dtype and not torch.is_autocast_enabled(a.device.type):
        raise ValueError(f"{names[1]} must have the same dtype as {names[0]} ({a.dtype}), got {b.dtype} "
                         "(mixed dtypes are accepted only under torch.autocast)")


def check_features(names: Tuple[str, str], a: Tensor, b: Tensor, ndims: Tuple[int, int] = (2, 2), *,
                   same_batch: bool = True) -> None:
    """A pair of feature operands of a loss (``a`` [B, d], ``b`` [B, d] or [B, K, d]): types, ranks, one device, one
    dtype (unless autocast), equal feature sizes, non-empty batch and features, and (``same_batch``) equal B."""
    check_tensor(names[0], a, ndim=ndims[0], nonempty=False)
    check_tensor(names[1], b, ndim=ndims[1], nonempty=False)
    check_same(names, (a, b), dtype=False)
    _same_dtype_or_autocast(names, a, b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{names[1]} must have feature size {a.shape[-1]} (the last dim of {names[0]}), "
                         f"got shape {tuple(b.shape)}")
    for n, t in zip(names, (a, b)):
        if t.shape[0] == 0:
            raise ValueError(f"{n} must have a non-empty batch, got shape {tuple(t.shape)}")
        if t.shape[-1] == 0:
            raise ValueError(f"{n} must have a non-zero feature size, got shape {tuple(t.shape)}")
    if same_batch and a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[1]} must have batch size {a.shape[0]} (that of {names[0]}), "
                         f"got shape {tuple(b.shape)}")


def check_pair(queries: Tensor, gallery: Tensor, *, names: Tuple[str, str] = ("queries", "gallery"),
               finite: bool = True, autocast_dtypes: bool = False) -> None:
    """Retrieval operands ``queries`` [Q, d] and ``gallery`` [G, d]: non-empty 2-D float tensors on one device, one
    dtype (mixed only under autocast when ``autocast_dtypes``), one feature size, finite (``finite``)."""
    check_tensor(names[0], queries, ndim=2)
    check_tensor(names[1], gallery, ndim=2)
    check_same(names, (queries, gallery), dtype=False)
    if autocast_dtypes:
        _same_dtype_or_autocast(names, queries, gallery)
    elif gallery.dtype != queries.dtype:
        raise ValueError(f"{names[1]} must have the same dtype as {names[0]} ({queries.dtype}), got {gallery.dtype}")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"{names[1]} must have feature size {queries.shape[1]} (that of {names[0]}), "
                         f"got shape {tuple(gallery.shape)}")
    if finite:
        check_finite(names[0], queries)
        check_finite(names[1], gallery)


def check_targets(targets, n_queries: int, n_gallery: int, device: torch.device) -> Tensor:
    """Target gallery indices of a rank query: an integer ``[Q]`` or ``[Q, T]`` tensor (T >= 1) on ``device``,
    entries in ``[0, G)`` or −1 (padding; the range is checked outside compiled graphs). Returns ``[Q, T]`` int64,
    contiguous."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of gallery indices, got {type(targets).__name__}")
    if targets.dtype not in INT_DTYPES:
        raise ValueError(f"targets must be an integer tensor (int64 preferred), got {targets.dtype}")
    if targets.device != device:
        raise ValueError(f"targets must be on the device of queries ({device}), got {targets.device}")
    if targets.dim() == 1:
        targets = targets[:, None]
    if targets.dim() != 2 or targets.shape[0] != n_queries or targets.shape[1] < 1:
        raise ValueError(f"targets must have shape [Q={n_queries}] or [Q={n_queries}, T>=1], got "
                         f"{tuple(targets.shape)}")
    targets = targets.to(torch.int64).contiguous()
    if not compiling():
        lo, hi = int(targets.min()), int(targets.max())
        if lo < -1 or hi >= n_gallery:
            raise ValueError(f"targets must be gallery indices in [0, G={n_gallery}) or -1 for padding, got "
                             f"values in [{lo}, {hi}]")
    return targets


# ------------------------------------------------------------------------------------------------- scale, values


def check_scale(value: Union[float, int, Tensor], device: torch.device, name: str = "logit_scale") -> Tensor:
    """A multiplier (``logit_scale``) or offset (``logit_bias``): a Python number or a 0-dim / 1-element floating
    tensor on ``device``, finite; returned as a 0-dim tensor (float32 for numbers; a tensor keeps its grad)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got bool")
    if isinstance(value, (float, int)):
        if not math.isfinite(value):
            raise ValueError(f"{name} contains NaN or Inf values")
        return torch.tensor(float(value), dtype=torch.float32, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar (0-dim) tensor, got shape {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} must be on the same device as the features ({device}), got {value.device}")
    if not value.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {value.dtype}")
    if value.device.type == "cpu":
        check_finite(name, value.detach())
    return value.reshape(())


def check_int(name: str, value, *, low: Optional[int] = None, high: Optional[int] = None, high_name: str = "",
              what: str = "") -> int:
    """An int (not a bool) in ``[low, high]``; ``high_name`` names the upper bound and ``what`` adds a note in the
    message (``k must be in [1, G=5] (gallery rows), got 6``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "" if low is None else str(low)
        hi = "" if high is None else (f"{high_name}={high}" if high_name else str(high))
        rng = f"[{lo}, {hi}]" if low is not None and high is not None else (f">= {lo}" if high is None else f"<= {hi}")
        raise ValueError(f"{name} must be {'in ' if '[' in rng else ''}{rng}{what}, got {value}")
    return value


def check_float(name: str, value, *, positive: bool = False) -> float:
    """A finite real number (not a bool), ``> 0`` when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a finite float{' > 0' if positive else ''}, got {value}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_world(rank, world_size) -> None:
    """``rank`` and ``world_size`` of a distributed loss: ints with ``0 <= rank < world_size``."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
