"""The bf16 GEMM of the ``"blas"`` backend on CPU: found, registered with ``ccr_fast._C`` once per process.

Which low-precision GEMM, by measurement on an AMX / AVX512-BF16 Xeon (2 threads; docs/precision.md):
oneDNN's BRGeMM ukernel as torch exports it (``at::native::cpublas::brgemm``, bf16 × bf16 → fp32 accumulate, B in
VNNI layout) runs ~1 TFLOP/s per core on 256×64×256 blocks; ``torch.mm`` in bf16 (oneDNN, 270–480 GFLOP/s on two
threads) rounds its output to bf16 (``aten::mm.dtype`` has no CPU kernel); MKL's ``cblas_gemm_bf16bf16f32`` ran
100–150 GFLOP/s and ``cblas_gemm_f16f16f32`` ~60. So bf16 inputs use the BRGeMM (csrc/cpu/lowp_gemm.h), called
single-threaded from the kernels' OpenMP threads; fp16 inputs (no fp16 BRGeMM packing on this CPU:
``could_pack(Half)`` is false) are widened to fp32 exactly and use the fp32 GEMM: fp16 × fp16 products are exact
in fp32, so that is an fp16 GEMM with fp32 accumulation at the fp32 rate.

The symbols are C++ (mangled) names of torch's libtorch_cpu.so; :func:`status` says why the path is off when they
are missing (another torch build) or the CPU cannot pack bf16 for it. ``CCR_FAST_BLAS_BF16=0`` turns it off
(bf16 inputs are then widened to fp32 like fp16).
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Tuple

_LOCK = threading.Lock()
_STATE: dict = {}

_BRGEMM_BF16 = "_ZN2at6native7cpublas6brgemmEllllllbPKN3c108BFloat16ES5_Pfb"
_RELEASE = "_ZN2at6native7cpublas14brgemm_releaseEb"
_COULD_PACK = "_ZN2at6native7cpublas10could_packEN3c1010ScalarTypeE"
_BFLOAT16 = 15  # c10::ScalarType::BFloat16


def _load() -> Tuple[bool, str]:
    if os.environ.get("CCR_FAST_BLAS_BF16", "").strip() == "0":
        return False, "turned off by CCR_FAST_BLAS_BF16=0"
    import torch  # noqa: PLC0415

    from ..registry import extension  # noqa: PLC0415

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)
        brgemm, release, could_pack = (getattr(lib, n) for n in (_BRGEMM_BF16, _RELEASE, _COULD_PACK))
    except (OSError, AttributeError) as exc:
        return False, f"torch {torch.__version__} does not export at::native::cpublas::brgemm ({exc})"
    could_pack.argtypes = [ctypes.c_int8]
    could_pack.restype = ctypes.c_bool
    if not could_pack(_BFLOAT16):
        return False, "this CPU has no bf16 BRGeMM (oneDNN could_pack(BFloat16) is false: no AMX/AVX512-BF16)"
    extension().blas_set_lowp(ctypes.cast(brgemm, ctypes.c_void_p).value, ctypes.cast(release, ctypes.c_void_p).value)
    _STATE["lib"] = lib
    return True, f"oneDNN BRGeMM bf16->fp32 (at::native::cpublas::brgemm in torch {torch.__version__})"


def status() -> Tuple[bool, str]:
    """(whether bf16 inputs run the bf16 GEMM on CPU, description or why not); registers it on first call."""
    with _LOCK:
        if "status" not in _STATE:
            try:
                _STATE["status"] = _load()
            except Exception as exc:  # an extension without the entry point, etc.
                _STATE["status"] = (False, f"bf16 GEMM unavailable: {type(exc).__name__}: {exc}")
        return _STATE["status"]


def available() -> bool:
    """Whether the bf16 CPU GEMM is registered and usable."""
    return status()[0]
