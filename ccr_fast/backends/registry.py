"""What is built and usable on this machine: the ``_C`` loader, the CPU GEMM of ``"blas"`` and the one-time checks.

Everything here runs once, when the module is imported (loading ``ccr_fast._C``, finding and registering the CPU
GEMM, asking torch whether a CUDA device exists), and is kept in plain module-level values. The dispatch
(:mod:`ccr_fast.ops.dispatch`) only reads them: no lock, no I/O and no probe on an op's call path, so
``torch.compile(fullgraph=True)`` traces every public op. The costly parts run on demand, outside the call path:
the GEMM rate measurement (:func:`measure_gemm`, for :func:`backends`) and the GPU conformance probes
(:mod:`ccr_fast.backends.probe`, cached per process).

Backends: ``"blas"`` (the fastest vendor GEMM present in row chunks + fused epilogues: OpenBLAS on CPU, chosen by
measurement, cuBLAS through ``torch.mm`` on CUDA), ``"cpu"`` (fully fused C++/OpenMP kernels of ``ccr_fast._C``),
``"cuda"`` (CUDA kernels of ``ccr_fast._C`` when built with nvcc), ``"triton"``, ``"torch"`` (plain PyTorch).
Nothing in ``ccr_fast.backends`` imports ``ccr_fast.ops``.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

BACKENDS = ("auto", "blas", "cuda", "triton", "cpu", "torch")

# float32 / float64 / float16 / bfloat16 codes shared with csrc/common.h (docs/interop.md).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

# ---------------------------------------------------------------------------------------------------- _C loader


def _load_extension():
    """Import ``ccr_fast._C``.

    When the package is imported from a source checkout that has no in-place build (e.g. ``python -m ...`` run in
    the repository root after ``pip install .``), the checkout shadows the installed package; the extension built
    by that install is then loaded from its installed location instead.
    """
    try:
        from .. import _C as ext  # type: ignore[attr-defined]

        return ext, None
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    here = Path(__file__).resolve().parents[1]
    package = __name__.rsplit(".", 2)[0]
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
                spec = importlib.util.spec_from_file_location(f"{package}._C", lib)
                ext = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(ext)
                sys.modules[f"{package}._C"] = ext
                return ext, None
    return None, error


_C, _C_ERROR = _load_extension()


def extension():
    """The compiled module ``ccr_fast._C``; raises RuntimeError saying why when it is missing."""
    if _C is None:
        raise RuntimeError(f"ccr_fast._C extension is not available ({_C_ERROR}); reinstall with `pip install .`")
    return _C


# ------------------------------------------------------------------------------------------- the CPU GEMM of blas
# The tile loops of csrc/cpu/blas*.cpp call a ``cblas_sgemm`` / ``cblas_dgemm`` function pointer. The library is
# OpenBLAS from the ``scipy-openblas32`` wheel (LP64 cblas, symbols prefixed ``scipy_``, runtime CPU dispatch), loaded
# with ctypes; a private copy (numpy bundles its own), so setting it to one thread touches nobody else. The kernels
# parallelise over tiles with OpenMP and call it single-threaded: one level of threads, no oversubscription.

GEMM: Dict[str, object] = {}  # {"name": description, "lib": CDLL} once registered, {"error": why} when it cannot be


def _find_gemm() -> Tuple[Optional[str], str]:
    """(path of the OpenBLAS shared library, description) or (None, why not)."""
    try:
        import scipy_openblas32 as sob  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        return None, f"scipy-openblas32 is not installed ({exc}); pip install scipy-openblas32"
    path = os.path.join(sob.get_lib_dir(), f"lib{sob.get_library()}.so")
    if not os.path.isfile(path):
        return None, f"scipy-openblas32 has no shared library at {path}"
    try:
        config = sob.get_openblas_config().strip()
    except Exception:  # pragma: no cover - old wheels
        config = "OpenBLAS"
    return path, f"{config} (scipy-openblas32)"


def _register_gemm() -> None:
    """Find the CPU GEMM and register its cblas pointers with ``ccr_fast._C`` (once, at import)."""
    if _C is None:
        GEMM["error"] = f"ccr_fast._C extension is not available ({_C_ERROR})"
        return
    if not hasattr(_C, "blas_set_gemm"):
        GEMM["error"] = "extension built without the blas epilogues"
        return
    path, what = _find_gemm()
    if path is None:
        GEMM["error"] = f"backend 'blas' has no CPU GEMM: {what}"
        return
    try:
        lib = ctypes.CDLL(path)
        prefix = "scipy_" if hasattr(lib, "scipy_cblas_sgemm") else ""
        sgemm, dgemm = getattr(lib, f"{prefix}cblas_sgemm"), getattr(lib, f"{prefix}cblas_dgemm")
        set_threads = getattr(lib, f"{prefix}openblas_set_num_threads")
        set_threads.argtypes = [ctypes.c_int]
        set_threads(1)  # the tile loops are the parallel level
        _C.blas_set_gemm(ctypes.cast(sgemm, ctypes.c_void_p).value, ctypes.cast(dgemm, ctypes.c_void_p).value)
    except (OSError, AttributeError) as exc:
        GEMM["error"] = f"backend 'blas' could not load its CPU GEMM from {path}: {exc}"
        return
    GEMM["lib"], GEMM["name"] = lib, what


def gemm_name() -> str:
    """Description of the registered CPU GEMM; RuntimeError saying why when there is none."""
    name = GEMM.get("name")
    if name is None:
        raise RuntimeError(str(GEMM.get("error", "backend 'blas' has no CPU GEMM")))
    return name  # type: ignore[return-value]


def _rate(fn, flops: float, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def measure_gemm() -> Dict[str, float]:
    """GFLOP/s of each CPU GEMM candidate on fp32 1024×256 · 256×16384, all threads (measured once per process):
    the registered OpenBLAS inside our tile loop, numpy's matmul (its bundled OpenBLAS) and ``torch.mm``."""
    if "rates" in GEMM:
        return GEMM["rates"]  # type: ignore[return-value]
    import numpy as np  # noqa: PLC0415

    gemm_name()
    q_, g_, d = 1024, 16384, 256
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(q_, d, generator=gen), torch.randn(g_, d, generator=gen)
    out = torch.empty(q_, g_)
    flops = 2.0 * q_ * g_ * d
    rates = {
        "openblas tile loop": _rate(lambda: _C.blas_similarity(q.data_ptr(), g.data_ptr(), q_, g_, d, d, d, 0,
                                                               out.data_ptr(), g_), flops),
        "numpy matmul": _rate(lambda: np.matmul(q.numpy(), g.numpy().T, out=out.numpy()), flops),
        "torch.mm": _rate(lambda: torch.mm(q, g.T, out=out), flops),
    }
    GEMM["rates"] = rates
    return rates


