"""Tests of the CUDA backend host functions (ccr_fast/backends/cuda/, csrc/cuda/).

The GPU tests (``@pytest.mark.gpu``) compare every kernel with a float64 reference written here straight from
docs/interop.md, evaluated on the SAME dtype-rounded inputs (bf16/fp16 values upcast exactly), so the only
difference left is the kernels' fp32 accumulation: one tolerance (``_tol``) serves every input dtype. Top-K,
ranks and argmax indices are compared exactly on integer-valued inputs, whose fp32 scores are exact whatever the
summation order (ties included). Host-side tests (plans, workspace sizes, argument checks) run without a GPU.
"""
import math

import pytest
import torch

from ccr_fast import _backend
from types import SimpleNamespace

from ccr_fast.backends.cuda import contrastive as _cc, ranks as _cr, similarity as _cs, topk as _ck, triplet as _ct

_cuda = SimpleNamespace(contrastive_forward=_cc.contrastive_forward, contrastive_backward=_cc.contrastive_backward,
                        triplet_forward=_ct.triplet_forward, triplet_backward=_ct.triplet_backward, topk=_ck.topk,
                        target_ranks=_cr.target_ranks, similarity=_cs.similarity)

C = _backend._C
with_cuda = bool(C is not None and getattr(C, "with_cuda", False))
needs_cuda_build = pytest.mark.skipif(not with_cuda, reason="extension built without CUDA")
gpu = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _rand(n, d, dtype, *, unit=True, device="cuda"):
    x = torch.randn(n, d, dtype=torch.float64)
    if unit:
        x = x / x.norm(dim=1, keepdim=True)
    return x.to(dtype).to(device)


def _ints(n, d, dtype=torch.float32, lo=-2, hi=3, device="cuda"):
    """Small integers: every fp32 dot product is exact, so ties are real and comparisons exact."""
    return torch.randint(lo, hi, (n, d)).to(dtype).to(device)


def _tol(d, scale=1.0):
    # fp32 accumulation of d products of unit-norm rows, then times scale: error ~ d * 2^-24 * scale
    return 1e-5 + 4e-7 * d * max(1.0, abs(scale))


# ------------------------------------------------------------------------------------------ float64 references
def _pos_mask(M, N, ro, rd, co, cd):
    r = torch.arange(M).unsqueeze(1)
    c = torch.arange(N).unsqueeze(0)
    return (r + ro) // rd == (c + co) // cd


def ref_contrastive_forward(x, y, scale, ro, rd, co, cd):
    Z = scale * x.double().cpu() @ y.double().cpu().T
    P = _pos_mask(*Z.shape, ro, rd, co, cd)
    return (Z.logsumexp(1), Z.logsumexp(0), (Z * P).sum(1), (Z * P).sum(0))


def ref_contrastive_backward(x, y, scale, lse_r, lse_c, rc, cc, w_pos, ro, rd, co, cd):
    X, Y = x.double().cpu(), y.double().cpu()
    S = X @ Y.T
    Z = scale * S
    P = _pos_mask(*Z.shape, ro, rd, co, cd).double()
    dZ = torch.zeros_like(Z)
    rc, cc = rc.double().cpu(), cc.double().cpu()
    dZ += rc[:, None] * torch.exp(Z - lse_r.double().cpu()[:, None])
    if bool((cc != 0).any()):
        dZ += cc[None, :] * torch.exp(Z - lse_c.double().cpu()[None, :])
    dZ -= w_pos * P
    return scale * dZ @ Y, scale * dZ.T @ X, (dZ * S).sum()


