"""Which kernel backends exist, which are usable here, and how an op picks one.

Backends: ``"cpu"`` (C++/OpenMP in ``ccr_fast._C``), ``"cuda"`` (CUDA kernels in ``ccr_fast._C``, when the extension
was built with nvcc), ``"triton"`` (``ccr_fast.backends.triton``), ``"torch"`` (the plain-PyTorch reference of each op).
``backend="auto"`` picks per device: CUDA tensors -> the ``AUTO_CUDA_PREFERENCE`` order among the usable GPU
backends (then ``"torch"``); CPU tensors -> ``"cpu"`` when the extension is present, else ``"torch"``.
The environment variable ``CCR_FAST_BACKEND`` overrides ``"auto"``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")

# float32 / float64 / float16 / bfloat16 codes shared with csrc/common.h (docs/interop.md).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

# Per-op order of preference on CUDA tensors for backend="auto"; measured preference lives in
# ccr_fast/ops/_autotable.py when present (see issue on auto-dispatch).
AUTO_CUDA_PREFERENCE = ("cuda", "triton")

def _load_extension():
    """Import ``ccr_fast._C``.

    When the package is imported from a source checkout that has no in-place build (e.g. ``python -m ...`` run in
    the repository root after ``pip install .``), the checkout shadows the installed package; the extension built
    by that install is then loaded from its installed location instead.
    """
    try:
        from . import _C as ext  # type: ignore[attr-defined]

        return ext, None
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for entry in sys.path:
        try:
            pkg_dir = Path(entry or ".").resolve() / "ccr_fast"
        except OSError:
            continue
        if pkg_dir == here or not pkg_dir.is_dir():
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            lib = pkg_dir / f"_C{suffix}"
            if lib.is_file():
                spec = importlib.util.spec_from_file_location(f"{__package__}._C", lib)
                ext = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(ext)
                sys.modules[f"{__package__}._C"] = ext
                return ext, None
    return None, error


_C, _C_ERROR = _load_extension()


def extension():
    """The compiled module ``ccr_fast._C``; raises RuntimeError saying why when it is missing."""
    if _C is None:
        raise RuntimeError(f"ccr_fast._C extension is not available ({_C_ERROR}); reinstall with `pip install .`")
    return _C


def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, f"triton not importable ({exc})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "triton interpreter (TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():
        return False, "triton installed but no CUDA device (set TRITON_INTERPRET=1 to run it on CPU)"
    return True, f"triton {triton.__version__}"


def _cuda_status() -> tuple[bool, str]:
    if _C is None:
        return False, f"extension missing ({_C_ERROR})"
    if not getattr(_C, "with_cuda", False):
        return False, "extension built without CUDA"
    if not torch.cuda.is_available():
        return False, "extension built with CUDA but no CUDA device is visible"
    return True, "CUDA kernels compiled in ccr_fast._C"


def backends() -> Dict[str, dict]:
    """Report what was compiled and what is usable: ``{name: {"compiled": bool, "usable": bool, "detail": str}}``."""
    cpu_ok = _C is not None
    cuda_ok, cuda_detail = _cuda_status()
    tri_ok, tri_detail = _triton_status()
    return {
        "cpu": {
            "compiled": cpu_ok,
            "usable": cpu_ok,
            "detail": (f"C++ kernels, OpenMP threads={_C.cpu_num_threads()}" if cpu_ok else f"missing ({_C_ERROR})"),
        },
        "cuda": {"compiled": bool(_C is not None and getattr(_C, "with_cuda", False)), "usable": cuda_ok,
                 "detail": cuda_detail},
        "triton": {"compiled": tri_ok, "usable": tri_ok, "detail": tri_detail},
        "torch": {"compiled": True, "usable": True, "detail": f"plain PyTorch {torch.__version__} reference"},
    }


def _usable(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "torch":
        return True, ""
    if name == "cpu":
        if device.type != "cpu":
            return False, f"backend 'cpu' needs CPU tensors, got device {device}"
        if _C is None:
            return False, f"ccr_fast._C extension is not available ({_C_ERROR})"
        return True, ""
    if name == "cuda":
        if _C is None:
            return False, f"ccr_fast._C extension is not available ({_C_ERROR})"
        if not getattr(_C, "with_cuda", False):
            return False, "extension built without CUDA"
        if device.type != "cuda":
            return False, f"backend 'cuda' needs CUDA tensors, got device {device}"
        return True, ""
    if name == "triton":
        ok, detail = _triton_status()
        if not ok:
            return False, detail
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return False, f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {device}"
        return True, ""
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def resolve_backend(requested: str, device: torch.device, op: str = "", supported=("cuda", "triton", "cpu", "torch"),
                    dtype: Optional[torch.dtype] = None) -> str:
    """Turn ``backend=`` (or ``CCR_FAST_BACKEND``) into a concrete backend name for ``device``.

    On CUDA, ``"auto"`` tries ``ops._autotable.preferred_cuda_backends(op, dtype)`` in order (``dtype``: the input
    dtype when known), then ``"torch"``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` (saying why) for an unavailable one.
    """
    if not isinstance(requested, str) or requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "auto":
        env = os.environ.get("CCR_FAST_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"CCR_FAST_BACKEND must be one of {BACKENDS}, got {env!r}")
            requested = env
    if requested != "auto":
        if requested not in supported:
            raise RuntimeError(f"backend {requested!r} does not implement {op or 'this op'}; available: {supported}")
        ok, why = _usable(requested, device)
        if not ok:
            raise RuntimeError(f"backend {requested!r} is not available for {op or 'this op'}: {why}")
        return requested
    if device.type == "cuda":
        from .ops._autotable import preferred_cuda_backends  # noqa: PLC0415 - ops imports this module

        for name in preferred_cuda_backends(op, dtype):
            if name in supported and _usable(name, device)[0]:
                return name
        return "torch"
    if device.type == "cpu" and "cpu" in supported and _C is not None:
        return "cpu"
    return "torch"
