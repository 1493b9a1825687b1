"""Float64-exact top-k and ranks on every backend (docs/exactness.md), against a float64 reference with ties to
the lower index, on adversarial galleries: exact duplicate rows, twins one ulp apart (equal or swapped in fp32,
ordered in float64), a tight cluster (forces the widening and float64 fallback paths), large norms (and norms
whose fp32 scores overflow), d up to 1024, k = G."""
import pytest
import torch

from ccr_fast import retrieval
from ccr_fast.ops import exact

from _backends import device_of  # noqa: E402

BACKENDS = ["torch", "cpu", "blas", pytest.param("triton", marks=pytest.mark.triton),
            pytest.param("cuda", marks=pytest.mark.gpu)]


def _unit(n, d, gen):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)


def ref_topk(q, g, k):
    s = q.double() @ g.double().T
    v, i = torch.sort(s, dim=1, descending=True, stable=True)
    return v[:, :k], i[:, :k]


def ref_ranks(q, g, t):
    s = q.double() @ g.double().T
    st = s.gather(1, t.clamp_min(0))
    c = torch.arange(g.shape[0])
    above = ((s[:, None, :] > st[:, :, None]) | ((s[:, None, :] == st[:, :, None]) & (c < t[:, :, None]))).sum(-1)
    return torch.where(t >= 0, above, torch.full_like(above, -1))


def twins(q, n_pairs, d, gen):
    """Rows 2i, 2i+1 equal except one element of 2i+1 moved one ulp in the direction that raises its float64
    score: the higher float64 score sits at the higher index, so an fp32 tie resolved by index is wrong."""
    base = _unit(n_pairs, d, gen)
    g = base.repeat_interleave(2, dim=0).clone()
    j = torch.randint(0, d, (n_pairs,), generator=gen)
    for p in range(n_pairs):
        jj = int(j[p])
        up = float(q[0, jj]) > 0
        g[2 * p + 1, jj] = torch.nextafter(g[2 * p + 1, jj], torch.tensor(float("inf") if up else float("-inf")))
    return g


def _args(backend, *ts):
    dev = device_of(backend)
    return [t.to(dev) for t in ts]


def _small(backend):
    return backend == "triton" and not torch.cuda.is_available()  # the interpreter is slow: small shapes


def _check_topk(backend, q, g, k):
    qq, gg = _args(backend, q, g)
    s, i = retrieval.topk(qq, gg, k, backend=backend)
    rv, ri = ref_topk(q, g, k)
    assert torch.equal(i.cpu(), ri)
    assert torch.equal(s.cpu(), rv.to(q.dtype))  # the float64 scores, rounded to the input dtype


