"""Target-rank counting: the CPU kernel and ``ccr_fast.retrieval.target_ranks`` vs a stable-sort reference.

rank(t) = position of t in the stable descending sort of the query's scores. Integer-valued fp32 data makes the
scores exact, so ties (duplicated gallery rows) are real and ranks must match exactly.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ccr_fast import retrieval
from ccr_fast.backends.cpu import ranks as CPU
from ccr_fast.ops import ranks as R


def _ints(shape, seed, lo=-2, hi=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=gen).float()


def _sort_reference(q, g, targets):
    """Best rank and all ranks from the position in a stable descending argsort (float64 scores)."""
    order = torch.sort(q.double() @ g.double().T, dim=1, descending=True, stable=True).indices
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(g.shape[0]).expand_as(order).contiguous())
    all_r = torch.where(targets >= 0, pos.gather(1, targets.clamp_min(0)), torch.full_like(targets, -1))
    best = torch.where(all_r >= 0, all_r, torch.full_like(all_r, 1 << 40)).min(dim=1).values
    return torch.where(best == 1 << 40, torch.full_like(best, -1), best), all_r


def _targets(Q, G, T, seed):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, G, (Q, T), generator=gen)
    t[:, 0] = torch.randint(0, G, (Q,), generator=gen)
    if Q > 2:
        t[1] = -1  # a row without any valid target -> -1
    return t


@pytest.mark.parametrize("Q,G,d,T,num_splits", [
    (1, 1, 1, 1, 0),
    (1, 300, 7, 3, 0),     # one query: automatic gallery split (counts summed)
    (37, 101, 5, 1, 0),    # many queries
    (9, 700, 33, 5, 3),    # forced uneven split, gallery > one 256-row block
    (20, 64, 3, 4, 1),
])
def test_exact_vs_stable_sort_on_ties(Q, G, d, T, num_splits):
    q, g = _ints((Q, d), 1), _ints((G, d), 2)
    g[G // 2:G // 2 + 3] = g[0].clone()  # duplicated gallery rows
    t = _targets(Q, G, T, 3)
    best, all_r = CPU.target_ranks(q, g, t, True, num_splits)
    rb, ra = _sort_reference(q, g, t)
    assert torch.equal(all_r, ra) and torch.equal(best, rb)
    assert torch.equal(CPU.target_ranks(q, g, t), rb)
    tb, ta = R.target_ranks_torch(q, g, t, True)
    assert torch.equal(ta, ra) and torch.equal(tb, rb)


def test_hand_case_ties_go_to_lower_index():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.5, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # scores 0.5, 1, 1, 2
    assert retrieval.target_ranks(q, g, torch.tensor([2]), backend="cpu").tolist() == [2]
    assert retrieval.target_ranks(q, g, torch.tensor([1]), backend="cpu").tolist() == [1]
    assert retrieval.target_ranks(q, g, torch.tensor([0]), backend="cpu").tolist() == [3]
    assert retrieval.target_ranks(q, g, torch.tensor([3]), backend="cpu").tolist() == [0]
    # multi-target: the best rank among {0, 2} is 2
    assert retrieval.target_ranks(q, g, torch.tensor([[0, 2, -1]]), backend="cpu").tolist() == [2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_public_api(dtype):
    q, g = _ints((10, 9), 4).to(dtype), _ints((80, 9), 5).to(dtype)
    t = _targets(10, 80, 3, 6)
    rb, _ = _sort_reference(q.float(), g.float(), t)
    for backend in ("cpu", "torch"):
        r = retrieval.target_ranks(q, g, t, backend=backend)
        assert r.dtype == torch.int64 and torch.equal(r, rb)
    r1 = retrieval.target_ranks(q, g, t[:, 0], backend="cpu")  # 1-D targets
    assert torch.equal(r1, _sort_reference(q.float(), g.float(), t[:, :1])[0])


def test_random_fp64_and_non_contiguous():
    gen = torch.Generator().manual_seed(7)
    q_big = torch.randn(12, 40, generator=gen, dtype=torch.float64)
    g_big = torch.randn(150, 40, generator=gen, dtype=torch.float64)
    q, g = q_big[:, ::2], g_big[::3, 1::2]
    t = _targets(12, g.shape[0], 2, 8)
    assert torch.equal(retrieval.target_ranks(q, g, t, backend="cpu"), _sort_reference(q, g, t)[0])
    rows = g_big[:, :25]  # row-strided view, passed to the kernel as is
    t2 = _targets(12, 150, 2, 9)
    assert torch.equal(retrieval.target_ranks(q_big[:, :25], rows, t2, backend="cpu"),
                       _sort_reference(q_big[:, :25], rows, t2)[0])


@settings(max_examples=25, deadline=None)
@given(Q=st.integers(1, 8), G=st.integers(1, 600), d=st.integers(1, 6), T=st.integers(1, 4),
       splits=st.integers(0, 4), seed=st.integers(0, 10_000))
def test_property_exact(Q, G, d, T, splits, seed):
    q, g = _ints((Q, d), seed, -1, 2), _ints((G, d), seed + 1, -1, 2)
    t = torch.randint(-1, G, (Q, T), generator=torch.Generator().manual_seed(seed + 2))
    best, all_r = CPU.target_ranks(q, g, t, True, splits)
    rb, ra = _sort_reference(q, g, t)
    assert torch.equal(all_r, ra) and torch.equal(best, rb)


def test_errors():
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"targets must be gallery indices in \[0, G=5\)"):
        retrieval.target_ranks(q, g, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="targets must be gallery indices"):
        retrieval.target_ranks(q, g, torch.tensor([0, -2, 1]))
    with pytest.raises(ValueError, match="integer"):
        retrieval.target_ranks(q, g, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"targets must have shape \[Q=3\]"):
        retrieval.target_ranks(q, g, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        retrieval.target_ranks(q, g, [0, 1, 2])
    with pytest.raises(ValueError, match="feature size"):
        retrieval.target_ranks(q, torch.randn(5, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        retrieval.target_ranks(q.masked_fill(q > 1, float("inf")).fill_(float("inf")), g, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="cuda"):
        retrieval.target_ranks(q, g, torch.tensor([0, 1, 2]), backend="cuda")
    with pytest.raises(ValueError, match="targets must be in"):  # the kernel checks too
        CPU.target_ranks(q, g, torch.tensor([[0], [7], [1]]))


def test_opcheck_and_compile():
    q, g = _ints((4, 6), 8), _ints((30, 6), 9)
    t = _targets(4, 30, 2, 10)
    torch.library.opcheck(torch.ops.ccr_fast.target_ranks.default, (q, g, t, "cpu"))
    torch.library.opcheck(torch.ops.ccr_fast.target_ranks_all.default, (q, g, t, "cpu"))
    fn = torch.compile(lambda x, y, z: retrieval.target_ranks(x, y, z, backend="cpu"), backend="aot_eager",
                       fullgraph=True)
    assert torch.equal(fn(q, g, t), _sort_reference(q, g, t)[0])


def test_target_never_outranks_itself_fp32():
    # random fp32 scores round differently in different code paths; the kernel computes the target's score with
    # the same arithmetic as the streamed ones, so exact duplicates of the target row tie with it: the copy at a
    # lower index counts, the copy at a higher index does not
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(3, 37, generator=gen)
    g = torch.randn(530, 37, generator=gen)
    g[5] = g[301].clone()
    g[402] = g[301].clone()
    s64 = q.double() @ g.double().T
    dup = torch.zeros(530, dtype=torch.bool)
    dup[[5, 301, 402]] = True
    expected = (s64[:, ~dup] > s64[:, 301:302]).sum(dim=1) + 1
    for splits in (0, 1, 3):
        got = CPU.target_ranks(q, g, torch.full((3, 1), 301), False, splits)
        assert torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------------------------
# Conformance: every backend's host function against the float64 reference (exact scores, real ties)
# ---------------------------------------------------------------------------------------------------------------

from _backends import CONTRACT_BACKENDS, device_of  # noqa: E402
from ccr_fast.ops import dispatch  # noqa: E402


@pytest.mark.parametrize("backend", CONTRACT_BACKENDS)
@pytest.mark.parametrize("Q,G,d,T", [(1, 1, 1, 1), (7, 50, 5, 3), (300, 1500, 9, 2), (3, 2600, 4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_contract_every_backend(backend, Q, G, d, T, dtype):
    dev = device_of(backend)
    gen = torch.Generator().manual_seed(Q + G)
    q = torch.randint(-2, 3, (Q, d), generator=gen).float()
    g = torch.randint(-2, 3, (G, d), generator=gen).float()
    t = torch.randint(-1, G, (Q, T), generator=gen)
    t[:, 0] = torch.randint(0, G, (Q,), generator=gen)
    ref = R.target_ranks_torch(q.double(), g.double(), t)
    got = dispatch.host(R.HOST, backend, "target_ranks")(q.to(dtype).to(dev), g.to(dtype).to(dev), t.to(dev))
    assert torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("num_splits", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blas_exact_for_its_own_scores(num_splits, dtype):
    """Random (non-integer) data: the blas ranks equal counting on the blas scores themselves (same GEMM)."""
    from ccr_fast.backends.blas import ranks as BL
    from ccr_fast.backends.blas import similarity as BS

    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(40, 16, generator=gen, dtype=dtype), torch.randn(3000, 16, generator=gen, dtype=dtype)
    g[100:104] = g[7]  # exact duplicates: ties by index
    t = torch.randint(0, 3000, (40, 3), generator=gen)
    t[0] = torch.tensor([7, 101, -1])
    best, all_r = BL.target_ranks(q, g, t, True, num_splits)
    s = BS.similarity(q, g)
    cols = torch.arange(3000)
    for i in range(40):
        for j in range(3):
            c = int(t[i, j])
            if c < 0:
                assert all_r[i, j] == -1
                continue
            st = s[i, c]
            assert int(all_r[i, j]) == int(((s[i] > st) | ((s[i] == st) & (cols < c))).sum())
    ref = R.target_ranks_torch(q.double(), g.double(), t)
    assert (best != ref).float().mean() <= 0.05  # float64 and the GEMM may order near-ties differently
