"""The one ranking path: stable ranks and the v2t target table against a float64 brute force, every input path
(embeddings, score matrices, per-caption fused ranks) agreeing, and every evaluator reaching it."""
import numpy as np
import pytest
import torch

from ccr_fast import metrics as M
from ccr_fast.eval import evaluate_encoders
from ccr_fast.eval import ranking
from ccr_fast.eval.ranking import caption_ranks, embedding_ranks, score_ranks, stable_ranks, v2t_targets


def _brute_rank(row: np.ndarray, t: int) -> int:
    return int(np.sum(row > row[t]) + np.sum((row == row[t]) & (np.arange(row.size) < t)))


def _quantised(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, d), generator=g).double()  # many exact ties


def test_v2t_targets_table():
    items, targets = v2t_targets([2, 0, 2, 2, 4, 0], 6)
    np.testing.assert_array_equal(items, [0, 2, 4])
    np.testing.assert_array_equal(targets, [[1, 5, -1], [0, 2, 3], [4, -1, -1]])
    items, targets = v2t_targets([0], 1)
    assert targets.shape == (1, 1) and targets[0, 0] == 0


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (33, 17)])
def test_stable_ranks_vs_bruteforce(shape, monkeypatch):
    monkeypatch.setattr(ranking, "_BLOCK", 64)  # several row blocks
    q, g = shape
    gen = torch.Generator().manual_seed(q)
    scores = torch.randint(0, 3, (q, g), generator=gen).double()
    tg = torch.randint(0, g, (q,), generator=gen)
    got = stable_ranks(scores, tg)
    ref = [_brute_rank(scores[i].numpy(), int(tg[i])) for i in range(q)]
    assert got.tolist() == ref
    # padded 2-D targets, and column blocks with given target scores add up to the full rank
    t2 = torch.stack([tg, torch.full_like(tg, -1)], 1)
    assert stable_ranks(scores, t2)[:, 0].tolist() == ref and (stable_ranks(scores, t2)[:, 1] == -1).all()
    ts = scores.gather(1, tg[:, None])[:, 0]
    cut = max(1, g // 2)
    parts = stable_ranks(scores[:, :cut], tg, target_scores=ts) + \
        stable_ranks(scores[:, cut:], tg, target_scores=ts, start=cut)
    assert parts.tolist() == ref


@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_and_score_paths_agree_with_bruteforce(seed):
    text, vis = _quantised(23, 3, seed), _quantised(9, 3, seed + 10)
    rng = np.random.default_rng(seed)
    qi = rng.integers(0, 9, 23)
    qi[:3] = [0, 1, 1]
    e = embedding_ranks(text, vis, qi, backend="torch")
    s = score_ranks(text @ vis.T, qi)
    np.testing.assert_array_equal(e.t2v, s.t2v)
    np.testing.assert_array_equal(e.v2t_all, s.v2t_all)
    scores = (text @ vis.T).numpy()
    np.testing.assert_array_equal(e.t2v, [_brute_rank(scores[i], qi[i]) for i in range(23)])
    items, targets = v2t_targets(qi, 9)
    for r, it in enumerate(items):
        for c, cap in enumerate(targets[r]):
            want = -1 if cap < 0 else _brute_rank(scores[:, it], cap)
            assert e.v2t_all[r, c] == want
    best = e.v2t_per_item()
    assert (best[np.setdiff1d(np.arange(9), qi)] == -1).all()
    # per-caption ranks placed in the table give the same Ranks
    per_caption = np.empty(23, dtype=np.int64)
    per_caption[targets[targets >= 0]] = e.v2t_all[targets >= 0]
    c = caption_ranks(e.t2v, per_caption, qi, 9)
    np.testing.assert_array_equal(c.v2t_all, e.v2t_all)
    # the public metrics and the evaluator use this path
    assert M.evaluate_embeddings(text, vis, torch.from_numpy(qi), backend="torch") == e.metrics()


def test_evaluate_encoders_uses_the_same_ranks():
    from ccr_fast.data import EvalSet

    text, vis = _quantised(12, 4, 3).float(), _quantised(6, 4, 4).float()
    qi = np.repeat(np.arange(6), 2)
    es = EvalSet("xx", [str(i) for i in range(12)], qi, np.zeros((6, 1), np.float32), list(range(6)))
    res = evaluate_encoders(lambda chunk: text[[int(c) for c in chunk]], lambda arr: vis[: len(arr)], [es],
                            return_ranks=True, backend="torch")
    e = embedding_ranks(text, vis, qi, backend="torch")
    assert res["per_language"]["xx"] == e.metrics()
    np.testing.assert_array_equal(res["ranks"]["xx"]["t2v"], e.t2v)
    np.testing.assert_array_equal(res["ranks"]["xx"]["v2t"], e.v2t_per_item())
