"""Triton VSE++ triplet kernels (interpreter) against the float64 reference: max-violation (hardest negative,
lowest index on ties) and sum of violations, forward costs/indices and the gradient, fp32/fp16, B from 2 to 37."""
from __future__ import annotations

import pytest
import torch

import ccr_fast.backends.triton.triplet as tt
from _refs import close, feats, triplet_ref

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("n,d", [(2, 5), (19, 24), (37, 40)])
def test_forward_backward(dtype, max_violation, n, d):
    a, b = feats(n, d, dtype), feats(n, d, dtype)
    if n > 10:  # duplicated rows: ties among the negatives
        b[3] = b[5]
        a[7] = a[2]
    row_cost, col_cost, row_idx, col_idx = tt.triplet_forward(a, b, 0.2, max_violation)
    da, db = tt.triplet_backward(a, b, 0.2, max_violation, row_idx, col_idx, 0.5)
    (r_row, r_col, r_ri, r_ci), (r_da, r_db) = triplet_ref(a, b, 0.2, max_violation, grad=0.5)
    close(row_cost, r_row, dtype)
    close(col_cost, r_col, dtype)
    assert row_idx.dtype == torch.int64 and torch.equal(row_idx, r_ri)
    assert torch.equal(col_idx, r_ci)
    close(da, r_da, dtype)
    close(db, r_db, dtype)


def test_hardest_negative_tie_takes_lower_index():
    # b_0 scores the same against a_1, a_2 and a_3; the hardest negative must be index 1 (and 0 for column 1 etc.)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    _, _, row_idx, col_idx = tt.triplet_forward(a, b, 0.2, True)
    (_, _, r_ri, r_ci), _ = triplet_ref(a, b, 0.2, True)
    assert row_idx.tolist()[0] == 1
    assert torch.equal(row_idx, r_ri) and torch.equal(col_idx, r_ci)


def test_errors():
    a = feats(4, 8)
    with pytest.raises(ValueError, match="B >= 2"):
        tt.triplet_forward(a[:1], a[:1], 0.2, True)
    with pytest.raises(ValueError, match="b must have the shape of a"):
        tt.triplet_forward(a, feats(5, 8), 0.2, True)
    with pytest.raises(TypeError, match="max_violation must be a bool"):
        tt.triplet_forward(a, a, 0.2, 1)
    with pytest.raises(ValueError, match="row_idx must be an int64 tensor"):
        tt.triplet_backward(a, a, 0.2, True, torch.zeros(4), torch.zeros(4, dtype=torch.int64), 1.0)
