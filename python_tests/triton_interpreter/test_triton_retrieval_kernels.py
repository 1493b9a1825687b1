"""Triton similarity, streaming top-k and fused rank counting (interpreter) against float64 references.

Integer-valued features make every score exact, so indices and ranks are compared exactly, ties included
(duplicated gallery rows before and after the target). Forced gallery splits (``block_size``) exercise the merge.
"""
from __future__ import annotations

import pytest
import torch

import ccr_fast.backends.triton.ranks as tr
import ccr_fast.backends.triton.similarity as ts
import ccr_fast.backends.triton.topk as tk
from _refs import close, feats, integer_feats, ranks_ref, topk_ref

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_similarity(dtype):
    q, g = feats(37, 20, dtype), feats(45, 20, dtype)
    out = ts.similarity(q, g.t().contiguous().t())
    assert out.dtype == torch.float32 and out.shape == (37, 45)
    close(out, q.double() @ g.double().t(), dtype)


def _tied_gallery(n, d, dtype):
    g = integer_feats(n, d, dtype)
    g[10] = g[3]
    g[n - 1] = g[3]
    g[n - 2] = g[3]
    return g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_q,n_g,d,k,block_size", [(5, 20, 8, 1, 0), (19, 70, 24, 10, 0), (19, 70, 24, 7, 32),
                                                    (3, 12, 16, 12, 16)])
def test_topk_exact_with_ties(dtype, n_q, n_g, d, k, block_size):
    q, g = integer_feats(n_q, d, dtype), _tied_gallery(n_g, d, dtype)
    scores, idx = tk.topk(q, g, k, block_size)
    r_scores, r_idx = topk_ref(q, g, k)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.equal(idx, r_idx)
    assert torch.equal(scores.double(), r_scores)


def test_topk_sort_merge_path():
    # k > SELECT_ROUNDS_MAX_K takes the bitonic tl.sort merge
    q, g = integer_feats(4, 8), _tied_gallery(40, 8, torch.float32)
    k = tk.SELECT_ROUNDS_MAX_K + 4
    scores, idx = tk.topk(q, g, k, 0)
    r_scores, r_idx = topk_ref(q, g, k)
    assert torch.equal(idx, r_idx) and torch.equal(scores.double(), r_scores)


def test_topk_random_fp32_scores():
    q, g = feats(6, 30), feats(50, 30)
    scores, idx = tk.topk(q, g, 5, 16)
    ref = q.double() @ g.double().t()
    close(scores, ref.topk(5, dim=1).values)
    close(scores, ref.gather(1, idx))  # the returned indices carry the returned scores


def test_topk_errors():
    q, g = feats(3, 8), feats(5, 8)
    with pytest.raises(ValueError, match=r"k must be in \[1, G=5\]"):
        tk.topk(q, g, 6, 0)
    with pytest.raises(ValueError, match="k must be in"):
        tk.topk(q, g, 0, 0)
    with pytest.raises(ValueError, match="block_size must be"):
        tk.topk(q, g, 2, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_q,n_g,d,n_t,block_size", [(5, 20, 8, 1, 0), (19, 70, 24, 3, 0), (19, 70, 24, 2, 16),
                                                      (33, 40, 40, 1, 0)])
def test_target_ranks_exact_with_ties(dtype, n_q, n_g, d, n_t, block_size):
    q, g = integer_feats(n_q, d, dtype), _tied_gallery(n_g, d, dtype)
    targets = torch.randint(0, n_g, (n_q, n_t))
    targets[0] = -1  # no valid target -> -1
    targets[1, 0] = 3  # duplicates at 10, n_g-2, n_g-1 (after the target: not counted)
    targets[2, 0] = n_g - 1  # duplicates before the target: counted
    if n_t > 1:
        targets[3, 1] = -1
    tg = targets if n_t > 1 else targets[:, 0]
    ranks = tr.target_ranks(q, g, tg, block_size=block_size)
    assert ranks.dtype == torch.int64
    assert torch.equal(ranks, ranks_ref(q, g, tg))
    assert ranks[0] == -1


def test_target_ranks_errors():
    q, g = feats(3, 8), feats(5, 8)
    with pytest.raises(ValueError, match="targets must be int64"):
        tr.target_ranks(q, g, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"targets entries must be in \[0, G=5\)"):
        tr.target_ranks(q, g, torch.tensor([0, 5, 1]))