def ref_triplet(a, b, margin, max_violation):
    """Loss sum(row_cost + col_cost) in float64 (autograd-able) and the hardest-negative indices."""
    S = b @ a.T
    B = S.shape[0]
    diag = S.diagonal()
    eye = torch.eye(B, dtype=torch.bool)
    if max_violation:
        Sm = S.masked_fill(eye, -math.inf)
        # ties -> lower index: argmax of a stable descending sort
        ri = torch.sort(Sm, dim=1, descending=True, stable=True).indices[:, 0]
        ci = torch.sort(Sm, dim=0, descending=True, stable=True).indices[0, :]
        rcost = (margin + Sm.gather(1, ri[:, None])[:, 0] - diag).clamp(min=0)
        ccost = (margin + Sm.gather(0, ci[None, :])[0] - diag).clamp(min=0)
        return rcost, ccost, ri, ci
    rcost = ((margin + S - diag[:, None]).clamp(min=0).masked_fill(eye, 0)).sum(1)
    ccost = ((margin + S - diag[None, :]).clamp(min=0).masked_fill(eye, 0)).sum(0)
    return rcost, ccost, None, None


def ref_topk(q, g, k):
    S = q.double().cpu() @ g.double().cpu().T
    o = torch.sort(S, dim=1, descending=True, stable=True)
    return o.values[:, :k], o.indices[:, :k]


def ref_ranks(q, g, targets):
    S = q.double().cpu() @ g.double().cpu().T
    Q, G = S.shape
    targets = targets.cpu()
    all_r = torch.full(targets.shape, -1, dtype=torch.int64)
    cols = torch.arange(G)
    for r in range(Q):
        for t in range(targets.shape[1]):
            tg = int(targets[r, t])
            if tg < 0:
                continue
            st = S[r, tg]
            all_r[r, t] = int(((S[r] > st) | ((S[r] == st) & (cols < tg))).sum())
    mins = torch.where(all_r < 0, torch.iinfo(torch.int64).max, all_r).min(1).values
    mins[mins == torch.iinfo(torch.int64).max] = -1
    return mins, all_r


