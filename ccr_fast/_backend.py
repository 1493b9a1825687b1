"""Which kernel backends exist, which are usable here, and the extension loader.

Backends: ``"blas"`` (the fastest vendor GEMM present in row chunks + our fused epilogues: OpenBLAS/… chosen by
measurement on CPU, cuBLAS through ``torch.matmul`` on CUDA; ``ccr_fast.backends.blas``), ``"cpu"`` (fully fused
C++/OpenMP kernels in ``ccr_fast._C``), ``"cuda"`` (CUDA kernels in ``ccr_fast._C``, when the extension was built
with nvcc), ``"triton"`` (``ccr_fast.backends.triton``), ``"torch"`` (the plain-PyTorch reference of each op).
How ``backend="auto"`` picks one (per op family, device, dtype and size) is :func:`ccr_fast.ops.dispatch.resolve`;
the environment variable ``CCR_FAST_BACKEND`` overrides ``"auto"``.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict, Optional

import torch

BACKENDS = ("auto", "blas", "cuda", "triton", "cpu", "torch")

# float32 / float64 / float16 / bfloat16 codes shared with csrc/common.h (docs/interop.md).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

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


def _blas_status(device_type: str = "cpu") -> tuple[bool, str]:
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible"
        if importlib.util.find_spec("ccr_fast.backends.blas.gpu") is None:
            return False, "blas on CUDA not available: ccr_fast.backends.blas.gpu is missing"
        return True, "cuBLAS (torch.matmul) + fused GPU epilogues"
    if _C is None:
        return False, f"ccr_fast._C extension is not available ({_C_ERROR})"
    if not hasattr(_C, "blas_set_gemm"):
        return False, "extension built without the blas epilogues"
    from .backends.blas import _gemm  # noqa: PLC0415 - imports this module

    return _gemm.status()


def backends() -> Dict[str, dict]:
    """Report what was compiled and what is usable: ``{name: {"compiled": bool, "usable": bool, "detail": str}}``.

    For ``"blas"`` the detail names the CPU GEMM chosen by measurement (the measurement runs on the first call that
    needs it, e.g. this one) and the GEMM rates measured for every candidate.
    """
    cpu_ok = _C is not None
    cuda_ok, cuda_detail = _cuda_status()
    tri_ok, tri_detail = _triton_status()
    blas_ok, blas_detail = _blas_status("cpu")
    if blas_ok:
        from .backends.blas import _gemm  # noqa: PLC0415

        blas_detail = _gemm.describe()
    gpu_ok, gpu_detail = _blas_status("cuda")
    if torch.cuda.is_available():
        blas_detail += f"; CUDA: {gpu_detail}"
    return {
        "blas": {"compiled": bool(cpu_ok and hasattr(_C, "blas_set_gemm")), "usable": blas_ok or gpu_ok,
                 "detail": blas_detail},
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


def usable(name: str, device: torch.device) -> tuple[bool, str]:
    """Whether backend ``name`` can run on ``device`` here, and why not."""
    if name == "torch":
        return True, ""
    if name == "blas":
        if device.type not in ("cpu", "cuda"):
            return False, f"backend 'blas' needs CPU or CUDA tensors, got device {device}"
        return _blas_status(device.type)
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


def resolve_backend(requested: str, device: torch.device, op: str = "",
                    supported=("blas", "cuda", "triton", "cpu", "torch"), dtype: Optional[torch.dtype] = None,
                    work: int = 0) -> str:
    """Compatibility wrapper of :func:`ccr_fast.ops.dispatch.resolve` (the one resolution)."""
    from .ops._autotable import op_family  # noqa: PLC0415 - ops imports this module
    from .ops.dispatch import resolve  # noqa: PLC0415

    return resolve(op_family(op), requested, device, dtype, work, tuple(supported))
