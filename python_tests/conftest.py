import os
import random

import numpy as np
import pytest
import torch

# Without a GPU, every Triton kernel in the session runs in the interpreter. triton.jit decides at decoration time
# whether a kernel is interpreted, so the variable is set here, before any test module imports a kernel (a kernel
# imported compiled by one folder and called interpreted by another fails with "Cannot call @triton.jit'd outside
# of the scope of a kernel"). The compile-only GPU check runs in a subprocess without it.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") and not has_gpu:  # the marker, not the folder name python_tests/gpu
            item.add_marker(skip_gpu)


# GPU tests cannot pass silently: where a CUDA device is visible, a gpu-marked test fails when the
# extension was built without CUDA, and a gpu-marked test that skips (a missing optional package, a forgotten
# skipif) is reported as a failure.
def _cuda_build_problem():
    try:
        from ccr_fast import _backend
    except Exception as exc:  # noqa: BLE001
        return f"ccr_fast does not import: {exc}"
    info = _backend.backends().get("cuda", {})
    if not info.get("compiled"):
        return (f"a CUDA device is present but the CUDA backend was not built ({info.get('detail')}); "
                "rebuild with nvcc on PATH: pip install --no-build-isolation .")
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") and torch.cuda.is_available():
        problem = _cuda_build_problem()
        if problem:
            pytest.fail(problem, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and item.get_closest_marker("gpu") and torch.cuda.is_available()
            and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        report.longrepr = f"gpu-marked test skipped on a machine with a CUDA device: {report.longrepr}"
