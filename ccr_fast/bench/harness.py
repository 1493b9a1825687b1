"""Measurement core shared by every benchmark suite: environment record, interleaved timing, peak memory.

Method:

* Every provider of one configuration is a zero-argument callable that runs the whole measured operation
  (for losses: forward + backward). Providers are warmed up, then timed **interleaved**: repetition ``r`` runs
  every provider once, in an order rotated by ``r``, so slow drifts of a shared machine hit all of them alike.
* Time: ``time.perf_counter`` around one call on CPU; CUDA events around one call on GPU (after a synchronise).
  Reported as the median and the 20th/80th percentiles of the repetitions, in milliseconds.
* Memory, measured in a separate pass after timing (so it does not perturb the times):

  - CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around one call, after
    ``reset_peak_memory_stats`` — the peak **extra** memory the call allocates above its inputs.
  - CPU: the peak resident-set growth of the process during one call: the Linux high-water mark ``VmHWM`` is
    reset through ``/proc/self/clear_refs`` before the call and compared with ``VmRSS`` before it. glibc's
    mmap threshold is pinned at 64 KiB (``mallopt``) so that large buffers are mapped and returned to the OS on
    free instead of being cached in the heap. The number therefore counts every byte the call touches for the
    first time (torch tensors, C++ workspaces, thread stacks), not the inputs, and has a noise floor of a few
    hundred KiB. It is ``None`` where ``/proc/self/clear_refs`` is not writable.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import platform
import subprocess
import time
from typing import Callable, Dict, List, Optional

import torch

QUANTILES = (0.5, 0.2, 0.8)
MEM_KIND_CPU = "cpu_peak_rss_delta"
MEM_KIND_CUDA = "cuda_max_allocated_delta"


def quantiles(values: List[float]) -> Optional[dict]:
    """``{"median", "q20", "q80", "n"}`` of ``values`` (linear interpolation), or None when empty."""
    if not values:
        return None
    v = sorted(values)

    def q(p: float) -> float:
        x = p * (len(v) - 1)
        lo = int(x)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return {"median": q(0.5), "q20": q(0.2), "q80": q(0.8), "n": len(v)}


# ----------------------------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """HEAD of the checkout the package was imported from (``unknown`` for an installed wheel)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    """What ran the benchmark: device name, versions, threads, git commit, time stamp."""
    import ccr_fast

    env = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "ccr_fast": ccr_fast.__version__,
        "git_commit": _git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backends": {k: v["usable"] for k, v in ccr_fast.backends().items()},
        "blas": ccr_fast.backends()["blas"]["detail"],
        "load_average": load_average(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "cpu_bf16_gemm": _bf16_gemm(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # pragma: no cover - depends on the environment
        env["triton"] = None
    try:
        from ccr_fast import _C  # type: ignore[attr-defined]

        env["ccr_fast_cpu_threads"] = _C.cpu_num_threads()
    except Exception:
        env["ccr_fast_cpu_threads"] = None
    return env


def _bf16_gemm() -> str:
    """The bf16 GEMM the blas backend uses on CPU, or why none."""
    try:
        from ccr_fast.backends.blas import _lowp

        ok, why = _lowp.status()
        return why if ok else f"none ({why})"
    except Exception as exc:  # pragma: no cover - depends on the build
        return f"none ({type(exc).__name__}: {exc})"


def load_average() -> Optional[List[float]]:
    """The machine's 1/5/15-minute load averages (``uptime``), or None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux/macOS
        return None


# ---------------------------------------------------------------------------------------------------- memory
_MALLOC_PINNED = False


def _pin_malloc() -> None:
    """Fix glibc's mmap/trim thresholds so freed large buffers leave the RSS (see the module docstring)."""
    global _MALLOC_PINNED
    if _MALLOC_PINNED:
        return
    _MALLOC_PINNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also disables the dynamic threshold)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        pass


def _proc_status() -> Dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0]) * 1024
    return out


def cpu_memory_supported() -> bool:
    """True when the RSS high-water mark can be reset (Linux with a writable ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in _proc_status()
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory one call of ``fn`` needs above what was resident before it (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    _pin_malloc()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _proc_status()["VmRSS"]
    fn()
    return max(0, _proc_status()["VmHWM"] - base)


# ---------------------------------------------------------------------------------------------------- timing
def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))) or \
        "out of memory" in str(exc).lower()


def measure(providers: Dict[str, Callable[[], object]], device: torch.device, *, warmup: int = 1, reps: int = 5,
            min_reps: int = 3, max_seconds: float = 10.0, memory: bool = True, mem_reps: int = 3) -> Dict[str, dict]:
    """Time (and measure the memory of) several providers of one configuration, interleaved.

    Args:
        providers: name -> zero-argument callable running the measured operation once.
        device: where the callables run (selects the clock and the memory counter).
        warmup: untimed calls per provider before timing (compile/autotune/first-touch happen there).
        reps: timed calls per provider at most.
        min_reps: timed calls per provider at least, even past ``max_seconds``.
        max_seconds: stop adding repetitions once this much wall time was spent timing.
        memory: also measure peak extra memory (``mem_reps`` calls per provider, median).

    Returns:
        name -> ``{"status": "ok"|"error"|"oom", "time_ms": quantiles|None, "mem_bytes": quantiles|None,
        "error": str (failures only)}``.
    """
    out: Dict[str, dict] = {n: {"status": "ok", "time_ms": None, "mem_bytes": None} for n in providers}
    alive = list(providers)

    def run(name: str, action: Callable[[], object]):
        try:
            return action()
        except Exception as exc:  # a failing provider is recorded and dropped, the sweep goes on
            out[name]["status"] = "oom" if _is_oom(exc) else "error"
            out[name]["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            if name in alive:
                alive.remove(name)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    for _ in range(warmup):
        for name in list(alive):
            run(name, providers[name])
    times: Dict[str, List[float]] = {n: [] for n in providers}
    t_start = time.perf_counter()
    for r in range(reps):
        if r >= min_reps and time.perf_counter() - t_start > max_seconds:
            break
        order = alive[r % len(alive):] + alive[:r % len(alive)] if alive else []
        for name in order:
            t = run(name, lambda: _time_once(providers[name], device))
            if t is not None:
                times[name].append(t)
    for name in providers:
        if out[name]["status"] == "ok":
            out[name]["time_ms"] = quantiles(times[name])
    if memory:
        for name in list(alive):
            vals = []
            for _ in range(mem_reps):
                m = run(name, lambda: peak_extra_bytes(providers[name], device))
                if m is None:
                    break
                vals.append(float(m))
            if out[name]["status"] == "ok":
                out[name]["mem_bytes"] = quantiles(vals)
    return out


def mem_kind(device: torch.device) -> str:
    """Name of the memory counter used on ``device`` (explained in the module docstring and RESULTS.md)."""
    return MEM_KIND_CUDA if device.type == "cuda" else MEM_KIND_CPU


def random_unit(shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Rows L2-normalised along the last dim, drawn in float32 then cast to ``dtype``."""
    x = torch.randn(*shape, generator=generator, dtype=torch.float32)
    x = torch.nn.functional.normalize(x, dim=-1)
    return x.to(device=device, dtype=dtype)