# ------------------------------------------------------------------------------------------ host-side checks
def test_cpu_tensors_rejected_with_named_argument():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="q must be a CUDA tensor"):
        _cuda.topk(q, q, 1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        _cuda.contrastive_forward([1.0], q, None, 0, 1, 0, 1, True)


@needs_cuda_build
def test_backends_report_cuda_compiled():
    info = _backend.backends()["cuda"]
    assert info["compiled"] is True
    assert info["usable"] == torch.cuda.is_available()


@needs_cuda_build
def test_plans_and_workspace_sizes():
    # splits never exceed the gallery tiles, each split is non-empty, and forcing works
    for Q, G, k in [(1, 1, 1), (5, 100, 7), (1000, 10**6, 10), (64, 1500, 1024), (3, 130, 3)]:
        splits, per = C.topk_cuda_plan(Q, G, k)
        tiles = -(-G // 64)
        assert 1 <= splits <= tiles and (splits - 1) * per < tiles <= splits * per
        assert C.topk_workspace_bytes(Q, G, k) >= splits * Q * 2 * k * 8
    assert C.topk_cuda_plan(10, 1000, 5, num_splits=4)[0] == 4
    assert C.topk_cuda_plan(10, 1000, 5, num_splits=100)[0] == 16  # capped at the 16 tiles
    assert C.topk_cuda_plan(10, 1000, 5, block_size=600)[0] <= 2  # >= 600 rows per split
    assert C.contrastive_forward_workspace_bytes(7, 9, True) > 0
    assert C.contrastive_backward_workspace_bytes(7, 200, 5, num_splits=2) >= 2 * 7 * 5 * 4
    assert C.triplet_forward_workspace_bytes(5, True) > 0
    assert C.triplet_backward_workspace_bytes(5, 3, False, num_splits=1) > 0
    assert C.target_ranks_workspace_bytes(4, 100, 2) >= 4 * 2 * 4 * 2


# ------------------------------------------------------------------------------------------ GPU: contrastive
CONTRASTIVE_CASES = [  # M, N, d, (row_off, row_div, col_off, col_div)
    (1, 1, 1, (0, 1, 0, 1)),
    (7, 7, 5, (0, 1, 0, 1)),
    (65, 130, 33, (0, 1, 0, 2)),       # 1-to-K, K=2, sizes not multiples of the tile
    (40, 400, 64, (0, 1, 0, 10)),      # K=10
    (97, 300, 31, (64, 1, 0, 1)),      # open_clip local loss on rank 1 with b=64 (columns all-gathered)
    (130, 70, 16, (0, 2, 0, 1)),
]


@gpu
@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONTRASTIVE_CASES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("num_splits", [0, 3])
def test_contrastive_forward(dtype, case, scale, num_splits):
    M, N, d, grp = case
    x, y = _rand(M, d, dtype), _rand(N, d, dtype)
    sc = torch.tensor(scale, device="cuda")
    out = _cuda.contrastive_forward(x, y, sc, *grp, True, num_splits=num_splits)
    ref = ref_contrastive_forward(x, y, scale, *grp)
    tol = _tol(d, scale)
    for name, o, r in zip(("lse_row", "lse_col", "pos_row", "pos_col"), out, ref):
        assert o.dtype == torch.float32 and torch.isfinite(o).all(), name
        torch.testing.assert_close(o.double().cpu(), r, atol=tol * max(1, grp[3], grp[1]), rtol=1e-5, msg=name)
    # compute_col=False still gives lse_row and both positive sums
    o2 = _cuda.contrastive_forward(x, y, sc, *grp, False, num_splits=num_splits)
    torch.testing.assert_close(o2[0], out[0], atol=0, rtol=0)
    torch.testing.assert_close(o2[3].double().cpu(), ref[3], atol=tol * max(1, grp[1]), rtol=1e-5)


@gpu
@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONTRASTIVE_CASES)
@pytest.mark.parametrize("num_splits", [0, 2])
def test_contrastive_backward(dtype, case, num_splits):
    M, N, d, grp = case
    scale = 30.0
    x, y = _rand(M, d, dtype), _rand(N, d, dtype)
    sc = torch.tensor(scale, device="cuda")
    lse_r, lse_c, _, _ = _cuda.contrastive_forward(x, y, sc, *grp, True)
    rc = torch.rand(M, device="cuda") / M
    cc = torch.rand(N, device="cuda") / N
    w_pos = 0.37
    dx, dy, ds = _cuda.contrastive_backward(x, y, sc, lse_r, lse_c, rc, cc, w_pos, *grp, num_splits=num_splits)
    rdx, rdy, rds = ref_contrastive_backward(x, y, scale, lse_r, lse_c, rc, cc, w_pos, *grp)
    tol = _tol(max(d, M, N), scale)
    torch.testing.assert_close(dx.double().cpu(), rdx, atol=tol, rtol=1e-4)
    torch.testing.assert_close(dy.double().cpu(), rdy, atol=tol, rtol=1e-4)
    torch.testing.assert_close(ds.double().cpu(), rds, atol=tol, rtol=1e-4)


@gpu
@needs_cuda_build
def test_contrastive_backward_row_only_ignores_unset_lse_col():
    """col_coef == 0 must never read lse_col (here zeros, so exp(100 - 0) would overflow)."""
    M, N, d, scale = 33, 47, 8, 100.0
    x, y = _rand(M, d, torch.float32), _rand(N, d, torch.float32)
    sc = torch.tensor(scale, device="cuda")
    lse_r, lse_c, _, _ = _cuda.contrastive_forward(x, y, sc, 0, 1, 0, 1, False)
    assert bool((lse_c == 0).all())
    rc, cc = torch.full((M,), 1.0 / M, device="cuda"), torch.zeros(N, device="cuda")
    dx, dy, ds = _cuda.contrastive_backward(x, y, sc, lse_r, lse_c, rc, cc, 1.0 / M, 0, 1, 0, 1)
    rdx, rdy, rds = ref_contrastive_backward(x, y, scale, lse_r, lse_c, rc, cc, 1.0 / M, 0, 1, 0, 1)
    assert torch.isfinite(dx).all() and torch.isfinite(dy).all() and torch.isfinite(ds)
    torch.testing.assert_close(dx.double().cpu(), rdx, atol=_tol(d, scale), rtol=1e-4)
    torch.testing.assert_close(dy.double().cpu(), rdy, atol=_tol(d, scale), rtol=1e-4)


@gpu
@needs_cuda_build
def test_contrastive_strided_rows_and_grad_of_clip_loss():
    """Row-strided views are read in place; the clip loss gradient through our forward/backward matches autograd."""
    B, d, scale = 50, 24, 14.0
    big = _rand(B, 2 * d, torch.float32)
    x = big[:, :d]  # row stride 2d
    y = _rand(B, d, torch.float32)
    sc = torch.tensor(scale, device="cuda")
    lse_r, lse_c, pos_r, pos_c = _cuda.contrastive_forward(x, y, sc, 0, 1, 0, 1, True)
    loss = 0.5 * ((lse_r - pos_r).mean() + (lse_c - pos_c).mean())
    X = x.double().cpu().requires_grad_()
    Y = y.double().cpu().requires_grad_()
    S = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    Z = S * X @ Y.T
    lab = torch.arange(B)
    ref = 0.5 * (torch.nn.functional.cross_entropy(Z, lab) + torch.nn.functional.cross_entropy(Z.T, lab))
    ref.backward()
    torch.testing.assert_close(loss.double().cpu(), ref.detach(), atol=1e-5, rtol=1e-5)
    g = 1.0
    rc = torch.full((B,), 0.5 * g / B, device="cuda")
    dx, dy, ds = _cuda.contrastive_backward(x, y, sc, lse_r, lse_c, rc, rc.clone(), g / B, 0, 1, 0, 1)
    torch.testing.assert_close(dx.double().cpu(), X.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dy.double().cpu(), Y.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ds.double().cpu(), S.grad, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ GPU: triplet
@gpu
@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,d", [(2, 1), (7, 5), (70, 33), (130, 64)])
@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("num_splits", [0, 2])
def test_triplet_forward_backward(dtype, B, d, max_violation, num_splits):
    margin, grad = 0.2, 1.5
    a, b = _rand(B, d, dtype), _rand(B, d, dtype)
    rc, cc, ri, ci = _cuda.triplet_forward(a, b, margin, max_violation, num_splits=num_splits)
    A = a.double().cpu().requires_grad_()
    Bm = b.double().cpu().requires_grad_()
    rrc, rcc, rri, rci = ref_triplet(A, Bm, margin, max_violation)
    tol = _tol(d) * (B if not max_violation else 1)
    torch.testing.assert_close(rc.double().cpu(), rrc.detach(), atol=tol, rtol=1e-5)
    torch.testing.assert_close(cc.double().cpu(), rcc.detach(), atol=tol, rtol=1e-5)
    if max_violation:
        S = (Bm @ A.T).detach()
        # an index may differ from the float64 argmax only on an fp32 near-tie; compare the chosen scores instead
        torch.testing.assert_close(S[torch.arange(B), ri.cpu()], S[torch.arange(B), rri], atol=tol, rtol=0)
        torch.testing.assert_close(S[ci.cpu(), torch.arange(B)], S[rci, torch.arange(B)], atol=tol, rtol=0)
        assert bool((ri.cpu() != torch.arange(B)).all()) and bool((ci.cpu() != torch.arange(B)).all())
    else:
        assert bool((ri == -1).all()) and bool((ci == -1).all())
    da, db = _cuda.triplet_backward(a, b, margin, max_violation, ri, ci, grad, num_splits=num_splits)
    rda, rdb = ref_triplet_grad(a, b, margin, max_violation, ri, ci, grad)
    torch.testing.assert_close(da.double().cpu(), rda, atol=1e-5 * B, rtol=1e-4)
    torch.testing.assert_close(db.double().cpu(), rdb, atol=1e-5 * B, rtol=1e-4)
    if B <= 70:  # and the same as autograd of the float64 loss when no hinge sits within rounding of 0
        (grad * (rrc + rcc).sum()).backward()
        S64 = (Bm @ A.T).detach()
        h = margin + S64 - S64.diagonal()[:, None]
        if bool((h.abs() > 1e-3).all()):
            torch.testing.assert_close(da.double().cpu(), A.grad, atol=1e-5 * B, rtol=1e-4)
            torch.testing.assert_close(db.double().cpu(), Bm.grad, atol=1e-5 * B, rtol=1e-4)


def ref_triplet_grad(a, b, margin, max_violation, ri, ci, grad):
    """float64 gradient with the hinge decisions taken on the kernels' own fp32 scores (the similarity kernel
    runs the same fma chain), so a hinge within rounding of 0 cannot make the comparison flaky."""
    S32 = _cuda.similarity(b, a).cpu()  # S[i, j] = b_i . a_j, fp32, same arithmetic as the triplet tiles
    dg = S32.diagonal()
    B = S32.shape[0]
    W = torch.zeros(B, B, dtype=torch.float64)
    if max_violation:
        ri, ci = ri.cpu(), ci.cpu()
        for k in range(B):
            if (margin + S32[k, ri[k]]) - dg[k] > 0:
                W[k, ri[k]] += 1
                W[k, k] -= 1
            if (margin + S32[ci[k], k]) - dg[k] > 0:
                W[ci[k], k] += 1
                W[k, k] -= 1
    else:
        eye = torch.eye(B, dtype=torch.bool)
        H = (((margin + S32) - dg[:, None]) > 0) & ~eye
        Gm = (((margin + S32) - dg[None, :]) > 0) & ~eye
        W = (H.double() + Gm.double())
        W[torch.arange(B), torch.arange(B)] = -(H.sum(1) + Gm.sum(0)).double()
    A, Bm = a.double().cpu(), b.double().cpu()
    return grad * W.T @ Bm, grad * W @ A


@gpu
@needs_cuda_build
@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet_ties_exact(max_violation):
    """Integer inputs with duplicated rows: exact costs, hardest negatives tie-broken to the lower index."""
    B, d = 90, 6
    a = _ints(B, d)
    b = _ints(B, d)
    a[40:60] = a[10:30]  # duplicated columns -> exact ties in S
    rc, cc, ri, ci = _cuda.triplet_forward(a, b, 1.0, max_violation)
    rrc, rcc, rri, rci = ref_triplet(a.double().cpu(), b.double().cpu(), 1.0, max_violation)
    torch.testing.assert_close(rc.double().cpu(), rrc, atol=0, rtol=0)
    torch.testing.assert_close(cc.double().cpu(), rcc, atol=0, rtol=0)
    if max_violation:
        assert torch.equal(ri.cpu(), rri) and torch.equal(ci.cpu(), rci)


# ------------------------------------------------------------------------------------------ GPU: top-K
@gpu
@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Q,G,d,k", [(1, 1, 1, 1), (3, 10, 4, 10), (70, 200, 7, 1), (70, 200, 7, 5),
                                     (33, 1000, 16, 64), (5, 1500, 9, 1024), (130, 300, 3, 200)])
