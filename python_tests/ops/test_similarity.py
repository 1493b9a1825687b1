"""Similarity op (``scores = q gᵀ``) for the "cpu" and "torch" backends vs a float64 reference."""
from __future__ import annotations

import pytest
import torch

from ccr_fast.ops import similarity as S

from _backends import BACKENDS  # noqa: E402


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Q,G,d", [(1, 1, 1), (1, 7, 3), (5, 1, 9), (65, 257, 17), (130, 300, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_matches_reference(backend, Q, G, d, dtype):
    q, g = torch.randn(Q, d, dtype=dtype), torch.randn(G, d, dtype=dtype)
    out = S.similarity(q, g, backend=backend)
    assert out.dtype == dtype and out.shape == (Q, G)
    ref = q.double() @ g.double().T
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * d ** 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_similarity_half_inputs_fp32_accumulation(backend, dtype):
    q, g = torch.randn(17, 40, dtype=dtype), torch.randn(23, 40, dtype=dtype)
    out = S.similarity(q, g, backend=backend)
    assert out.dtype == dtype
    ref = (q.double() @ g.double().T).to(dtype)  # exact products, one rounding at the end
    # one rounding of an fp32-accumulated value: at most one ulp of the output dtype away
    torch.testing.assert_close(out.double(), ref.double(), rtol=2 * torch.finfo(dtype).eps, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_similarity_non_contiguous(backend):
    big = torch.randn(12, 30)
    q = big[::2, 5:16]  # row stride 60, unit stride along d
    g = torch.randn(11, 12).T  # [12, 11] with stride along d != 1: made contiguous
    assert q.stride() == (60, 1) and g.stride(1) != 1
    out = S.similarity(q, g, backend=backend)
    torch.testing.assert_close(out.double(), q.double() @ g.double().T, rtol=1e-5, atol=1e-5)


def test_similarity_autograd_compile_opcheck():
    q = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: S.similarity(a, b, backend="cpu"), (q, g))
    torch.library.opcheck(torch.ops.ccr_fast.similarity.default, (q, g, "cpu"))
    qf, gf = q.detach().float(), g.detach().float()
    fn = torch.compile(lambda a, b: S.similarity(a, b, backend="cpu"), fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(qf, gf), qf @ gf.T, rtol=1e-5, atol=1e-5)


def test_similarity_autocast():
    q, g = torch.randn(4, 8), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = S.similarity(q, g.to(torch.bfloat16), backend="cpu")
    assert out.dtype == torch.bfloat16
    ref = q.to(torch.bfloat16).double() @ g.to(torch.bfloat16).double().T
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


def test_similarity_errors():
    q = torch.randn(3, 4)
    with pytest.raises(TypeError, match="queries"):
        S.similarity([1.0], q)
    with pytest.raises(ValueError, match="gallery.*2-D"):
        S.similarity(q, q[0])
    with pytest.raises(ValueError, match="feature size 4"):
        S.similarity(q, torch.randn(3, 5))
    with pytest.raises(ValueError, match="same dtype"):
        S.similarity(q, q.double())
    with pytest.raises(ValueError, match="non-empty"):
        S.similarity(q[:0], q)
    with pytest.raises(RuntimeError, match="cuda"):
        S.similarity(q, q, backend="cuda")


from _backends import CONTRACT_BACKENDS, device_of  # noqa: E402
from ccr_fast.ops import dispatch  # noqa: E402


@pytest.mark.parametrize("backend", CONTRACT_BACKENDS)
@pytest.mark.parametrize("Q,G,d", [(1, 1, 1), (7, 300, 33), (260, 1100, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_contract_every_backend(backend, Q, G, d, dtype):
    dev = device_of(backend)
    q = torch.randn(Q, d, dtype=torch.float64).to(dtype).double()
    g = torch.randn(G, d, dtype=torch.float64).to(dtype).double()
    out = dispatch.host(S.HOST, backend, "similarity")(q.to(dtype).to(dev), g.to(dtype).to(dev))
    torch.testing.assert_close(out.cpu().double(), q @ g.T, rtol=1e-4, atol=1e-4)
