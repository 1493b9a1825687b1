"""Compiled GPU conformance of the Triton backend and of the blas backend's CUDA path (``backends/blas/gpu.py``).

Runs only with a CUDA device (``gpu`` marker; on such a machine a skip is a failure, see python_tests/conftest.py),
never under the Triton interpreter: bf16 inputs, d ∈ {256, 512} (> 64: every gradient path walks several feature
chunks), N ≥ 4096, k ∈ {10, 100}, logits that overflow to −inf, and the exact-score property of the rank counters.

Criterion (flash-attention's): max |ours − fp64| ≤ 2 · max |torch in bf16 − fp64| + a floor of 1e-6
relative to the largest reference entry. "torch in bf16" is the eager formulation: bf16 GEMM output, fp32 softmax,
bf16 gradient GEMMs.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.gpu
triton = pytest.importorskip("triton", reason="the GPU backends need triton")

BACKENDS = ("triton", "blas")


def _host(backend, family):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("GPU conformance must run compiled Triton: unset TRITON_INTERPRET")
    if backend == "blas":
        import ccr_fast.backends.blas.gpu as mod
    else:
        import importlib

        mod = importlib.import_module(f"ccr_fast.backends.triton.{family}")
    return mod


def _feats(n, d, dtype=torch.bfloat16):
    return torch.nn.functional.normalize(torch.randn(n, d, device="cuda", dtype=torch.float64), dim=1).to(dtype)


def _within(name, got, ref, base):
    """FA criterion: error of ``got`` ≤ 2 × error of the torch-in-bf16 result ``base`` (+ floor)."""
    got, ref, base = got.double(), ref.double(), base.double()
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = float((got - ref).abs().max())
    err_t = float((base - ref).abs().max())
    floor = 1e-6 * max(1.0, float(ref.abs().max()))
    assert err <= 2 * err_t + floor, f"{name}: error {err:.3g} > 2 x torch-bf16 error {err_t:.3g} + {floor:.1g}"


def _contrastive_refs(x, y, scale, k, rc, cc, w_pos):
    """(fp64 reference, torch-bf16 baseline) of lse_row, lse_col, dx, dy, dscale for positives (r, r·k .. r·k+k-1)."""
    b, n = x.shape[0], y.shape[0]
    pos = (torch.arange(b, device="cuda")[:, None]) == (torch.arange(n, device="cuda")[None, :] // k)
    out = []
    for lowp in (False, True):
        if lowp:
            s = (x @ y.t()).float()  # bf16 GEMM output
            xs, ys = x, y
        else:
            xs, ys = x.double(), y.double()
            s = xs @ ys.t()
        z = scale * s
        lr, lc = z.logsumexp(1), z.logsumexp(0)
        dz = rc[:, None] * (z - lr[:, None]).exp() + cc[None, :] * (z - lc[None, :]).exp() - w_pos * pos
        if lowp:
            dzl = dz.to(x.dtype)
            dx, dy = scale * (dzl @ ys).float(), scale * (dzl.t() @ xs).float()
        else:
            dx, dy = scale * dz @ ys, scale * dz.t() @ xs
        ds = (dz * s).sum()
        out.append((lr, lc, dx, dy, ds))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [256, 512])
@pytest.mark.parametrize("b,k", [(4096, 1), (1024, 4)])
def test_contrastive_bf16(backend, d, b, k):
    mod = _host(backend, "contrastive")
    x, y = _feats(b, d), _feats(b * k, d)
    scale = torch.tensor(100.0, device="cuda")
    rc = torch.full((b,), 1.0 / (2 * b), device="cuda")
    cc = torch.full((b * k,), 1.0 / (2 * b * k), device="cuda")
    w_pos = 1.0 / (2 * b) + 1.0 / (2 * b * k)
    lr, lc, pr, pc = mod.contrastive_forward(x, y, scale, 0, 1, 0, k, True)
    dx, dy, ds = mod.contrastive_backward(x, y, scale, lr, lc, rc, cc, w_pos, 0, 1, 0, k)
    ref, base = _contrastive_refs(x, y, 100.0, k, rc.double(), cc.double(), w_pos)
    for name, got, r, bl in zip(("lse_row", "lse_col", "dx", "dy", "dscale"), (lr, lc, dx, dy, ds), ref, base):
        _within(name, got, r, bl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_contrastive_infinite_logits(backend):
    """Rows whose first 4096 logits overflow to −inf in fp32 (|x·y| ~ 1e40): finite LSEs and gradients."""
    mod = _host(backend, "contrastive")
    n, d = 4096, 256
    x, y = _feats(n, d, torch.float32), _feats(2 * n, d, torch.float32)
    x[:, 0], y[:n] = 1e20, 0.0
    y[:n, 0] = -1e20
    y[n:, 0] = 0.0
    x, y = x.to(torch.bfloat16), y.to(torch.bfloat16)
    scale = torch.tensor(20.0, device="cuda")
    lr, lc, pr, pc = mod.contrastive_forward(x, y, scale, n, 1, 0, 1, False)
    assert torch.isfinite(lr).all() and torch.isfinite(pr).all()
    want = (20.0 * x.double() @ y[n:].double().t()).logsumexp(1)
    torch.testing.assert_close(lr.double(), want, rtol=0, atol=1e-4 * float(want.abs().max()))
    rc = torch.full((n,), 1.0 / n, device="cuda")
    dx, dy, ds = mod.contrastive_backward(x, y, scale, lr, lc, rc, torch.zeros(2 * n, device="cuda"), 1.0 / n,
                                          n, 1, 0, 1)
    assert torch.isfinite(dx).all() and torch.isfinite(dy).all() and torch.isfinite(ds)
    assert float(dy[:n].abs().max()) == 0.0  # the −inf columns get exactly zero gradient


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("d", [256, 512])
def test_topk_bf16(backend, k, d):
    mod = _host(backend, "topk")
    q, g = _feats(512, d), _feats(8192, d)
    g[100] = g[7]  # exact duplicates: equal scores, the lower index first
    scores, idx = mod.topk(q, g, k, 0)
    s = q.double() @ g.double().t()
    want = torch.sort(s, dim=1, descending=True, stable=True).values[:, :k]
    torch.testing.assert_close(scores.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(s.gather(1, idx), want, rtol=0, atol=1e-5)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    both = (idx == 7).any(1) & (idx == 100).any(1)
    pos7, pos100 = (idx == 7).int().argmax(1), (idx == 100).int().argmax(1)
    assert (pos7[both] < pos100[both]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_large_k(backend):
    mod = _host(backend, "topk")
    q, g = _feats(300, 256), _feats(5000, 256)
    scores, idx = mod.topk(q, g, 600, 0)
    s = q.double() @ g.double().t()
    want = torch.sort(s, dim=1, descending=True, stable=True).values[:, :600]
    torch.testing.assert_close(scores.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_exact_scores_random_bf16(backend):
    """Random bf16 inputs; each target row also appears at a lower and a higher gallery index. The duplicates score
    exactly like the target, so only the index rule decides them: the lower copy is ahead, the higher one is not."""
    mod = _host(backend, "ranks")
    q, g = _feats(1000, 512), _feats(6000, 512)
    t = torch.randint(2000, 3000, (1000,), device="cuda")
    g[t - 1000] = g[t]  # copies at lower and higher indices (three disjoint index ranges)
    g[t + 1000] = g[t]
    got = mod.target_ranks(q, g, t)
    own = _host(backend, "similarity").similarity(q, g).double() if backend == "blas" else None
    s = own if own is not None else q.double() @ g.double().t()
    st = s.gather(1, t[:, None])
    idx = torch.arange(g.shape[0], device="cuda")
    if own is not None:  # blas: exact against its own similarity (the same GEMM)
        want = ((s > st) | ((s == st) & (idx[None, :] < t[:, None]))).sum(1)
        assert torch.equal(got, want)
    else:  # triton: within the band of fp32-accumulation ties, and every lower duplicate counted
        lo = (s > st + 1e-5).sum(1)
        hi = (s >= st - 1e-5).sum(1) - 1
        assert ((got >= lo) & (got <= hi)).all()
    assert (got >= 1).all()  # the lower duplicate always counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_similarity_many_gallery_rows(backend):
    """More gallery rows than 65535 tiles of 64 (the old grid-axis limit)."""
    mod = _host(backend, "similarity")
    q, g = _feats(2, 16), _feats(4_300_000, 16)
    s = mod.similarity(q, g)
    want = q.float() @ g.float().t()
    torch.testing.assert_close(s[:, -1000:], want[:, -1000:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet_bf16(backend, max_violation):
    mod = _host(backend, "triplet")
    a, b = _feats(4096, 256), _feats(4096, 256)
    rc, cc, ri, ci = mod.triplet_forward(a, b, 0.2, max_violation)
    s = b.double() @ a.double().t()
    eye = torch.eye(4096, dtype=torch.bool, device="cuda")
    diag = s.diagonal()
    if max_violation:
        neg = s.masked_fill(eye, float("-inf"))
        want_r = (0.2 + neg.max(1).values - diag).clamp(min=0)
    else:
        want_r = (0.2 + s - diag[:, None]).clamp(min=0).masked_fill(eye, 0).sum(1)
    torch.testing.assert_close(rc.double(), want_r, rtol=1e-4, atol=1e-4)
    da, db = mod.triplet_backward(a, b, 0.2, max_violation, ri, ci, 1.0)
    assert torch.isfinite(da).all() and torch.isfinite(db).all()


def test_cuda_graph_on_side_stream(monkeypatch):
    """The loss and retrieval host functions launch on the current stream and never sync: they can be captured in
    a CUDA graph on a side stream, and replaying it gives the eager results."""
    import ccr_fast.backends.blas.gpu as bg
    import ccr_fast.backends.triton.contrastive as tc
    import ccr_fast.backends.triton.topk as tk

    monkeypatch.setattr(bg, "budget_bytes", 1 << 30)  # no memory query inside the capture
    x, y = _feats(2048, 256), _feats(2048, 256)
    scale = torch.tensor(30.0, device="cuda")
    rc = torch.full((2048,), 1 / 4096, device="cuda")

    def step():
        outs = []
        for mod in (bg, tc):
            lr, lc, _, _ = mod.contrastive_forward(x, y, scale, 0, 1, 0, 1, True)
            outs += list(mod.contrastive_backward(x, y, scale, lr, lc, rc, rc, 2 / 4096, 0, 1, 0, 1))
        outs += list(bg.topk(x, y, 10, 0)) + list(tk.topk(x, y, 10, 0))
        return outs

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = [t.clone() for t in step()]  # warm-up: autotuning and the cuBLAS handle happen here
        eager = [t.clone() for t in step()]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(captured, eager)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"output {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["contrastive", "triplet", "topk", "ranks", "similarity"])
def test_probe_passes(backend, family):
    from ccr_fast.backends import probe

    if backend == "blas":
        pytest.importorskip("ccr_fast.backends.blas." + family, reason="blas host module of the op layer")
    ok, why = probe.probe_ok(backend, family, torch.device("cuda"))
    assert ok, why


def test_cuda_backend_built():
    from ccr_fast import _backend

    info = _backend.backends()["cuda"]
    assert info["compiled"] and info["usable"], info["detail"]