@pytest.mark.parametrize("num_splits", [0, 1, 3])
def test_topk_exact_on_integer_inputs(dtype, Q, G, d, k, num_splits):
    q, g = _ints(Q, d, dtype), _ints(G, d, dtype)  # small integers are exact in bf16/fp16 too: many ties
    s, i = _cuda.topk(q, g, k, num_splits=num_splits)
    rs, ri = ref_topk(q, g, k)
    assert torch.equal(i.cpu(), ri), "indices (ties -> lower index)"
    assert torch.equal(s.double().cpu(), rs)


@gpu
@needs_cuda_build
def test_topk_random_and_block_size():
    q, g = _rand(40, 33, torch.float32), _rand(3000, 33, torch.float32)
    s0, i0 = _cuda.topk(q, g, 17)
    s1, i1 = _cuda.topk(q, g, 17, block_size=100)
    assert torch.equal(s0, s1) and torch.equal(i0, i1)  # bit-identical scores: same fma chain per element
    rs, ri = ref_topk(q, g, 17)
    torch.testing.assert_close(s0.double().cpu(), rs, atol=_tol(33), rtol=0)
    S = q.double().cpu() @ g.double().cpu().T
    torch.testing.assert_close(S.gather(1, i0.cpu()), rs, atol=_tol(33), rtol=0)  # near-ties may swap
    assert bool((s0[:, :-1] >= s0[:, 1:]).all())


