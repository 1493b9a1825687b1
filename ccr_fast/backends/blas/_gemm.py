"""The CPU GEMM of the ``"blas"`` backend: found, registered with ``ccr_fast._C`` and measured once per process.

The tile loops of csrc/cpu/blas*.cpp call a ``cblas_sgemm`` / ``cblas_dgemm`` function pointer. The library is
OpenBLAS from the ``scipy-openblas32`` wheel (LP64 cblas, symbols prefixed ``scipy_``, runtime CPU dispatch: the
SkylakeX kernels on AVX-512 machines), loaded with ctypes; it is a private copy (numpy bundles its own), so setting
it to one thread touches nobody else. The kernels parallelise over tiles with OpenMP and call it single-threaded:
one level of threads, no oversubscription between BLAS, OpenMP and torch.

:func:`describe` measures, on first call, the fp32 GEMM rate of the candidates on one retrieval-shaped product
(1024×256 · 256×16384, all threads): the registered OpenBLAS inside our tile loop, numpy's matmul (its bundled
OpenBLAS, ILP64) and ``torch.mm`` (MKL or OpenBLAS, as torch was built), and records them in
``ccr_fast.backends()["blas"]["detail"]``. Only a cblas the C++ loop can call may be chosen; when a candidate the
loop cannot call measures faster, the detail says so.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Optional, Tuple

_LOCK = threading.Lock()
_STATE: dict = {}


def _find() -> Tuple[Optional[str], str]:
    """(path of the OpenBLAS shared library, description) or (None, why not)."""
    try:
        import scipy_openblas32 as sob  # noqa: PLC0415 - optional dependency, imported on first use
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


def ensure() -> str:
    """Load and register the GEMM with ``ccr_fast._C`` (once); return its description. RuntimeError when absent."""
    with _LOCK:
        if "name" in _STATE:
            return _STATE["name"]
        if "error" in _STATE:
            raise RuntimeError(_STATE["error"])
        from ..._backend import extension  # noqa: PLC0415

        path, what = _find()
        if path is None:
            _STATE["error"] = f"backend 'blas' has no CPU GEMM: {what}"
            raise RuntimeError(_STATE["error"])
        lib = ctypes.CDLL(path)
        prefix = "scipy_" if hasattr(lib, "scipy_cblas_sgemm") else ""
        sgemm, dgemm = getattr(lib, f"{prefix}cblas_sgemm"), getattr(lib, f"{prefix}cblas_dgemm")
        set_threads = getattr(lib, f"{prefix}openblas_set_num_threads")
        set_threads.argtypes = [ctypes.c_int]
        set_threads(1)  # the tile loops are the parallel level
        extension().blas_set_gemm(ctypes.cast(sgemm, ctypes.c_void_p).value, ctypes.cast(dgemm, ctypes.c_void_p).value)
        _STATE["lib"] = lib
        _STATE["name"] = what
        return what


def status() -> Tuple[bool, str]:
    """Whether the CPU GEMM can be loaded (without measuring)."""
    try:
        return True, ensure()
    except RuntimeError as exc:
        return False, str(exc)


def _rate(fn, flops: float, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def measure() -> dict:
    """GFLOP/s of each candidate on fp32 1024×256 · 256×16384 (cached for the process)."""
    with _LOCK:
        if "rates" in _STATE:
            return _STATE["rates"]
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..._backend import extension  # noqa: PLC0415

    ensure()
    q_, g_, d = 1024, 16384, 256
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(q_, d, generator=gen)
    g = torch.randn(g_, d, generator=gen)
    out = torch.empty(q_, g_)
    flops = 2.0 * q_ * g_ * d
    C = extension()
    rates = {
        "openblas tile loop": _rate(lambda: C.blas_similarity(q.data_ptr(), g.data_ptr(), q_, g_, d, d, d, 0,
                                                              out.data_ptr(), g_), flops),
        "numpy matmul": _rate(lambda: np.matmul(q.numpy(), g.numpy().T, out=out.numpy()), flops),
        "torch.mm": _rate(lambda: torch.mm(q, g.T, out=out), flops),
    }
    with _LOCK:
        _STATE["rates"] = rates
    return rates


def describe() -> str:
    """The chosen GEMM, the measured rates, thread counts (for ``ccr_fast.backends()``)."""
    name = ensure()
    from ..._backend import extension  # noqa: PLC0415

    rates = measure()
    best = max(rates, key=rates.get)
    text = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
    note = "" if best == "openblas tile loop" else f" ({best} measured faster but the tile loop cannot call it)"
    return (f"chosen GEMM: {name}, 1 thread per tile x {extension().cpu_num_threads()} OpenMP threads; "
            f"measured fp32 1024x256x16384: {text}{note}; workspace budget {workspace_mb()} MiB "
            f"(CCR_FAST_BLAS_WORKSPACE_MB)")


def workspace_mb() -> float:
    """The score-matrix budget in MiB: ``CCR_FAST_BLAS_WORKSPACE_MB`` (default 512)."""
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


def mm(a, b, *, trans_a: bool = False, trans_b: bool = False, out=None):
    """``op(a) @ op(b)`` for contiguous 2-D CPU float32/float64 tensors through the registered GEMM (all threads).

    ``op`` transposes when ``trans_*`` is set (the tensor is passed as stored, no copy). Used for the benchmarks'
    GEMM floor; returns ``out`` ([M, N], allocated when None).
    """
    import torch  # noqa: PLC0415

    from ..._backend import DTYPE_CODES, extension  # noqa: PLC0415

    ensure()
    if not (a.is_contiguous() and b.is_contiguous()) or a.dtype != b.dtype:
        raise ValueError("mm: a and b must be contiguous CPU tensors of one dtype")
    M, K = (a.shape[1], a.shape[0]) if trans_a else tuple(a.shape)
    N = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = torch.empty(M, N, dtype=a.dtype)
    extension().blas_gemm(trans_a, trans_b, M, N, K, a.data_ptr(), a.shape[1], b.data_ptr(), b.shape[1],
                          out.data_ptr(), N, DTYPE_CODES[a.dtype])
    return out
