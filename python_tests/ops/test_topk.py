"""Streaming top-K: the CPU kernel and the public ``ccr_fast.retrieval.topk`` vs the stable-sort reference.

Integer-valued fp32 data makes every score exact, so ties are real and indices must match exactly (ties -> lower
gallery index); forced small blocks and gallery splits exercise the streaming and merge paths.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ccr_fast import retrieval
from ccr_fast.backends.cpu import topk as CPU
from ccr_fast.ops import topk as K


def _ints(shape, seed, lo=-2, hi=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=gen).float()


def _stable_reference(q, g, k):
    s = q.double() @ g.double().T
    vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


@pytest.mark.parametrize("Q,G,d,k,block_size,num_splits", [
    (1, 1, 1, 1, 0, 0),        # smallest
    (1, 57, 7, 5, 8, 0),       # one query: automatic gallery split + merge
    (5, 101, 5, 101, 16, 3),   # k = G, forced split
    (40, 37, 3, 1, 0, 0),      # k = 1, many queries
    (19, 300, 9, 17, 1, 0),    # block of one row
    (9, 260, 33, 64, 50, 7),   # uneven splits
])
def test_exact_vs_stable_sort_on_ties(Q, G, d, k, block_size, num_splits):
    q, g = _ints((Q, d), 1), _ints((G, d), 2)
    g[G // 2:G // 2 + 3] = g[0].clone()  # duplicated gallery rows: ties by construction
    vals, idx = CPU.topk(q, g, k, block_size, num_splits)
    rv, ri = _stable_reference(q, g, k)
    assert torch.equal(idx, ri)
    assert torch.equal(vals.double(), rv)
    tv, ti = K.topk_torch(q, g, k)
    assert torch.equal(ti, ri) and torch.equal(tv.double(), rv)


def test_random_fp64_matches_torch_topk():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(13, 31, generator=gen, dtype=torch.float64)
    g = torch.randn(203, 31, generator=gen, dtype=torch.float64)
    vals, idx = retrieval.topk(q, g, 10, block_size=32, backend="cpu")
    rv, ri = torch.topk(q @ g.T, 10, dim=1)  # no ties in random fp64 data
    assert torch.equal(idx, ri)
    torch.testing.assert_close(vals, rv, atol=1e-12, rtol=1e-12)
    assert vals.dtype == torch.float64 and idx.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_and_public_api(dtype):
    q, g = _ints((6, 11), 4).to(dtype), _ints((50, 11), 5).to(dtype)
    for backend in ("cpu", "torch"):
        vals, idx = retrieval.topk(q, g, 7, backend=backend)
        assert vals.dtype == dtype and idx.dtype == torch.int64 and vals.shape == (6, 7)
        rv, ri = _stable_reference(q.float(), g.float(), 7)
        assert torch.equal(idx, ri)
        assert torch.equal(vals.double(), rv.to(dtype).double())


def test_non_contiguous():
    q_big, g_big = _ints((8, 20), 6), _ints((40, 20), 7)
    q, g = q_big[:, ::2], g_big[::2, 1::2]  # column- and row-strided views
    vals, idx = retrieval.topk(q, g, 4, backend="cpu")
    rv, ri = _stable_reference(q, g, 4)
    assert torch.equal(idx, ri) and torch.equal(vals.double(), rv)
    rows = g_big[:, :12]  # row-strided, unit stride along d: passed to the kernel as is
    vals, idx = retrieval.topk(q_big[:, :12], rows, 3, backend="cpu")
    rv, ri = _stable_reference(q_big[:, :12], rows, 3)
    assert torch.equal(idx, ri)


@settings(max_examples=25, deadline=None)
@given(Q=st.integers(1, 9), G=st.integers(1, 70), d=st.integers(1, 9), data=st.data())
def test_property_exact(Q, G, d, data):
    k = data.draw(st.integers(1, G))
    block = data.draw(st.integers(1, 80))
    splits = data.draw(st.integers(0, 5))
    seed = data.draw(st.integers(0, 10_000))
    q, g = _ints((Q, d), seed, -1, 2), _ints((G, d), seed + 1, -1, 2)
    vals, idx = CPU.topk(q, g, k, block, splits)
    rv, ri = _stable_reference(q, g, k)
    assert torch.equal(idx, ri) and torch.equal(vals.double(), rv)
    # every row sorted descending with ascending indices inside runs of equal scores
    assert bool((vals[:, 1:] <= vals[:, :-1]).all())


def test_errors():
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="k must be in"):
        retrieval.topk(q, g, 6)
    with pytest.raises(ValueError, match="k must be in"):
        retrieval.topk(q, g, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        retrieval.topk(q, g, 2.0)
    with pytest.raises(ValueError, match="block_size"):
        retrieval.topk(q, g, 2, block_size=0)
    with pytest.raises(ValueError, match="feature size"):
        retrieval.topk(q, torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="dtype"):
        retrieval.topk(q, g.double(), 2)
    with pytest.raises(ValueError, match="2-D"):
        retrieval.topk(q[0], g, 2)
    with pytest.raises(ValueError, match="non-empty"):
        retrieval.topk(q[:0], g, 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        retrieval.topk(q, torch.where(g > 0, g, torch.tensor(float("nan"))), 2)
    with pytest.raises(TypeError, match="gallery must be a torch.Tensor"):
        retrieval.topk(q, g.numpy(), 2)
    if not torch.cuda.is_available():  # without a GPU, triton on CPU tensors needs the interpreter
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("TRITON_INTERPRET", raising=False)
            with pytest.raises(RuntimeError, match="triton"):
                retrieval.topk(q, g, 2, backend="triton")


def test_opcheck_and_compile():
    q, g = _ints((4, 6), 8), _ints((30, 6), 9)
    torch.library.opcheck(torch.ops.ccr_fast.topk.default, (q, g, 5, 8, "cpu"))
    fn = torch.compile(lambda x, y: retrieval.topk(x, y, 5, block_size=8, backend="cpu"), backend="aot_eager",
                       fullgraph=True)
    vals, idx = fn(q, g)
    rv, ri = _stable_reference(q, g, 5)
    assert torch.equal(idx, ri) and torch.equal(vals.double(), rv)


# ---------------------------------------------------------------------------------------------------------------
# Conformance: every backend's host function against the stable-sort reference (exact scores, real ties)
# ---------------------------------------------------------------------------------------------------------------

from _backends import CONTRACT_BACKENDS, device_of  # noqa: E402
from ccr_fast.ops import dispatch  # noqa: E402


@pytest.mark.parametrize("backend", CONTRACT_BACKENDS)
@pytest.mark.parametrize("Q,G,d,k", [(1, 1, 1, 1), (1, 57, 7, 5), (5, 101, 5, 101), (40, 37, 3, 1),
                                     (9, 1300, 33, 64), (300, 2100, 8, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_contract_every_backend(backend, Q, G, d, k, dtype):
    dev = device_of(backend)
    q, g = _ints((Q, d), 3), _ints((G, d), 4)  # small integers: exact in fp16 and in every accumulation
    g[G // 2:G // 2 + 3] = g[0].clone()
    vals, idx = dispatch.host(K.HOST, backend, "topk")(q.to(dtype).to(dev), g.to(dtype).to(dev), k, 0)
    rv, ri = _stable_reference(q, g, k)
    assert torch.equal(idx.cpu(), ri)
    assert torch.equal(vals.cpu().double(), rv)


@pytest.mark.parametrize("num_splits", [0, 2, 7])
@pytest.mark.parametrize("block", [0, 1, 50])
def test_blas_splits_and_blocks(num_splits, block):
    from ccr_fast.backends.blas import topk as BL

    q, g = _ints((17, 9), 5), _ints((700, 9), 6)
    vals, idx = BL.topk(q, g, 20, block, num_splits=num_splits)
    rv, ri = _stable_reference(q, g, 20)
    assert torch.equal(idx, ri) and torch.equal(vals.double(), rv)
    qd, gd = q.double() / 4, g.double() / 8  # float64, still exact (powers of two)
    vals, idx = BL.topk(qd, gd, 20, block, num_splits=num_splits)
    rv, ri = _stable_reference(qd, gd, 20)
    assert torch.equal(idx, ri) and torch.equal(vals, rv)