@gpu
@needs_cuda_build
def test_topk_rejects_k_above_gallery():
    q = _rand(2, 4, torch.float32)
    with pytest.raises(ValueError, match="k must be <="):
        _cuda.topk(q, q, 3)


# ------------------------------------------------------------------------------------------ GPU: ranks
@gpu
@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Q,G,d,T", [(1, 1, 1, 1), (7, 50, 3, 1), (70, 300, 5, 3), (130, 1000, 8, 5)])
@pytest.mark.parametrize("num_splits", [0, 4])
def test_target_ranks_exact(dtype, Q, G, d, T, num_splits):
    q, g = _ints(Q, d, dtype), _ints(G, d, dtype)
    targets = torch.randint(0, G, (Q, T))
    if T > 1:
        targets[torch.rand(Q, T) < 0.3] = -1
        targets[0] = -1  # a row without a valid target
    targets = targets.cuda()
    r, allr = _cuda.target_ranks(q, g, targets, return_all=True, num_splits=num_splits)
    rr, rall = ref_ranks(q, g, targets)
    assert torch.equal(allr.cpu(), rall)
    assert torch.equal(r.cpu(), rr)
    if T == 1:
        assert torch.equal(_cuda.target_ranks(q, g, targets[:, 0]).cpu(), rr)


