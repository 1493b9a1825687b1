"""The CUDA auto-dispatch table and its use by resolve_backend (device objects only: no GPU needed)."""
from __future__ import annotations

import torch

from ccr_fast import _backend
from ccr_fast.ops._autotable import OP_FAMILIES, op_family, preferred_cuda_backends


def test_table_entries_are_gpu_backends():
    for op in OP_FAMILIES:
        for dtype in (None, torch.float32, torch.float16, torch.bfloat16):
            order = preferred_cuda_backends(op, dtype)
            assert order and set(order) <= {"cuda", "triton"}, (op, dtype, order)
    assert preferred_cuda_backends("contrastive", torch.float64) == ()


def test_op_names_of_the_ops_modules_map_to_families():
    assert op_family("contrastive loss") == "contrastive"
    assert op_family("triplet loss") == "triplet"
    assert op_family("target_ranks") == "ranks"
    assert op_family("topk") == "topk"


def test_resolve_backend_follows_the_table(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.delenv("CCR_FAST_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_usable", lambda name, device: (name in ("triton", "torch"), ""))
    assert _backend.resolve_backend("auto", cuda, op="topk") == "triton"
    monkeypatch.setattr(_backend, "_usable", lambda name, device: (True, ""))
    assert _backend.resolve_backend("auto", cuda, op="topk") == preferred_cuda_backends("topk")[0]
    assert _backend.resolve_backend("auto", cuda, op="topk", dtype=torch.float64) == "torch"
    assert _backend.resolve_backend("auto", cuda, op="topk", supported=("triton", "torch")) == "triton"
