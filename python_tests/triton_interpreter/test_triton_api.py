"""The public API with ``backend="triton"`` (interpreter on CPU) against float64 references: loss values and the
gradients of both feature matrices and of ``logit_scale``; similarity, top-k and target ranks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _refs import close, feats, integer_feats, ranks_ref, topk_ref, triplet_ref

losses = pytest.importorskip("ccr_fast.losses")
retrieval = pytest.importorskip("ccr_fast.retrieval")

pytestmark = pytest.mark.triton


def _grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def _one_to_k64(img, txt, scale):
    b, k, _ = txt.shape
    z = scale * img @ txt.reshape(b * k, -1).t()
    img_of_text = torch.arange(b * k) // k
    l_i2t = -(z.log_softmax(1)[img_of_text, torch.arange(b * k)]).sum() / b
    l_t2i = F.cross_entropy(z.t(), img_of_text, reduction="sum") / (b * k)
    return (l_i2t + l_t2i) / (2 * k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [1, 3])
def test_one_to_k_and_clip(dtype, k):
    b, d = 6, 24
    img, txt = feats(b, d, dtype), feats(b * k, d, dtype).reshape(b, k, d)
    scale = torch.tensor(14.0)
    if k == 1:
        got, g_got = _grads(lambda i, t, s: losses.clip_loss(i, t, s, backend="triton"), img, txt[:, 0], scale)
    else:
        got, g_got = _grads(lambda i, t, s: losses.one_to_k_loss(i, t, s, backend="triton"), img, txt, scale)
    want, g_want = _grads(lambda i, t, s: _one_to_k64(i, t.reshape(b, k, d), s), img.double(),
                          txt.reshape(b * k, d).double() if k > 1 else txt[:, 0].double(), scale.double())
    assert got.dtype == torch.float32
    close(got, want, dtype, scale=10)
    for g, w in zip(g_got, g_want):
        close(g.reshape(w.shape), w, dtype, scale=10)


@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet_loss(max_violation):
    a, b = feats(9, 16), feats(9, 16)
    got, (da, db) = _grads(lambda x, y: losses.triplet_loss(x, y, max_violation=max_violation, reduction="mean",
                                                            backend="triton"), a, b)
    (row, col, _, _), (r_da, r_db) = triplet_ref(a, b, 0.2, max_violation, grad=1.0 / 9)
    close(got, (row.sum() + col.sum()) / 9)
    close(da, r_da)
    close(db, r_db)


def test_retrieval_ops():
    q, g = integer_feats(7, 12), integer_feats(30, 12)
    g[20] = g[4]
    close(retrieval.similarity(q, g, backend="triton"), q.double() @ g.double().t())
    scores, idx = retrieval.topk(q, g, 5, block_size=16, backend="triton")
    r_scores, r_idx = topk_ref(q, g, 5)
    assert torch.equal(idx, r_idx) and torch.equal(scores.double(), r_scores)
    targets = torch.tensor([[4, -1], [20, 4], [0, 1], [-1, -1], [29, -1], [3, 7], [11, 12]])
    ranks = retrieval.target_ranks(q, g, targets, backend="triton")
    assert torch.equal(ranks, ranks_ref(q, g, targets))
