"""``ccr_fast.backends.blas.gpu`` (the blas backend's CUDA path) run on CPU tensors: the GEMMs are torch.mm in fp32,
the Triton epilogues run in the interpreter. Checked against the float64 references of the kernel contract, with
forced row chunking (``budget_bytes``), the kept-score-matrix path, ±inf scores, ties, padding and large k.

Tolerances: forward outputs and fp32 gradients use the shared table (_refs.TOL). For fp16 inputs the backward feeds
dZ to the GEMM in fp16 by design (one rounding, 2^-11 relative per entry); those gradients are held to 4·eps(fp16)
relative to the largest reference entry.
"""
from __future__ import annotations

import math

import pytest
import torch

import ccr_fast.backends.blas.gpu as bg
import ccr_fast.backends.triton.epilogues as ep
from _refs import close, contrastive_ref, feats, integer_feats, ranks_ref, topk_ref, triplet_ref

pytestmark = pytest.mark.triton


@pytest.fixture(params=[None, 2048], ids=["whole", "chunked"])
def budget(request, monkeypatch):
    """None: one chunk (the score matrix is kept for the backward); 2048 bytes: a few rows per chunk."""
    monkeypatch.setattr(bg, "budget_bytes", request.param)
    bg.clear_cache()
    yield request.param
    bg.clear_cache()


def _grad_close(got, want, dtype, mag):
    if dtype == torch.float16:
        tol = 4 * torch.finfo(torch.float16).eps * max(1.0, float(want.abs().max()))
        torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=tol)
    else:
        close(got, want, dtype, scale=mag)


def _contrastive(x, y, scale, ids, dtype, compute_col=True, col_coef=None):
    m, n = x.shape[0], y.shape[0]
    row_coef = torch.rand(m)
    col_coef = torch.rand(n) if col_coef is None else col_coef
    w_pos = 0.37
    s = torch.tensor(float(scale))
    fwd = bg.contrastive_forward(x, y, s, *ids, compute_col)
    bwd = bg.contrastive_backward(x, y, s, fwd[0], fwd[1], row_coef, col_coef, w_pos, *ids)
    ref_fwd, ref_bwd = contrastive_ref(x, y, scale, *ids, row_coef, col_coef, w_pos)
    mag = max(1.0, float(scale))
    for name, got, want in zip(("lse_row", "lse_col", "pos_row", "pos_col"), fwd, ref_fwd):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        if name == "lse_col" and not compute_col:
            assert torch.equal(got, torch.zeros_like(got))
            continue
        close(got, want, dtype, scale=mag)
    for name, got, want in zip(("dx", "dy", "dscale"), bwd, ref_bwd):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        _grad_close(got, want, dtype, mag)


@pytest.mark.parametrize("dtype,b,k,d", [(torch.float32, 1, 1, 5), (torch.float32, 5, 3, 33), (torch.float16, 5, 3, 33),
                                         (torch.float32, 19, 2, 8), (torch.float16, 19, 2, 8)])
def test_contrastive(budget, dtype, b, k, d):
    _contrastive(feats(b, d, dtype), feats(b * k, d, dtype), 10.0, (0, 1, 0, k), dtype)


def test_contrastive_local_loss_scale_100_row_only(budget):
    x, y = feats(6, 24), feats(18, 24)
    _contrastive(x, y, 100.0, (6, 1, 0, 1), torch.float32)
    lse_unset = torch.full((18,), float("nan"))  # col_coef = 0: lse_col is never read
    _contrastive(x, y, 14.3, (6, 1, 0, 1), torch.float32, compute_col=False, col_coef=torch.zeros(18))
    s = torch.tensor(14.3)
    dx, dy, ds = bg.contrastive_backward(x, y, s, torch.zeros(6), lse_unset, torch.rand(6), torch.zeros(18), 0.5,
                                         6, 1, 0, 1)
    assert torch.isfinite(dx).all() and torch.isfinite(dy).all() and torch.isfinite(ds)


def test_contrastive_fp16_small_coefficients():
    """dZ entries far below fp16's normal range (coefficients ~1e-7) survive the fp16 GEMM operand."""
    x, y = feats(40, 16, torch.float16), feats(40, 16, torch.float16)
    s = torch.tensor(5.0)
    lse_row, lse_col, _, _ = bg.contrastive_forward(x, y, s, 0, 1, 0, 1, True)
    coef = torch.full((40,), 1e-7)
    dx, dy, ds = bg.contrastive_backward(x, y, s, lse_row, lse_col, coef, coef, 2e-7, 0, 1, 0, 1)
    _, (rdx, rdy, rds) = contrastive_ref(x, y, 5.0, 0, 1, 0, 1, coef, coef, 2e-7)
    assert float(rdx.abs().max()) > 1e-8
    for got, want in ((dx, rdx), (dy, rdy), (ds, rds)):
        tol = 4 * torch.finfo(torch.float16).eps * float(want.abs().max())
        torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=tol)


def test_contrastive_infinite_logits(budget):
    """Scores that overflow fp32 to −inf (x·y = −1e40) fill the first column tiles of rows 0..29: LSEs and gradients
    stay finite and match the float64 reference (where those logits are finite but weigh exp(−1e40) = 0)."""
    x, y = feats(40, 8), feats(72, 8)
    x[:30, 0], x[30:, 0] = 1e20, 0.0
    y[:40] = 0.0
    y[:40, 0] = -1e20
    y[40:, 0] = 0.0
    assert torch.isinf(x @ y.t()).sum() == 30 * 40
    _contrastive(x, y, 3.0, (40, 1, 0, 1), torch.float32)  # positives (r, r + 40): finite columns


