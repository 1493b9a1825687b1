"""Triton contrastive kernels (interpreter) against the float64 reference of docs/interop.md.

Covers K = 1..10 (1-to-K positives), open_clip local-loss offsets, sizes that are not tile multiples, fp32/fp16,
non-contiguous inputs, scale 100, ``compute_col=False`` (pos_col still exact) and a zero ``col_coef`` with unset
``lse_col`` (no NaN), plus the argument errors.
"""
from __future__ import annotations

import pytest
import torch

import ccr_fast.backends.triton.contrastive as tc
from _refs import close, contrastive_ref, feats

pytestmark = pytest.mark.triton


def _run(x, y, scale, ids, row_coef, col_coef, w_pos, compute_col=True):
    s = torch.tensor(float(scale))
    fwd = tc.contrastive_forward(x, y, s, *ids, compute_col)
    lse_row, lse_col = fwd[0], fwd[1]
    bwd = tc.contrastive_backward(x, y, s, lse_row, lse_col, row_coef, col_coef, w_pos, *ids)
    return fwd, bwd


def _check(x, y, scale, ids, dtype, compute_col=True, col_coef=None):
    m, n = x.shape[0], y.shape[0]
    row_coef = torch.rand(m)
    col_coef = torch.rand(n) if col_coef is None else col_coef
    w_pos = 0.37
    fwd, bwd = _run(x, y, scale, ids, row_coef, col_coef, w_pos, compute_col)
    ref_fwd, ref_bwd = contrastive_ref(x, y, scale, *ids, row_coef, col_coef, w_pos)
    mag = max(1.0, float(scale))
    for name, got, want in zip(("lse_row", "lse_col", "pos_row", "pos_col"), fwd, ref_fwd):
        assert got.dtype == torch.float32, name
        if name == "lse_col" and not compute_col:
            continue
        close(got, want, dtype, scale=mag)
    for name, got, want in zip(("dx", "dy", "dscale"), bwd, ref_bwd):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        close(got, want, dtype, scale=mag)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,k,d", [(7, 1, 20), (5, 3, 33), (3, 10, 16), (19, 2, 8)])
def test_one_to_k(dtype, b, k, d):
    x, y = feats(b, d, dtype), feats(b * k, d, dtype)
    _check(x, y, 10.0, (0, 1, 0, k), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_local_loss_offsets(dtype):
    # rank 1 of a world of 3 with local batch 6: local rows against all-gathered columns
    x, y = feats(6, 24, dtype), feats(18, 24, dtype)
    _check(x, y, 14.3, (6, 1, 0, 1), dtype)


def test_scale_100_and_noncontiguous():
    base_x, base_y = feats(9, 40), feats(12, 40)
    x = base_x.t().contiguous().t()  # column-major view
    y = torch.cat([base_y, base_y], dim=1)[:, ::2]  # strided feature axis
    assert not x.is_contiguous() and not y.is_contiguous()
    _check(x, y, 100.0, (0, 1, 0, 1), torch.float32)


def test_row_only_compute_col_false():
    # compute_col=False: lse_col unspecified, pos_col still exact (only the positive tiles are visited)
    x, y = feats(21, 16), feats(42, 16)
    _check(x, y, 50.0, (0, 1, 0, 2), torch.float32, compute_col=False, col_coef=torch.zeros(42))


def test_zero_col_coef_with_unset_lse_col_is_finite():
    x, y = feats(5, 16), feats(5, 16)
    s = torch.tensor(100.0)
    lse_row, lse_col, _, _ = tc.contrastive_forward(x, y, s, 0, 1, 0, 1, False)
    dx, dy, ds = tc.contrastive_backward(x, y, s, lse_row, torch.zeros(5), torch.ones(5), torch.zeros(5), 1.0,
                                         0, 1, 0, 1)
    assert torch.isfinite(dx).all() and torch.isfinite(dy).all() and torch.isfinite(ds)


def test_errors_name_the_argument():
    x, y = feats(4, 8), feats(4, 8)
    s = torch.tensor(1.0)
    with pytest.raises(ValueError, match="y must have feature size"):
        tc.contrastive_forward(x, feats(4, 9), s, 0, 1, 0, 1, True)
    with pytest.raises(ValueError, match="y must have the same dtype"):
        tc.contrastive_forward(x, y.half(), s, 0, 1, 0, 1, True)
    with pytest.raises(ValueError, match="x must have dtype"):
        tc.contrastive_forward(x.double(), y.double(), s, 0, 1, 0, 1, True)
    with pytest.raises(ValueError, match="col_div must be >= 1"):
        tc.contrastive_forward(x, y, s, 0, 1, 0, 0, True)
    with pytest.raises(TypeError, match="scale must be a 0-dim"):
        tc.contrastive_forward(x, y, 1.0, 0, 1, 0, 1, True)
    with pytest.raises(ValueError, match=r"row_coef must have shape \[4\]"):
        tc.contrastive_backward(x, y, s, torch.zeros(4), torch.zeros(4), torch.zeros(3), torch.zeros(4), 1.0,
                                0, 1, 0, 1)


def test_infinite_logits_first_tile():
    """Scores that overflow fp32 to −inf (x·y = −1e40) fill the first column tiles of rows 0..29: the online LSE
    starts at −inf (no NaN), dscale never forms 0·(−inf), and everything matches the float64 reference (where those
    logits are finite but weigh exp(−1e40) = 0)."""
    x, y = feats(40, 8), feats(72, 8)
    x[:30, 0], x[30:, 0] = 1e20, 0.0
    y[:40] = 0.0
    y[:40, 0] = -1e20
    y[40:, 0] = 0.0
    assert torch.isinf(x @ y.t()).sum() == 30 * 40
    _check(x, y, 3.0, (40, 1, 0, 1), torch.float32)
