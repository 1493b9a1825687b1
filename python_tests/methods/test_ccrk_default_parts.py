"""The built-in default's CCR^k parts: text centring and query-bank-normalised ranking (float64 references)."""
import numpy as np
import pytest
import torch

from ccr_fast.config import ConfigError, load_config
from ccr_fast.data import CCRData
from ccr_fast.data.datasets import make_eval_sets
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY
from ccr_fast.methods.ccrk import TextCenter

WORDS = ["dog", "cat", "man", "woman", "red", "blue", "runs", "sits", "snow", "beach", "ball", "car"]


def _data(n, seed, name, two_en=True):
    rng = np.random.default_rng(seed)
    caps = {"en": [], "de": []}
    for _ in range(n):
        w = [WORDS[j] for j in rng.choice(len(WORDS), 3, replace=False)]
        caps["en"].append(["a " + " ".join(w)] + (["the " + " ".join(w[:2])] if two_en else []))
        caps["de"].append(["ein " + " ".join(reversed(w))])
    feats = rng.standard_normal((n, 16)).astype(np.float32)
    return CCRData(name, [f"{name}{i}" for i in range(n)], feats, caps)


def _method(**kw):
    torch.manual_seed(0)
    over = {**TINY, "languages": ["en", "de"], "ccrk.k_test": 0, "ccrk.text_center": True,
            "model.visual_encoder": "norm_linear", **kw}
    return build_method(load_config(None, method="ccrk", **over))


def test_text_center_running_mean():
    tc = TextCenter(3)
    x = torch.randn(5, 3)
    torch.testing.assert_close(tc(x), x - x.mean(0))  # the first batch sets the mean
    y = torch.randn(4, 3)
    tc(y)
    torch.testing.assert_close(tc.mean, 0.9 * x.mean(0) + 0.1 * y.mean(0))
    tc.eval()
    before = tc.mean.clone()
    torch.testing.assert_close(tc(y), y - before)
    torch.testing.assert_close(tc.mean, before)  # fixed in eval


@pytest.mark.parametrize("beta", [5.0, 20.0, 80.0])
def test_querybank_ranking_matches_float64_reference(beta, querybank_recalls):
    m = _method(**{"ccrk.querybank": True, "ccrk.querybank_beta": beta})
    train, test = _data(10, 0, "train"), _data(12, 1, "test", two_en=False)
    m.train()
    m.loss_dict(m.collate([m.train_dataset(train)[i] for i in range(6)]))  # running statistics move
    res = m.score(make_eval_sets(test, ["en", "de"]))
    assert m.qb_text.shape == (sum(len(c) for lang in ("en", "de") for c in train.captions[lang]), 16)
    assert m.qb_visual.shape == (10, 16)
    for lang in ("en", "de"):
        queries = [c[0] for c in test.captions[lang]]
        ref = querybank_recalls(m.encode_text(queries), m.encode_visual(test.features), m.qb_text, m.qb_visual, beta)
        got = res["per_language"][lang]
        for k, v in ref.items():
            assert got[k] == pytest.approx(v), (lang, k)


def test_querybank_survives_a_checkpoint_and_needs_a_bank():
    m = _method(**{"ccrk.querybank": True})
    train, test = _data(10, 0, "train"), _data(12, 1, "test", two_en=False)
    m.train_dataset(train)
    sets = make_eval_sets(test, ["en"])
    first = m.score(sets)["per_language"]["en"]
    fresh = _method(**{"ccrk.querybank": True})
    with pytest.raises(ValueError, match="query bank is empty"):
        fresh.score(sets)
    fresh.load_state_dict(m.state_dict())  # banks are resized to the checkpoint's
    assert fresh.score(sets)["per_language"]["en"] == first


def test_querybank_config_errors():
    with pytest.raises(ConfigError, match="k_test"):
        _method(**{"ccrk.querybank": True, "ccrk.k_test": 4})
    with pytest.raises(ConfigError, match="querybank_beta"):
        _method(**{"ccrk.querybank": True, "ccrk.querybank_beta": 0.0})


def test_querybank_checkpoint_evaluates_to_the_same_metrics(tmp_path):
    """Through the public entry points: the banks saved with a checkpoint are loaded at their saved size."""
    import ccr_fast

    over = {**TINY, "method": "ccrk", "data": {"name": "synthetic", "n_items": 60}, "languages": ["en", "de"],
            "model.visual_dim": None, "ccrk.k_test": 0, "ccrk.querybank": True, "ccrk.text_center": True,
            "model.visual_encoder": "norm_linear", "ccrk.text_proj": "linear", "ccrk.vision_proj": "linear",
            "batch_size": 8, "epochs": 1, "output_dir": str(tmp_path)}
    res = ccr_fast.train(**over)
    again = ccr_fast.evaluate(res.best_checkpoint)
    for lang in ("en", "de"):
        if lang in res.metrics:
            assert again[lang]["sumr"] == pytest.approx(res.metrics[lang]["sumr"])
    assert again["sumr"] == pytest.approx(res.metrics["sumr"])
