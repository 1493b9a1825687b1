"""``gpu-check --compile-only`` without a GPU: every Triton kernel compiles for sm_80 and sm_90 (largest config per
specialisation, ``--quick``), and none of the hot kernels spills. Runs in a subprocess so that the kernels are
compiled, not interpreted, whatever the rest of the session set. Plus the ptxas report parser."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ccr_fast import gpu_check


def test_compile_only_quick(tmp_path):
    pytest.importorskip("triton", reason="the compile check needs triton")
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "ccr_fast.gpu_check", "--compile-only", "--quick",
                           "--no-cuda-sources", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "compile_check.json").read_text())
    kernels = {r["kernel"] for r in report["triton_kernels"]}
    assert set(gpu_check._kernel_table()) == kernels
    for r in report["triton_kernels"]:
        assert r["ok"], r
        assert {r2["arch"] for r2 in report["triton_kernels"] if r2["kernel"] == r["kernel"]} == {80, 90}
        if r["registers"] is not None:  # ptxas found: registers reported, no spills in hot kernels
            assert r["registers"] > 0
            assert not (r["hot"] and (r["spill_stores"] or r["spill_loads"])), r
    tc = [r for r in report["triton_kernels"] if r["kernel"] == "similarity._similarity_kernel" and r["arch"] == 90]
    assert any(r["mma"] == "wgmma" for r in tc)  # tensor cores on Hopper


def test_parse_ptxas():
    text = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 8320 bytes smem"""
    assert gpu_check.parse_ptxas(text) == {"registers": 64, "stack_bytes": 16, "spill_stores": 12, "spill_loads": 8}
    assert gpu_check._demangle("_ZN3ccr4cuda16grad_rows_kernelIfLi1EEEvPKT_") == "grad_rows_kernel<fp32,1>"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_sources_report_registers():
    root = gpu_check._source_root(None)
    if root is None:
        pytest.skip("csrc/cuda not present (installed package without sources)")
    results = gpu_check.check_cuda_sources(root, archs=(90,), files=("similarity.cu",))
    assert results and all(r.ok and r.registers for r in results), results
    assert not gpu_check.spill_failures(results)
