"""Fixture of the python_tests/ops conformance suite: a test parametrised with ``backend="triton"`` on a machine
without a GPU imports triton (or skips) and runs the kernels in the Triton interpreter (TRITON_INTERPRET=1, set
before the kernel modules are (re)loaded, restored afterwards). Backend lists: ``_backends.py``."""
from __future__ import annotations

import os
import sys

import pytest
import torch

# Triton reads part of its interpreter set-up when it is first imported: import it (when installed) with the
# variable set, then restore the environment; the fixture below switches it on per test.
_previous = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton missing: the triton tests skip
        pass
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous


def _forget_triton_modules():
    """Drop ccr_fast.backends.triton.* so the next import decorates the kernels under the current TRITON_INTERPRET."""
    for name in [n for n in sys.modules if n == "ccr_fast.backends.triton" or n.startswith("ccr_fast.backends.triton.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def _backend_environment(request):
    """For ``triton`` without a GPU: import triton or skip, and run its kernels in the interpreter."""
    callspec = getattr(request.node, "callspec", None)
    backend = callspec.params.get("backend") if callspec is not None else None
    if backend != "triton" or torch.cuda.is_available():
        yield
        return
    pytest.importorskip("triton", reason="the triton backend needs the triton package")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    if previous != "1":
        _forget_triton_modules()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
        if previous != "1":
            _forget_triton_modules()
