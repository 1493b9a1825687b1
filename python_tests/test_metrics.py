"""ccr_fast.metrics: recalls, MedR/MeanR, mAP, the fused evaluate_embeddings vs a brute-force float64 evaluation,
MRV and score fusion (docs/methods.md, "Common parts"), plus the documented errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccr_fast import metrics

KEYS = ["t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr", "t2v_map", "v2t_r1", "v2t_r5", "v2t_r10",
        "v2t_medr", "v2t_meanr", "v2t_map", "sumr", "mr"]


def test_recall_at_k():
    r = np.array([0, 1, 4, 5, 9, 10, 20, 0])
    assert metrics.recall_at_k(r) == {1: 25.0, 5: 50.0, 10: 75.0}
    assert metrics.recall_at_k(torch.tensor(r), ks=(2,)) == {2: 37.5}
    assert metrics.recall_at_k([3], ks=(3, 4)) == {3: 0.0, 4: 100.0}


def test_retrieval_metrics_hand_values():
    t2v = [0, 2, 9, 1]          # 1-based: 1, 3, 10, 2
    v2t = [4, 0, 0]             # 1-based: 5, 1, 1
    m = metrics.retrieval_metrics(t2v, v2t)
    assert list(m) == KEYS
    assert m["t2v_r1"] == 25.0 and m["t2v_r5"] == 75.0 and m["t2v_r10"] == 100.0
    assert m["t2v_medr"] == 2.0  # floor(median([0, 1, 2, 9]) = 1.5) + 1
    assert m["t2v_meanr"] == pytest.approx(4.0)
    assert m["t2v_map"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 2) / 4)
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["v2t_r5"] == 100.0
    assert m["v2t_medr"] == 1.0 and m["v2t_meanr"] == pytest.approx(7 / 3)
    assert m["sumr"] == pytest.approx(25 + 75 + 100 + 200 / 3 + 100 + 100)
    assert m["mr"] == pytest.approx(m["sumr"] / 6)
    # v2t mAP over all GT captions: item 0 positives at ranks {4, 6} -> (1/5 + 2/7)/2; items 1, 2: {0, 1} -> 1
    m2 = metrics.retrieval_metrics(t2v, v2t, v2t_all_ranks=[np.array([6, 4]), [0, 1], [1, 0]])
    assert m2["v2t_map"] == pytest.approx(((1 / 5 + 2 / 7) / 2 + 1 + 1) / 3)
    padded = metrics.retrieval_metrics(t2v, v2t, v2t_all_ranks=np.array([[6, 4], [0, 1], [0, -1]]))
    assert padded["v2t_map"] == pytest.approx(((1 / 5 + 2 / 7) / 2 + 1 + 1) / 3)


def _brute_force(text, vis, t2v_idx):
    """Full float64 similarity matrix, stable descending argsort positions (the rank rule of target_ranks)."""
    s = text.double() @ vis.double().T  # [Q, G]

    def positions(m):
        order = torch.sort(m, dim=1, descending=True, stable=True).indices
        pos = torch.empty_like(order)
        pos.scatter_(1, order, torch.arange(m.shape[1]).expand_as(order).contiguous())
        return pos

    t2v = positions(s).gather(1, t2v_idx[:, None])[:, 0].numpy()
    pos_v = positions(s.T)
    best, all_r = [], []
    for item in range(vis.shape[0]):
        caps = (t2v_idx == item).nonzero()[:, 0]
        if caps.numel() == 0:
            continue
        r = pos_v[item, caps].numpy()
        best.append(r.min())
        all_r.append(r)
    return t2v, np.array(best), all_r


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_evaluate_embeddings_vs_brute_force(backend):
    gen = torch.Generator().manual_seed(0)
    vis = F.normalize(torch.randn(13, 16, generator=gen), dim=1)
    t2v_idx = torch.randint(0, 12, (50,), generator=gen)  # item 12 (and maybe others) has no caption
    text = F.normalize(vis[t2v_idx] + 0.8 * torch.randn(50, 16, generator=gen), dim=1)
    got = metrics.evaluate_embeddings(text, vis, t2v_idx, backend=backend)
    t2v, best, all_r = _brute_force(text, vis, t2v_idx)
    want = metrics.retrieval_metrics(t2v, best, v2t_all_ranks=all_r)
    assert got.keys() == want.keys()
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    assert 0.0 < got["v2t_map"] <= 1.0


def test_evaluate_embeddings_ties_and_best_caption():
    # Appendix E.6: v2t uses the best-ranked GT caption; t2v has one GT per caption. Duplicated captions tie.
    vis = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])
    t2v_idx = np.array([0, 1, 1, 0, 2])
    m = metrics.evaluate_embeddings(text, vis, t2v_idx, backend="cpu")
    # t2v ranks: caption0 -> item0 rank 0; caption1 -> item1 rank 1 (item0 scores higher); caption2 -> 0;
    # caption3 -> 0; caption4 -> 0
    assert m["t2v_r1"] == 80.0 and m["t2v_meanr"] == pytest.approx(1.2)
    # v2t: item0's captions {0, 3} score 1 and 0.9 (caption 1 also scores 1, after caption 0 by index) -> ranks
    # 0 and 2; item1's caption 2 scores 1 -> best rank 0; item2's caption 4 -> 0
    t2v, best, all_r = _brute_force(text, vis, torch.as_tensor(t2v_idx))
    assert list(best) == [0, 0, 0]
    assert m["v2t_r1"] == 100.0
    assert m["v2t_map"] == pytest.approx(np.mean([np.mean(np.arange(1, len(r) + 1) / (np.sort(r) + 1))
                                                  for r in all_r]))


def test_mean_rank_variance_appendix_e4():
    assert metrics.mean_rank_variance(np.array([[3, 1, 7], [3, 1, 7], [3, 1, 7]])) == 0.0
    assert metrics.mean_rank_variance([[0], [2]]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    r = rng.integers(0, 100, size=(4, 30))
    assert metrics.mean_rank_variance(torch.tensor(r)) == pytest.approx(np.std(r, axis=0, ddof=0).mean())


def test_fuse_scores_appendix_e5():
    s1 = np.array([[1.0, 3.0], [5.0, 9.0]])
    s2 = np.array([[0.0, 2.0], [-2.0, 2.0]])
    fused = metrics.fuse_scores(s1, s2, 0.5)
    # whole-matrix min-max (not per row): s1 -> [[0, .25], [.5, 1]], s2 -> [[.5, 1], [0, 1]]
    np.testing.assert_allclose(fused, [[0.25, 0.625], [0.25, 1.0]])
    # weight 1 reproduces the ranking of s1; a constant matrix normalises to zeros without NaN
    t1 = torch.randn(4, 6, dtype=torch.float64)
    f = metrics.fuse_scores(t1, torch.full((4, 6), 3.0, dtype=torch.float64), 1.0)
    assert torch.equal(f.argsort(dim=1, stable=True), t1.argsort(dim=1, stable=True))
    z = metrics.fuse_scores(torch.ones(2, 2), torch.ones(2, 2), 0.3)
    assert torch.equal(z, torch.zeros(2, 2))
    assert isinstance(metrics.fuse_scores(s1, torch.tensor(s2), 0.2), torch.Tensor)


def test_errors():
    with pytest.raises(ValueError, match="ranks must be non-empty"):
        metrics.recall_at_k([])
    with pytest.raises(ValueError, match=">= 0"):
        metrics.recall_at_k([0, -1])
    with pytest.raises(ValueError, match="ks"):
        metrics.recall_at_k([0], ks=(0,))
    with pytest.raises(ValueError, match="t2v_ranks must be 1-D"):
        metrics.retrieval_metrics(np.zeros((2, 2), dtype=int), [0])
    with pytest.raises(ValueError, match="v2t_all_ranks must hold one rank array per v2t query"):
        metrics.retrieval_metrics([0], [0, 1], v2t_all_ranks=[[0]])
    vis, text = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"text_to_visual must be item indices in \[0, G=3\)"):
        metrics.evaluate_embeddings(text, vis, [0, 1, 3])
    with pytest.raises(ValueError, match=r"text_to_visual must have shape \[Q=3\]"):
        metrics.evaluate_embeddings(text, vis, [0, 1])
    with pytest.raises(TypeError, match="torch.Tensors"):
        metrics.evaluate_embeddings(text.numpy(), vis, [0, 1, 2])
    with pytest.raises(ValueError, match=r"ranks must be 2-D"):
        metrics.mean_rank_variance([1, 2, 3])
    with pytest.raises(ValueError, match="s2 must have the shape of s1"):
        metrics.fuse_scores(np.ones((2, 2)), np.ones((2, 3)), 0.5)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        metrics.fuse_scores(np.ones((2, 2)), np.ones((2, 2)), 1.5)
    with pytest.raises(ValueError, match="finite"):
        metrics.fuse_scores(np.array([[np.nan]]), np.ones((1, 1)), 0.5)
