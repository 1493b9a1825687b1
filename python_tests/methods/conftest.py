"""Shared float64 references for the method tests."""
import pytest
import torch


def _querybank_recalls(t, v, bank_t, bank_v, beta):
    """Float64 query-bank-normalised R@1/5/10 for one caption per item (caption i ↔ item i): text→visual scores
    minus logsumexp over the training captions per item, visual→text scores minus logsumexp over the training
    items per caption."""
    t, v, bank_t, bank_v = (x.double() for x in (t, v, bank_t, bank_v))
    s = t @ v.t()
    s_t2v = s - torch.logsumexp(beta * (bank_t @ v.t()), 0, keepdim=True) / beta
    s_v2t = s - torch.logsumexp(beta * (t @ bank_v.t()), 1, keepdim=True) / beta
    r_t2v = (s_t2v > s_t2v.diag().unsqueeze(1)).sum(1)
    r_v2t = (s_v2t > s_v2t.diag().unsqueeze(0)).sum(0)
    return {f"{d}_r{k}": 100.0 * (r < k).double().mean().item() for d, r in (("t2v", r_t2v), ("v2t", r_v2t))
            for k in (1, 5, 10)}


@pytest.fixture
def querybank_recalls():
    return _querybank_recalls