def workspace_mb() -> float:
    """The blas score-matrix budget in MiB: ``CCR_FAST_BLAS_WORKSPACE_MB`` (default 512)."""
    raw = os.environ.get("CCR_FAST_BLAS_WORKSPACE_MB", "").strip()
    if not raw:
        return 512.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"CCR_FAST_BLAS_WORKSPACE_MB must be a number of MiB, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"CCR_FAST_BLAS_WORKSPACE_MB must be >= 0, got {raw!r}")
    return value


def describe_gemm() -> str:
    """The chosen GEMM, the measured rates and thread counts (for :func:`backends`; measures on first call)."""
    name = gemm_name()
    rates = measure_gemm()
    best = max(rates, key=rates.get)
    text = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
    note = "" if best == "openblas tile loop" else f" ({best} measured faster but the tile loop cannot call it)"
    return (f"chosen GEMM: {name}, 1 thread per tile x {_C.cpu_num_threads()} OpenMP threads; "
            f"measured fp32 1024x256x16384: {text}{note}; workspace budget {workspace_mb()} MiB "
            f"(CCR_FAST_BLAS_WORKSPACE_MB)")


# --------------------------------------------------------------------------------------- what is usable, and why
# {(backend, device type): (usable, why not)}, filled once at import. "triton" on CPU additionally needs
# TRITON_INTERPRET=1 at call time (read by usable()).

STATUS: Dict[Tuple[str, str], Tuple[bool, str]] = {}
CUDA_AVAILABLE = False


