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


def _ridge_method(lam=0.5, **kw):
    return _method(**{"ccrk.ridge_init": lam, "ccrk.text_proj": "identity", "ccrk.vision_proj": "identity",
                      "model.embed_dim": 32, "model.visual_hidden": 32, **kw})


def test_ridge_init_matches_float64_closed_form():
    """ccrk.ridge_init: the first training step starts from the ridge map (float64 reference, every pair)."""
    lam = 0.5
    m = _ridge_method(lam)
    train = _data(10, 0, "train")
    ds = m.train_dataset(train)
    texts, rows = [], []
    for lang in ("en", "de"):
        for i, caps in enumerate(train.captions[lang]):
            texts += caps
            rows += [i] * len(caps)
    y = m.encode_text(texts).double()  # normalised pooled embeddings (centre still zero)
    centre = y.mean(0)
    y = torch.nn.functional.normalize(y - centre, dim=-1)
    x = torch.as_tensor(train.features, dtype=torch.float64)
    z = ((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))[rows]
    z = z - z.mean(0)
    gram = z.t() @ z
    s = torch.linalg.eigvalsh(gram).clamp_min(0).mean()
    w = torch.linalg.solve(gram + lam * s * torch.eye(16, dtype=torch.float64), z.t() @ y)
    m.train()
    m.init_from_ridge(train)
    torch.testing.assert_close(m.visual.linear.weight.double(), w.t(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.visual.linear.bias.double(), y.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.text_center.mean.double(), centre, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.visual.norm.running_mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
    # the loop's first step applies it once; loaded (resumed) weights are never overwritten
    m2 = _ridge_method(lam)
    m2.train_dataset(train)
    m2.train()
    m2.loss_dict(m2.collate([ds[i] for i in range(6)]))
    assert m2._ridge_data is None
    torch.testing.assert_close(m2.visual.linear.weight, m.visual.linear.weight)
    m3 = _ridge_method(lam)
    m3.train_dataset(train)
    m3.load_state_dict(m.state_dict())
    assert m3._ridge_data is None


def test_ridge_init_config_errors():
    with pytest.raises(ConfigError, match="ridge_init"):
        _ridge_method(0.5, **{"ccrk.text_proj": "linear", "model.embed_dim": 16})
    with pytest.raises(ConfigError, match="ridge_init"):
        _ridge_method(-1.0)
