"""The one dispatch of the op families: backend resolution (dtype and size included), the dtype/autocast policy,
operand preparation and the lookup of a backend's host functions.

Every op family (``ccr_fast/ops/<family>.py``) declares ``HOST = {backend: module path}``; the module at that path
holds the host functions of the kernel contract (docs/interop.md) under their contract names. This module is the
only place that

* turns ``backend=`` (``"auto"``, a name, or ``CCR_FAST_BACKEND``) into a concrete backend for a device, a dtype and
  a problem size (:func:`resolve`);
* applies the dtype policy: float64 runs only on the CPU backends and ``"torch"`` (``"auto"`` with float64 on a GPU
  goes to ``"torch"``; naming a GPU backend for float64 raises). Operand layout (unit stride along d, fp16/bf16
  widened to float32 for the CPU kernels) is the host functions' job, see ``ccr_fast.backends``;
* applies the autocast policy to feature operands (:func:`autocast_operands`);
* imports a backend's host functions lazily (:func:`host`).

Validation of the public arguments (shapes, dtypes, devices, values) is done once per family by the entry
functions with the helpers of :mod:`ccr_fast.ops._common`; host functions do not repeat it.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Dict, Optional, Tuple

import torch

from .. import _backend
from ._autotable import cpu_prefers_blas, preferred_cuda_backends

Tensor = torch.Tensor

BACKENDS = _backend.BACKENDS  # ("auto", "blas", "cuda", "triton", "cpu", "torch")
CPU_BACKENDS = ("cpu", "blas")  # backends whose CPU path is our C++ (float32/float64 only)
GPU_ONLY = ("cuda", "triton")

# Backend -> sub-package of its host functions (``ccr_fast.backends.<name>.<family>``); "torch" is the op module.
_PACKAGES = {"cpu": "ccr_fast.backends.cpu", "blas": "ccr_fast.backends.blas", "cuda": "ccr_fast.backends.cuda",
             "triton": "ccr_fast.backends.triton"}

_PROBED: Dict[tuple, Tuple[bool, str]] = {}


def host(table: Dict[str, object], backend: str, name: str):
    """The host function ``name`` of ``backend`` from an op family's ``HOST`` table.

    A table entry is either a module path (``"ccr_fast.backends.cpu.contrastive"``, imported on first use) or a
    dict ``{contract name: function}`` (the op module's own ``"torch"`` reference).
    """
    entry = table.get(backend)
    if entry is None:
        raise ValueError(f"backend must be a concrete backend {tuple(table)}, got {backend!r}")
    if isinstance(entry, dict):
        return entry[name]
    return getattr(importlib.import_module(entry), name)


def host_table(family: str, torch_functions: Dict[str, object]) -> Dict[str, object]:
    """``{backend: module path or {name: function}}`` of ``family``: the backend folders plus the torch reference."""
    table: Dict[str, object] = {name: f"{pkg}.{family}" for name, pkg in _PACKAGES.items()}
    table["torch"] = dict(torch_functions)
    return table


def _env_override(requested: str) -> str:
    if requested == "auto":
        env = os.environ.get("CCR_FAST_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"CCR_FAST_BACKEND must be one of {BACKENDS}, got {env!r}")
            return env
    return requested


def takes_dtype(backend: str, device: torch.device, dtype: Optional[torch.dtype]) -> Tuple[bool, str]:
    """Whether ``backend`` computes ``dtype`` on ``device`` (float64 only on CPU backends and ``"torch"``)."""
    if dtype != torch.float64 or backend == "torch":
        return True, ""
    if backend in CPU_BACKENDS and device.type == "cpu":
        return True, ""
    return False, (f"backend {backend!r} does not take float64 inputs on {device.type}; use backend='torch'"
                   + (" (or 'cpu'/'blas' with CPU tensors)" if device.type != "cpu" else ""))


def _probe(backend: str, family: str, device: torch.device) -> Tuple[bool, str]:
    """The one-time conformance probe of a GPU backend (``ccr_fast.backends.probe``), when that module exists."""
    key = (backend, family, str(device))
    if key not in _PROBED:
        try:
            probe = importlib.import_module("ccr_fast.backends.probe")
        except ImportError:
            _PROBED[key] = (True, "no probe module")
        else:
            try:
                _PROBED[key] = tuple(probe.probe_ok(backend, family, device))
            except Exception as exc:  # a probe that cannot run counts as a failed probe
                _PROBED[key] = (False, f"probe raised {type(exc).__name__}: {exc}")
    return _PROBED[key]


def resolve(family: str, requested: str, device: torch.device, dtype: Optional[torch.dtype] = None,
            work: int = 0, supported: Tuple[str, ...] = ("blas", "cuda", "triton", "cpu", "torch")) -> str:
    """A concrete backend for ``family`` on ``device`` and ``dtype``; ``work`` sizes the CPU choice (e.g. M·N).

    ``"auto"`` (after the ``CCR_FAST_BACKEND`` override): on CUDA the table order of
    :func:`ccr_fast.ops._autotable.preferred_cuda_backends` (blas, then triton; float64 → ``"torch"``), each backend
    after its one-time conformance probe; on CPU ``"blas"`` or ``"cpu"`` by size
    (:func:`ccr_fast.ops._autotable.cpu_prefers_blas`), else ``"torch"``.

    Raises ValueError for an unknown name, RuntimeError (saying why) for an unavailable backend or dtype.
    """
    if not isinstance(requested, str) or requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    requested = _env_override(requested)
    if requested != "auto":
        if requested not in supported:
            raise RuntimeError(f"backend {requested!r} does not implement {family}; available: {supported}")
        ok, why = _backend.usable(requested, device)
        if not ok:
            raise RuntimeError(f"backend {requested!r} is not available for {family}: {why}")
        ok, why = takes_dtype(requested, device, dtype)
        if not ok:
            raise RuntimeError(why)
        return requested
    if device.type == "cuda":
        for name in preferred_cuda_backends(family, dtype):
            if name not in supported or not _backend.usable(name, device)[0]:
                continue
            if not takes_dtype(name, device, dtype)[0]:
                continue
            ok, why = _probe(name, family, device)
            if not ok:
                warnings.warn(f"ccr_fast: backend {name!r} skipped for {family} on {device}: conformance probe "
                              f"failed ({why})", RuntimeWarning, stacklevel=3)
                continue
            return name
        return "torch"
    if device.type == "cpu":
        blas_ok = "blas" in supported and _backend.usable("blas", device)[0]
        cpu_ok = "cpu" in supported and _backend.usable("cpu", device)[0]
        if blas_ok and (not cpu_ok or cpu_prefers_blas(family, dtype, work)):
            return "blas"
        if cpu_ok:
            return "cpu"
    return "torch"


def autocast_operands(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """The autocast policy of the feature operands (kernels.md §6): under autocast, fp16/fp32/bf16 features are cast
    to the autocast dtype (fp64 left alone); an fp64 operand then widens the other. Without autocast, as given."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x = x if x.dtype == torch.float64 else x.to(dt)
        y = y if y.dtype == torch.float64 else y.to(dt)
    if x.dtype != y.dtype:  # only reachable under autocast with an fp64 operand
        wide = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(wide), y.to(wide)
    return x, y
