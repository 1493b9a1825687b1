"""Fixture of the python_tests/ops conformance suite: a test parametrised with ``backend="triton"`` on a machine
without a GPU imports triton (or skips) and runs the kernels in the Triton interpreter (TRITON_INTERPRET=1, set
before the kernel modules are (re)loaded, restored afterwards). Backend lists: ``_backends.py``."""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

_TRITON_MODULES = ("ccr_fast.backends.triton._utils", "ccr_fast.backends.triton.epilogues",
                   "ccr_fast.backends.triton.similarity", "ccr_fast.backends.triton.contrastive",
                   "ccr_fast.backends.triton.triplet", "ccr_fast.backends.triton.topk",
                   "ccr_fast.backends.triton.ranks")


def _reload_triton():
    for name in _TRITON_MODULES:  # _utils first: the others import its helpers by name
        if name in sys.modules:
            importlib.reload(sys.modules[name])


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
        _reload_triton()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
        if previous != "1":
            _reload_triton()