def _fill_status() -> None:
    global CUDA_AVAILABLE
    CUDA_AVAILABLE = bool(torch.cuda.is_available())
    no_c = f"ccr_fast._C extension is not available ({_C_ERROR})"
    no_gpu = "no CUDA device is visible"
    STATUS[("torch", "cpu")] = STATUS[("torch", "cuda")] = (True, "")
    STATUS[("cpu", "cpu")] = (True, "") if _C is not None else (False, no_c)
    STATUS[("cpu", "cuda")] = (False, "backend 'cpu' needs CPU tensors, got a CUDA device")
    STATUS[("blas", "cpu")] = (True, str(GEMM["name"])) if "name" in GEMM else (False, str(GEMM.get("error")))
    if not CUDA_AVAILABLE:
        STATUS[("blas", "cuda")] = (False, no_gpu)
    elif importlib.util.find_spec("ccr_fast.backends.blas.gpu") is None:
        STATUS[("blas", "cuda")] = (False, "blas on CUDA not available: ccr_fast.backends.blas.gpu is missing")
    else:
        STATUS[("blas", "cuda")] = (True, "cuBLAS (torch.mm) + fused GPU epilogues")
    if _C is None:
        cuda = (False, no_c)
    elif not getattr(_C, "with_cuda", False):
        cuda = (False, "extension built without CUDA")
    else:
        cuda = (True, "CUDA kernels compiled in ccr_fast._C")
    STATUS[("cuda", "cpu")] = (False, "backend 'cuda' needs CUDA tensors, got a CPU device") if cuda[0] else cuda
    STATUS[("cuda", "cuda")] = cuda if not cuda[0] or CUDA_AVAILABLE else \
        (False, "extension built with CUDA but no CUDA device is visible")
    if importlib.util.find_spec("triton") is None:
        triton = (False, "triton is not installed")
    else:
        triton = (True, "triton")
    STATUS[("triton", "cuda")] = triton if not triton[0] or CUDA_AVAILABLE else \
        (False, "triton installed but no CUDA device (set TRITON_INTERPRET=1 to run it on CPU)")
    STATUS[("triton", "cpu")] = triton


def usable(name: str, device: torch.device) -> Tuple[bool, str]:
    """Whether backend ``name`` can run on ``device`` here, and why not (plain reads of the import-time status)."""
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {name!r}")
    dev = device.type
    if dev not in ("cpu", "cuda"):
        return False, f"backend {name!r} needs CPU or CUDA tensors, got device {device}"
    ok, why = STATUS[(name, dev)]
    if ok and name == "triton" and dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False, f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {device}"
    return ok, "" if ok else why


def backends() -> Dict[str, dict]:
    """Report what was compiled and what is usable: ``{name: {"compiled": bool, "usable": bool, "detail": str}}``.

    For ``"blas"`` the detail names the CPU GEMM and the GEMM rates measured for every candidate (measured on the
    first call of this report).
    """
    blas_ok, blas_detail = STATUS[("blas", "cpu")]
    if blas_ok:
        blas_detail = describe_gemm()
    gpu_ok, gpu_detail = STATUS[("blas", "cuda")]
    if CUDA_AVAILABLE:
        blas_detail += f"; CUDA: {gpu_detail}"
    cpu_ok = _C is not None
    cuda_ok, cuda_detail = STATUS[("cuda", "cuda")]
    tri_dev = "cuda" if CUDA_AVAILABLE else "cpu"
    tri_ok, tri_detail = usable("triton", torch.device(tri_dev))
    if tri_ok:
        import triton  # noqa: PLC0415 - only for its version in the report

        tri_detail = (f"triton {triton.__version__}" if CUDA_AVAILABLE
                      else "triton interpreter (TRITON_INTERPRET=1)")
    else:
        tri_detail = STATUS[("triton", tri_dev)][1] or tri_detail
    return {
        "blas": {"compiled": bool(cpu_ok and hasattr(_C, "blas_set_gemm")), "usable": blas_ok or gpu_ok,
                 "detail": blas_detail},
        "cpu": {"compiled": cpu_ok, "usable": cpu_ok,
                "detail": (f"C++ kernels, OpenMP threads={_C.cpu_num_threads()}" if cpu_ok else f"missing ({_C_ERROR})")},
        "cuda": {"compiled": bool(_C is not None and getattr(_C, "with_cuda", False)), "usable": cuda_ok,
                 "detail": cuda_detail},
        "triton": {"compiled": STATUS[("triton", "cpu")][0], "usable": tri_ok, "detail": tri_detail},
        "torch": {"compiled": True, "usable": True, "detail": f"plain PyTorch {torch.__version__} reference"},
    }


_register_gemm()
_fill_status()
