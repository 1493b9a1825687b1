"""``ccr_fast.backends.probe``: the one-time conformance probe passes for the Triton backend (run here through the
interpreter on CPU tensors), is cached, and reports a broken backend with the reason instead of raising."""
from __future__ import annotations

import types

import pytest
import torch

from ccr_fast.backends import probe

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("family", probe.FAMILIES)
def test_triton_passes(family):
    probe.clear()
    ok, why = probe.probe_ok("triton", family, torch.device("cpu"))
    assert ok, why
    assert probe._cache[("triton", family, "cpu")] == (True, "")


def test_broken_backend_fails_with_reason(monkeypatch):
    probe.clear()
    real = probe._host

    def host(backend, family):
        if backend != "broken":
            return real(backend, family)
        mod = real("triton", family)

        def bad_similarity(q, g):
            return mod.similarity(q, g) + 1e-2  # off by 0.01 everywhere

        return types.SimpleNamespace(similarity=bad_similarity)

    monkeypatch.setattr(probe, "_host", host)
    ok, why = probe.probe_ok("broken", "similarity", torch.device("cpu"))
    assert not ok and "broken/similarity" in why and "max abs error" in why
    ok2, why2 = probe.probe_ok("missing_backend", "topk", torch.device("cpu"))
    assert not ok2 and "ModuleNotFoundError" in why2
    with pytest.raises(ValueError, match="family must be one of"):
        probe.probe_ok("triton", "nope", torch.device("cpu"))
    probe.clear()
