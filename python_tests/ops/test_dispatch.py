"""The one dispatch (ccr_fast.ops.dispatch): backend names, dtype policy, the CUDA order with the conformance probe,
the CPU size table and the CCR_FAST_BACKEND override (device objects only: no GPU needed)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from ccr_fast import _backend, losses, retrieval
from ccr_fast.backends import registry
from ccr_fast.ops import _autotable, dispatch
from ccr_fast.ops._autotable import OP_FAMILIES, cpu_prefers_blas, op_family, preferred_cuda_backends

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("CCR_FAST_BACKEND", raising=False)
    dispatch._PROBED.clear()
    yield
    dispatch._PROBED.clear()


def test_cuda_table_is_blas_then_triton_and_never_fp64():
    for op in OP_FAMILIES:
        for dtype in (None, torch.float32, torch.float16, torch.bfloat16):
            order = preferred_cuda_backends(op, dtype)
            assert order[:2] == ("blas", "triton") and "cuda" not in order, (op, dtype, order)
        assert preferred_cuda_backends(op, torch.float64) == ()


def test_op_names_map_to_families():
    assert op_family("contrastive loss") == "contrastive"
    assert op_family("triplet_loss") == "triplet"
    assert op_family("target_ranks") == "ranks"
    assert op_family("topk") == "topk"


def _passing_probe(monkeypatch):
    monkeypatch.setitem(sys.modules, "ccr_fast.backends.probe",
                        types.SimpleNamespace(probe_ok=lambda backend, family, device, host=None: (True, "")))


def test_auto_on_cuda_follows_the_table_and_the_dtype(monkeypatch):
    _passing_probe(monkeypatch)
    monkeypatch.setattr(registry, "usable", lambda name, device: (True, ""))
    assert dispatch.resolve("topk", "auto", CUDA, torch.float16) == "blas"
    assert dispatch.resolve("topk", "auto", CUDA, torch.float64) == "torch"
    assert dispatch.resolve("topk", "auto", CUDA, torch.float32, supported=("triton", "torch")) == "triton"
    monkeypatch.setattr(registry, "usable", lambda name, device: (name in ("triton", "cuda", "torch"), ""))
    assert dispatch.resolve("contrastive", "auto", CUDA, torch.bfloat16) == "triton"  # never the SIMT "cuda"
    monkeypatch.setattr(registry, "usable", lambda name, device: (name in ("cuda", "torch"), ""))
    assert dispatch.resolve("contrastive", "auto", CUDA, torch.bfloat16) == "torch"
    assert dispatch.resolve("contrastive", "cuda", CUDA, torch.bfloat16) == "cuda"  # by name it stays available


def test_auto_on_cuda_skips_a_backend_that_fails_its_probe(monkeypatch):
    monkeypatch.setattr(registry, "usable", lambda name, device: (True, ""))
    calls = []

    def probe_ok(backend, family, device, host=None):
        calls.append((backend, family))
        return (backend != "blas", "wrong lse on the probe shapes" if backend == "blas" else "")

    monkeypatch.setitem(sys.modules, "ccr_fast.backends.probe", types.SimpleNamespace(probe_ok=probe_ok))
    with pytest.warns(RuntimeWarning, match="'blas' skipped for topk.*wrong lse"):
        assert dispatch.resolve("topk", "auto", CUDA, torch.float16) == "triton"
    assert dispatch.resolve("topk", "auto", CUDA, torch.float16) == "triton"
    assert calls == [("blas", "topk"), ("triton", "topk")]  # cached per process


def test_named_backends_and_dtype_errors(monkeypatch):
    _passing_probe(monkeypatch)
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.resolve("topk", "fast", CPU, torch.float32)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        dispatch.resolve("topk", "cuda", CPU, torch.float32)
    assert dispatch.resolve("topk", "blas", CPU, torch.float64) == "blas"
    assert dispatch.resolve("topk", "cpu", CPU, torch.float64) == "cpu"
    monkeypatch.setattr(registry, "usable", lambda name, device: (True, ""))
    with pytest.raises(RuntimeError, match="does not take float64"):
        dispatch.resolve("topk", "triton", CUDA, torch.float64)
    with pytest.raises(RuntimeError, match="does not take float64"):
        dispatch.resolve("topk", "blas", CUDA, torch.float64)


def test_auto_on_cpu_picks_by_size(monkeypatch):
    monkeypatch.setitem(_autotable.CPU_BLAS_MIN_WORK, "topk", 1000)
    assert not cpu_prefers_blas("topk", torch.float32, 999) and cpu_prefers_blas("topk", torch.float32, 1000)
    assert dispatch.resolve("topk", "auto", CPU, torch.float32, work=10) == "cpu"
    assert dispatch.resolve("topk", "auto", CPU, torch.float32, work=10**6) == "blas"
    monkeypatch.setattr(registry, "usable", lambda name, device: (name != "blas", ""))
    assert dispatch.resolve("topk", "auto", CPU, torch.float32, work=10**6) == "cpu"
    monkeypatch.setattr(registry, "usable", lambda name, device: (name == "torch", ""))
    assert dispatch.resolve("topk", "auto", CPU, torch.float32, work=10**6) == "torch"


def test_env_override(monkeypatch):
    monkeypatch.setenv("CCR_FAST_BACKEND", "torch")
    assert dispatch.resolve("topk", "auto", CPU, torch.float32) == "torch"
    assert dispatch.resolve("topk", "cpu", CPU, torch.float32) == "cpu"  # only "auto" is overridden
    monkeypatch.setenv("CCR_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="CCR_FAST_BACKEND must be one of"):
        dispatch.resolve("topk", "auto", CPU, torch.float32)


def test_blas_is_valid_everywhere_in_the_public_api():
    q, g = torch.randn(4, 8), torch.randn(30, 8)
    s, i = retrieval.topk(q, g, 3, backend="blas")
    rs, ri = retrieval.topk(q, g, 3, backend="torch")
    assert torch.equal(i, ri)
    torch.testing.assert_close(s, rs)
    t = torch.tensor([0, 5, 29, 7])
    assert torch.equal(retrieval.target_ranks(q, g, t, backend="blas"), retrieval.target_ranks(q, g, t, backend="torch"))
    torch.testing.assert_close(retrieval.similarity(q, g, backend="blas"), q @ g.T)
    a, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(losses.triplet_loss(a, b, backend="blas"), losses.triplet_loss(a, b, backend="torch"))
    torch.testing.assert_close(losses.clip_loss(a, b, 10.0, backend="blas"), losses.clip_loss(a, b, 10.0, backend="torch"))


def test_backends_report_names_the_blas_gemm():
    info = _backend.backends()["blas"]
    assert info["compiled"] and info["usable"]
    assert "chosen GEMM" in info["detail"] and "GFLOP/s" in info["detail"]


def test_backends_is_both_the_report_and_the_package():
    import ccr_fast
    import ccr_fast.backends.blas as blas_pkg  # the attribute chain must reach the package, not a function

    assert callable(ccr_fast.backends) and set(ccr_fast.backends()) == {"blas", "cpu", "cuda", "triton", "torch"}
    assert ccr_fast.backends.registry is registry and hasattr(blas_pkg, "keeps_scores")


def test_table_has_separate_blas_entries_per_device_and_no_device_branches():
    for family in dispatch.FAMILIES:
        cpu_entry, gpu_entry = dispatch.TABLE[(family, "blas", "cpu")], dispatch.TABLE.get((family, "blas", "cuda"))
        assert cpu_entry == f"ccr_fast.backends.blas.{family}" and gpu_entry != cpu_entry
    import inspect
    import importlib

    for family in ("contrastive", "triplet", "topk", "ranks", "similarity"):
        source = inspect.getsource(importlib.import_module(f"ccr_fast.backends.blas.{family}"))
        assert 'device.type == "cuda"' not in source, family
    # the CPU entry refuses CUDA-typed work instead of reading device pointers; host() picks by device type
    h = dispatch.host_table("topk", {"topk": lambda *a: "ref"})
    assert dispatch.host(h, "blas", "topk", torch.device("cpu")).__module__ == "ccr_fast.backends.blas.topk"
    assert dispatch.host(h, "torch", "topk", CUDA)() == "ref"
    with pytest.raises(RuntimeError, match="no topk host functions for cuda"):
        dispatch.host(h, "cpu", "topk", CUDA)


def test_resolve_reads_no_lock(monkeypatch):
    """The call path is plain reads: resolve never touches the GEMM loader or a probe on CPU."""
    import ccr_fast.backends.blas._gemm as gemm

    def boom(*a, **k):
        raise AssertionError("called on the resolve path")

    monkeypatch.setattr(gemm, "ensure", boom)
    monkeypatch.setattr(gemm, "status", boom)
    monkeypatch.setattr(dispatch, "_probe", boom)
    for family in dispatch.FAMILIES:
        for requested in ("auto", "blas", "cpu", "torch"):
            for work in (1, 10 ** 9):
                assert dispatch.resolve(family, requested, CPU, torch.float32, work=work) in ("blas", "cpu", "torch")
