"""The one dispatch of the op families: a table from (op family, backend, device type) to host functions, the
backend choice (dtype and size included) and the dtype/autocast policy.

The table
    :data:`TABLE` maps ``(family, backend, device type)`` to the module that holds that backend's host functions of
    the kernel contract (docs/interop.md) under their contract names. It is built from :data:`FAMILIES` (which
    backends implement a family) and :data:`MODULES` (where a backend keeps its host functions on a device type).
    The ``blas`` backend has two entries per family: ``ccr_fast.backends.blas.<family>`` on CPU (OpenBLAS tile loops
    + C++ epilogues) and ``ccr_fast.backends.blas.gpu`` on CUDA (cuBLAS + Triton epilogues); host functions never
    branch on the device. The ``"torch"`` backend is each op module's own plain-PyTorch reference, given to
    :func:`host_table`.

Adding an op family (e.g. ``"sigmoid"``) is one line in :data:`FAMILIES`::

    "sigmoid": ("cpu", "blas", "triton"),   # backends with host functions for it (besides "torch")

with the host functions in ``ccr_fast/backends/<backend>/sigmoid.py`` (blas on CUDA: ``backends/blas/gpu.py``;
write ``"blas/cpu"`` to declare the CPU entry only, or add an exception to :data:`TABLE` below). The op module then
declares ``HOST = host_table("sigmoid", {"sigmoid_forward": reference_fn})`` and calls
``host(HOST, backend, "sigmoid_forward", x.device)`` inside its custom op, and
``resolve("sigmoid", backend, x.device, x.dtype, work=M * N)`` in its entry function.

Resolution (:func:`resolve`) is a pure function of its arguments, the environment variable ``CCR_FAST_BACKEND``,
the literal auto tables (:mod:`ccr_fast.ops._autotable`) and what :mod:`ccr_fast.backends.registry` found at import
time: no lock, no I/O and no probe on the call path, so ``torch.compile(fullgraph=True)`` traces it. The one-time
conformance probe of a GPU backend (CUDA, ``"auto"`` only) runs once per process, before: on the first eager call,
in :func:`warm_up`, or, when the first call is being traced, once at trace time outside the graph
(``torch.compiler.assume_constant_result``).

Dtype policy: float64 runs only on the CPU backends and ``"torch"`` (``"auto"`` with float64 on a GPU goes to
``"torch"``; naming a GPU backend for float64 raises). Operand layout (unit stride along d, fp16/bf16 widened to
float32 for the CPU kernels) is the host functions' job. Autocast: :func:`autocast_operands`. Validation of the
public arguments is :mod:`ccr_fast.ops._validate`, once per entry; host functions do not repeat it.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Dict, Optional, Tuple, Union

import torch

from ..backends import registry
from ._autotable import cpu_prefers_blas, preferred_cuda_backends

Tensor = torch.Tensor

BACKENDS = registry.BACKENDS  # ("auto", "blas", "cuda", "triton", "cpu", "torch")
CONCRETE = ("blas", "cuda", "triton", "cpu", "torch")
CPU_BACKENDS = ("cpu", "blas")  # backends whose CPU path is our C++ (float32/float64)
GPU_ONLY = ("cuda", "triton")

# family -> backends with host functions for it ("torch", the op module's reference, is implied). "name" means every
# device type of MODULES for that backend, "name/cpu" or "name/cuda" one device type only.
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "contrastive": ("cpu", "blas", "cuda", "triton"),
    "triplet": ("cpu", "blas", "cuda", "triton"),
    "topk": ("cpu", "blas", "cuda", "triton"),
    "ranks": ("cpu", "blas", "cuda", "triton"),
    "similarity": ("cpu", "blas", "cuda", "triton"),
    "sigmoid": ("cpu", "blas/cpu", "triton"),  # blas on CUDA: ccr_fast.backends.blas.sigmoid_gpu (TABLE below)
}

# (backend, device type) -> module of that backend's host functions ("{family}" is filled in).
MODULES: Dict[Tuple[str, str], str] = {
    ("cpu", "cpu"): "ccr_fast.backends.cpu.{family}",
    ("blas", "cpu"): "ccr_fast.backends.blas.{family}",
    ("blas", "cuda"): "ccr_fast.backends.blas.gpu",
    ("cuda", "cuda"): "ccr_fast.backends.cuda.{family}",
    ("triton", "cuda"): "ccr_fast.backends.triton.{family}",
    ("triton", "cpu"): "ccr_fast.backends.triton.{family}",  # the Triton interpreter (TRITON_INTERPRET=1)
}


def _entries(family: str, backends: Tuple[str, ...]) -> Dict[Tuple[str, str, str], str]:
    out = {}
    for spec in backends:
        name, _, only = spec.partition("/")
        for (backend, dev), path in MODULES.items():
            if backend == name and only in ("", dev):
                out[(family, backend, dev)] = path.format(family=family)
    return out


# THE table: (family, backend, device type) -> module path of the host functions.
TABLE: Dict[Tuple[str, str, str], str] = {}
for _family, _backends in FAMILIES.items():
    TABLE.update(_entries(_family, _backends))
del _family, _backends
TABLE[("sigmoid", "blas", "cuda")] = "ccr_fast.backends.blas.sigmoid_gpu"

HostEntry = Union[str, Dict[str, object]]


class HostTable(dict):
    """One family's rows of :data:`TABLE` plus its torch reference: ``{(backend, device type): module path or
    {contract name: function}}`` (what :func:`host` reads)."""

    def __init__(self, family: str, rows: Dict[Tuple[str, str], HostEntry]):
        super().__init__(rows)
        self.family = family


def host_table(family: str, torch_functions: Dict[str, object]) -> HostTable:
    """The host-function rows of ``family`` and its plain-torch reference functions (``backend="torch"``).

    A family missing from :data:`FAMILIES` gets every backend folder's conventional module (so an op module can be
    written before its table line).
    """
    entries = {k: v for k, v in TABLE.items() if k[0] == family}
    if family not in FAMILIES:
        entries = _entries(family, tuple(sorted({b for b, _ in MODULES})))
    rows: Dict[Tuple[str, str], HostEntry] = {(b, d): path for (_, b, d), path in entries.items()}
    ref = dict(torch_functions)
    rows[("torch", "cpu")] = rows[("torch", "cuda")] = ref
    return HostTable(family, rows)


def host(table: Dict, backend: str, name: str, device: Union[torch.device, str, None] = None):
    """The host function ``name`` of ``backend`` on ``device`` (its type) from a family's :func:`host_table`.

    ``device=None`` takes the backend's CPU entry when it has one (else its CUDA entry): pass the operands' device.
    Modules are imported on first use (inside the custom ops, which ``torch.compile`` does not trace).
    """
    if device is None:
        dev = "cpu" if (backend, "cpu") in table else "cuda"
    else:
        dev = device if isinstance(device, str) else device.type
    entry = table.get((backend, dev))
    if entry is None:
        if backend not in CONCRETE:
            raise ValueError(f"backend must be a concrete backend {CONCRETE}, got {backend!r}")
        family = getattr(table, "family", "this op")
        raise RuntimeError(f"backend {backend!r} has no {family} host functions for {dev} tensors")
    if isinstance(entry, dict):
        return entry[name]
    return getattr(importlib.import_module(entry), name)


def implemented(family: str, device_type: str, supported: Tuple[str, ...] = CONCRETE) -> Tuple[str, ...]:
    """The backends of ``supported`` with host functions for ``family`` on ``device_type`` (``"torch"`` always)."""
    if family not in FAMILIES:
        return tuple(supported)
    return tuple(b for b in supported if b == "torch" or (family, b, device_type) in TABLE)


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


# (backend, family, device) -> (passed, why not): the one-time GPU conformance probes of this process.
_PROBED: Dict[Tuple[str, str, str], Tuple[bool, str]] = {}


@torch.compiler.assume_constant_result
def _probe(backend: str, family: str, device: str) -> Tuple[bool, str]:
    """The conformance probe of ``backend``'s ``family`` host functions on ``device`` (``ccr_fast.backends.probe``),
    run once per process; a plain dict read afterwards. Under ``torch.compile`` this runs at trace time, outside the
    graph. A failure warns once, with the reason."""
    key = (backend, family, device)
    hit = _PROBED.get(key)
    if hit is not None:
        return hit
    try:
        probe = importlib.import_module("ccr_fast.backends.probe")
    except ImportError:
        result: Tuple[bool, str] = (True, "no probe module")
    else:
        try:
            path = TABLE.get((family, backend, torch.device(device).type))
            mod = importlib.import_module(path) if path else None
            result = tuple(probe.probe_ok(backend, family, torch.device(device), **({"host": mod} if mod else {})))
        except Exception as exc:  # a probe that cannot run counts as a failed probe
            result = (False, f"probe raised {type(exc).__name__}: {exc}")
    if not result[0]:
        warnings.warn(f"ccr_fast: backend {backend!r} skipped for {family} on {device}: conformance probe failed "
                      f"({result[1]})", RuntimeWarning, stacklevel=4)
    _PROBED[key] = result
    return result


def resolve(family: str, requested: str, device: torch.device, dtype: Optional[torch.dtype] = None,
            work: int = 0, supported: Tuple[str, ...] = CONCRETE) -> str:
    """A concrete backend for ``family`` on ``device`` and ``dtype``; ``work`` sizes the CPU choice (e.g. M·N).

    ``"auto"`` (after the ``CCR_FAST_BACKEND`` override): on CUDA the order of
    :func:`ccr_fast.ops._autotable.preferred_cuda_backends` (blas, then triton; float64 → ``"torch"``), each
    backend once it passed its one-time conformance probe; on CPU ``"blas"`` or ``"cpu"`` by size
    (:func:`ccr_fast.ops._autotable.cpu_prefers_blas`), else ``"torch"``. Only backends in ``supported`` that have
    a :data:`TABLE` entry for (``family``, backend, ``device.type``) are considered.

    Raises ValueError for an unknown name, RuntimeError (saying why) for an unavailable backend or dtype.
    """
    if not isinstance(requested, str) or requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    requested = _env_override(requested)
    have = implemented(family, device.type, tuple(supported))
    if requested != "auto":
        if requested not in supported:
            raise RuntimeError(f"backend {requested!r} does not implement {family}; available: {tuple(supported)}")
        ok, why = registry.usable(requested, device)
        if not ok:
            raise RuntimeError(f"backend {requested!r} is not available for {family}: {why}")
        if requested not in have:
            raise RuntimeError(f"backend {requested!r} does not implement {family} on {device.type}; "
                               f"available: {have}")
        ok, why = takes_dtype(requested, device, dtype)
        if not ok:
            raise RuntimeError(why)
        return requested
    if device.type == "cuda":
        for name in preferred_cuda_backends(family, dtype):
            if name not in have or not registry.usable(name, device)[0]:
                continue
            if not takes_dtype(name, device, dtype)[0]:
                continue
            if not _probe(name, family, str(device))[0]:
                continue
            return name
        return "torch"
    if device.type == "cpu":
        blas_ok = "blas" in have and registry.usable("blas", device)[0]
        cpu_ok = "cpu" in have and registry.usable("cpu", device)[0]
        if blas_ok and (not cpu_ok or cpu_prefers_blas(family, dtype, work)):
            return "blas"
        if cpu_ok:
            return "cpu"
    return "torch"


def warm_up(device: Union[torch.device, str, None] = None, dtype: Optional[torch.dtype] = None) -> Dict[str, str]:
    """Run every one-time check that ``backend="auto"`` needs on ``device`` (default: CUDA when present, else CPU)
    now, outside any tracing, and return ``{family: backend auto picks}`` (at a large problem size)."""
    if device is None:
        device = "cuda" if registry.CUDA_AVAILABLE else "cpu"
    device = torch.device(device)
    return {family: resolve(family, "auto", device, dtype, work=1 << 40) for family in FAMILIES}


def autocast_operands(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """The autocast policy of the feature operands: under autocast, fp16/fp32/bf16 features are cast
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