@gpu
@needs_cuda_build
def test_target_ranks_random_bf16_against_own_scores():
    """bf16 random inputs: ranks agree with counting on the kernel's own fp32 similarity (same arithmetic)."""
    q, g = _rand(50, 40, torch.bfloat16), _rand(700, 40, torch.bfloat16)
    t = torch.randint(0, 700, (50,), device="cuda")
    r = _cuda.target_ranks(q, g, t)
    S = _cuda.similarity(q, g).cpu()
    st = S.gather(1, t.cpu()[:, None])
    cols = torch.arange(700)[None, :]
    ref = ((S > st) | ((S == st) & (cols < t.cpu()[:, None]))).sum(1)
    assert torch.equal(r.cpu(), ref)


@gpu
@needs_cuda_build
def test_target_ranks_rejects_out_of_range():
    q = _rand(2, 4, torch.float32)
    with pytest.raises(ValueError, match="targets must be -1"):
        _cuda.target_ranks(q, q, torch.tensor([0, 2], device="cuda"))


# ------------------------------------------------------------------------------------------ GPU: similarity
@gpu
@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Q,G,d", [(1, 1, 1), (65, 129, 17), (200, 64, 256)])
def test_similarity(dtype, Q, G, d):
    q, g = _rand(Q, d, dtype), _rand(G, d, dtype)
    s = _cuda.similarity(q, g)
    ref = q.double().cpu() @ g.double().cpu().T
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.double().cpu(), ref, atol=_tol(d), rtol=1e-5)


@gpu
@needs_cuda_build
def test_runs_on_the_current_stream_without_sync():
    q, g = _rand(64, 32, torch.float16), _rand(500, 32, torch.float16)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = _cuda.similarity(q, g)
        sc, ix = _cuda.topk(q, g, 5)
    s.synchronize()
    ref = (q.float() @ g.float().T)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(sc, out.topk(5, dim=1).values, atol=0, rtol=0)