def _check_ranks(backend, q, g, t):
    qq, gg, tt = _args(backend, q, g, t)
    ref = ref_ranks(q, g, t)
    best = torch.where(ref >= 0, ref, torch.full_like(ref, 1 << 62)).min(1).values
    best = torch.where(best == 1 << 62, torch.full_like(best, -1), best)
    assert torch.equal(retrieval.target_ranks(qq, gg, tt, backend=backend).cpu(), best)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_rows(backend):
    gen = torch.Generator().manual_seed(0)
    G, d, Q = (40, 16, 5) if _small(backend) else (700, 64, 37)
    q, g = _unit(Q, d, gen), _unit(G, d, gen)
    for a, b in ((3, 4), (3, G - 1), (10, 11), (10, 12), (G // 2, 1)):
        g[b] = g[a]
    t = torch.tensor([[3, 4, G - 1]]).repeat(Q, 1)
    t[::2, 0] = -1
    _check_topk(backend, q, g, 10)
    _check_topk(backend, q, g, G)  # k = G: every duplicate in index order
    _check_ranks(backend, q, g, t)
    for col in range(3):  # the rank of each duplicate copy
        _check_ranks(backend, q, g, t[:, col:col + 1].clamp_min(0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_twins_one_ulp_apart(backend):
    gen = torch.Generator().manual_seed(1)
    pairs, d = (20, 32) if _small(backend) else (400, 256)
    q = _unit(1, d, gen)
    g = twins(q, pairs, d, gen)
    s64 = q.double() @ g.double().T
    assert bool((s64[0, 1::2] > s64[0, 0::2]).all())  # constructed: the twin at the higher index is higher
    s32 = q @ g.T
    assert bool((s32[0, 1::2] <= s32[0, 0::2]).any())  # ... and fp32 ties or swaps some of them
    _check_topk(backend, q, g, 2 * pairs)
    _check_topk(backend, q, g, 7)
    t = torch.arange(0, 2 * pairs, 2)[:, None][: 8]
    _check_ranks(backend, q.expand(t.shape[0], -1), g, t)
    _check_ranks(backend, q.expand(t.shape[0], -1), g, t + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tight_cluster_widens_and_falls_back(backend):
    """Every row within ~1e-6 of one direction: the fp32 error band holds most of the gallery, so the candidate
    list is widened and then settled by the float64 pass."""
    gen = torch.Generator().manual_seed(2)
    G, d, Q = (64, 16, 3) if _small(backend) else (3000, 128, 6)
    base = _unit(1, d, gen)
    g = base + 1e-6 * torch.randn(G, d, generator=gen)
    q = base + 1e-3 * torch.randn(Q, d, generator=gen)
    _check_topk(backend, q, g, 5)
    _check_ranks(backend, q, g, torch.randint(0, G, (Q, 2), generator=gen))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e15, 3e18, 1e-20])
def test_large_and_tiny_norms(backend, scale):
    """1e15: large finite fp32 scores; 3e18: ||q|| ||g|| ~ 1e38, fp32 scores may overflow (settled in float64);
    1e-20: scores below the fp32 normal range (the subnormal term of the bound)."""
    gen = torch.Generator().manual_seed(3)
    G, d, Q = (30, 16, 2) if _small(backend) else (500, 64, 9)
    q, g = _unit(Q, d, gen) * scale, _unit(G, d, gen) * scale
    g[5] = g[2]
    _check_topk(backend, q, g, 4)
    _check_ranks(backend, q, g, torch.tensor([[2, 5]]).repeat(Q, 1))


@pytest.mark.parametrize("backend", ["torch", "cpu", "blas", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_d1024_random(backend):
    gen = torch.Generator().manual_seed(4)
    q, g = _unit(33, 1024, gen), _unit(2100, 1024, gen)
    g[77] = g[1000]
    _check_topk(backend, q, g, 16)
    _check_ranks(backend, q, g, torch.randint(0, 2100, (33, 3), generator=gen))


@pytest.mark.parametrize("backend", ["cpu", "blas", "torch"])
def test_fp64_and_half_inputs(backend):
    gen = torch.Generator().manual_seed(5)
    q, g = _unit(7, 24, gen), _unit(300, 24, gen)
    g[9] = g[4]
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        qd, gd = q.to(dtype), g.to(dtype)
        s, i = retrieval.topk(qd, gd, 12, backend=backend)
        rv, ri = ref_topk(qd, gd, 12)
        assert torch.equal(i, ri) and s.dtype == dtype
        _check_ranks(backend, qd, gd, torch.tensor([[4, 9]]).repeat(7, 1))


def test_bf16_scorer_bound_holds():
    """The bf16 candidate scorer of blas: |fp32 score − float64 score| <= E(q) for every row (when present)."""
    from ccr_fast.backends.blas import topk as BT

    gen = torch.Generator().manual_seed(6)
    q, g = torch.randn(40, 200, generator=gen) * 3, torch.randn(5000, 200, generator=gen)
    res = BT.topk_candidates(q, g, 5000)
    if res is None:
        pytest.skip("no bf16 GEMM on this CPU / torch build")
    s, i, err = res
    s64 = (q.double() @ g.double().T).gather(1, i)
    gap = (s.double() - s64).abs().max(dim=1).values
    assert bool((gap <= err).all())
    assert float((gap / err).max()) > 1e-3  # and the bound is not vacuous


def test_bound_of_the_generic_model_holds_for_fp32_scores():
    gen = torch.Generator().manual_seed(7)
    q, g = torch.randn(20, 512, generator=gen), torch.randn(3000, 512, generator=gen) * 50
    err = exact.generic_bound(q, g, **exact.error_units("cpu", q.device, q.dtype))
    gap = ((q @ g.T).double() - q.double() @ g.double().T).abs().max(dim=1).values
    assert bool((gap <= err).all())


def test_rescore_equal_rows_bitwise_and_matches_float64():
    gen = torch.Generator().manual_seed(8)
    q, g = torch.randn(4, 301, generator=gen), torch.randn(50, 301, generator=gen)
    g[30] = g[3]
    s = exact.rescore(q, g, torch.arange(50).expand(4, -1))
    assert torch.equal(s[:, 30], s[:, 3])
    torch.testing.assert_close(s, q.double() @ g.double().T, rtol=1e-14, atol=1e-13)
    s_ref, i_ref = ref_topk(q, g, 50)
    s_all, i_all = exact.full_topk64(q, g, 50)
    assert torch.equal(i_all, i_ref)


def test_gpu_bf16_scorer_logic_on_cpu():
    """The GPU backends' bf16 candidate scorer, run on CPU with an fp32 GEMM of the bf16 values (bf16 products are
    exact in fp32, so the arithmetic model is the same): its bound holds and the settled answer is exact, for an fp32
    and for a bf16-rounded output."""
    from ccr_fast.backends._bf16_candidates import torch_bf16_candidates

    gen = torch.Generator().manual_seed(9)
    q = _unit(1, 128, gen)
    g = torch.cat([twins(q, 150, 128, gen), _unit(700, 128, gen)])
    q = torch.cat([q, _unit(6, 128, gen)])
    for out_bf16 in (False, True):
        def mm(a, b, out_bf16=out_bf16):
            s = a.float() @ b.float()
            return (s.bfloat16().float(), 2.0 ** -8) if out_bf16 else (s, 0.0)

        s, i, err = torch_bf16_candidates(q, g, g.shape[0], block_size=256, mm=mm)
        s64 = (q.double() @ g.double().T).gather(1, i)
        assert bool(((s.double() - s64).abs().max(dim=1).values <= err).all())
        got = exact.exact_topk(q, g, 9, lambda qs, kp: torch_bf16_candidates(qs, g, kp, block_size=256, mm=mm), 12)
        rv, ri = ref_topk(q, g, 9)
        assert torch.equal(got[1], ri)
        torch.testing.assert_close(got[0], rv, rtol=1e-14, atol=1e-15)  # float64 sums in another order