def test_lse_partials_tile_starting_at_minus_inf():
    s = torch.randn(37, 70)
    s[:, :32] = float("-inf")  # the first column tile (and more) is −inf
    s[3, :] = float("-inf")  # a row that is −inf everywhere
    s[5, 50] = float("inf")
    one = torch.tensor(1.0)
    lse_row, pos_row, col_lse, col_pos = ep.lse_partials(s, one, 0, 0, 1, 0, 1, True)
    want_row = torch.logsumexp(s.double(), 1)
    want_col = torch.logsumexp(s.double(), 0)
    torch.testing.assert_close(lse_row.double(), want_row, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.logsumexp(col_lse, 0).double(), want_col, rtol=1e-6, atol=1e-6)
    assert not torch.isnan(lse_row).any() and not torch.isnan(col_lse).any()


@pytest.mark.parametrize("dtype,max_violation,n,d", [(torch.float32, True, 2, 3), (torch.float32, True, 23, 17),
                                                     (torch.float32, False, 23, 17), (torch.float16, True, 40, 8),
                                                     (torch.float16, False, 40, 8)])
def test_triplet(budget, dtype, max_violation, n, d):
    a, b = feats(n, d, dtype), feats(n, d, dtype)
    got = bg.triplet_forward(a, b, 0.2, max_violation)
    want, (rda, rdb) = triplet_ref(a, b, 0.2, max_violation, grad=0.7)
    for g_, w_ in zip(got[:2], want[:2]):
        close(g_, w_, torch.float32)
    if max_violation:
        assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
    else:
        assert (got[2] == -1).all() and (got[3] == -1).all()
    da, db = bg.triplet_backward(a, b, 0.2, max_violation, got[2], got[3], 0.7)
    close(da, rda, torch.float32)
    close(db, rdb, torch.float32)


def test_triplet_ties_lowest_index(budget):
    a, b = integer_feats(30, 4), integer_feats(30, 4)
    got = bg.triplet_forward(a, b, 1.0, True)
    want, _ = triplet_ref(a, b, 1.0, True)
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])


@pytest.mark.parametrize("k,block_size,budget_rows", [(1, 0, 0), (5, 0, 6), (17, 33, 0), (40, 0, 0), (70, 100, 6)])
def test_topk(monkeypatch, k, block_size, budget_rows):
    """k <= 16: rounds merge; 17..64: sort merge; 70 > EPILOGUE_MAX_K: packed keys + torch.topk. ``block_size``
    splits the gallery (running merge); ``budget_rows`` forces row chunks of that many queries."""
    q, g = integer_feats(9, 6), integer_feats(150, 6)  # many exact ties
    cols = block_size or 150
    monkeypatch.setattr(bg, "budget_bytes", budget_rows * cols * 12 if budget_rows else None)
    scores, idx = bg.topk(q, g, k, block_size)
    ws, wi = topk_ref(q, g, k)
    assert torch.equal(idx, wi)
    torch.testing.assert_close(scores.double(), ws, rtol=0, atol=0)


def test_topk_fp16_random():
    q, g = feats(9, 40, torch.float16), feats(200, 40, torch.float16)
    scores, idx = bg.topk(q, g, 12)
    ws, wi = topk_ref(q, g, 12)
    assert torch.equal(idx, wi)
    close(scores, ws, torch.float16)


@pytest.mark.parametrize("targets_per_query", [1, 3])
def test_target_ranks(budget, targets_per_query):
    q, g = integer_feats(30, 5), integer_feats(120, 5)
    t = torch.randint(0, 120, (30, targets_per_query))
    if targets_per_query > 1:
        t[0, 1:] = -1
        t[1, :] = -1  # no valid target
    got = bg.target_ranks(q, g, t if targets_per_query > 1 else t[:, 0])
    assert torch.equal(got, ranks_ref(q, g, t))


def test_target_ranks_exact_against_own_scores():
    """Random (non-integer) scores: the target's score is read from the same score matrix, so the ranks agree
    exactly with ranks computed from :func:`similarity`."""
    q, g = feats(25, 48, torch.float16), feats(300, 48, torch.float16)
    t = torch.randint(0, 300, (25,))
    s = bg.similarity(q, g).double()
    idx = torch.arange(300)
    want = torch.tensor([int((s[i] > s[i, t[i]]).sum() + ((s[i] == s[i, t[i]]) & (idx < t[i])).sum())
                         for i in range(25)])
    assert torch.equal(bg.target_ranks(q, g, t), want)


def test_similarity():
    q, g = feats(13, 9), feats(31, 9)
    close(bg.similarity(q, g), q.double() @ g.double().t(), torch.float32)


def test_errors():
    x = feats(4, 8)
    with pytest.raises(ValueError, match="y must match x"):
        bg.contrastive_forward(x, feats(4, 9), torch.tensor(1.0), 0, 1, 0, 1, True)
    with pytest.raises(ValueError, match="dtype float32, float16 or bfloat16"):
        bg.similarity(x.double(), x.double())
    with pytest.raises(ValueError, match="k must be an int in"):
        bg.topk(x, x, 5)
    with pytest.raises(ValueError, match="targets entries"):
        bg.target_ranks(x, x, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="B >= 2"):
        bg.triplet_forward(x[:1], x[:1], 0.2, True)
    assert math.isfinite(float(bg.similarity(x, x).sum()))
