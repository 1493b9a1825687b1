"""Triton kernels on CPU through the interpreter (TRITON_INTERPRET=1), small shapes, fp32 and fp16 inputs.

The variable must be set before ``triton.jit`` decorates the kernels (it decides at decoration time whether a kernel
is interpreted). The fixture below sets it for the tests of this folder only, and (re)loads the
``ccr_fast.backends.triton`` modules under it when an earlier test had already imported them compiled; afterwards the
variable is restored and the modules are reloaded again, so other folders see the environment they expect.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest

_previous = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton  # noqa: F401

    TRITON_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the environment
    TRITON_ERROR = f"triton not importable ({exc})"
finally:
    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous

_MODULES = ("ccr_fast.backends.triton._utils", "ccr_fast.backends.triton.similarity", "ccr_fast.backends.triton.contrastive",
            "ccr_fast.backends.triton.triplet", "ccr_fast.backends.triton.topk", "ccr_fast.backends.triton.ranks",
            "ccr_fast.backends.triton.epilogues")


def _reload_loaded():
    for name in _MODULES:  # _utils first: the others import its helpers by name
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def pytest_collection_modifyitems(config, items):
    if TRITON_ERROR is None:
        return
    skip = pytest.mark.skip(reason=TRITON_ERROR)
    for item in items:
        if "triton" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="package", autouse=True)
def _interpreter():
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    _reload_loaded()
    yield
    if previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous
    _reload_loaded()
