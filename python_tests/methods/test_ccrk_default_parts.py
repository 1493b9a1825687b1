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


# --- validation choices: ccrk.querybank_betas and ccrk.ridge_mix ---------------------------------------------------
def _mix_method(**kw):
    return _method(**{"ccrk.querybank": True, "ccrk.querybank_betas": [5.0, 40.0], "ccrk.ridge_mix": [0.0, 0.5],
                      "ccrk.ridge_mix_lambdas": [0.5, 2.0], **kw})


def _trained_a_step(m, train):
    m.train_dataset(train)
    m.train()
    m.loss_dict(m.collate([m.train_dataset(train)[i] for i in range(6)]))  # running statistics move
    m.eval()


def test_ridge_mix_maps_match_float64_closed_form():
    m = _mix_method()
    train = _data(10, 0, "train")
    _trained_a_step(m, train)
    texts, rows = [], []
    for lang in ("en", "de"):
        for i, caps in enumerate(train.captions[lang]):
            texts += caps
            rows += [i] * len(caps)
    y = m.encode_text(texts).double()  # the current text space (running centre included)
    x = torch.as_tensor(train.features, dtype=torch.float64)
    z = ((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))[rows]
    zc, yc = z - z.mean(0), y - y.mean(0)
    gram = zc.t() @ zc
    s = torch.linalg.eigvalsh(gram).clamp_min(0).mean()
    fits = m._fit_ridge_mix(train)
    assert sorted(fits) == [0.5, 2.0]
    for lam, (mu, scale, w, b) in fits.items():
        ref_w = torch.linalg.solve(gram + lam * s * torch.eye(16, dtype=torch.float64), zc.t() @ yc)
        torch.testing.assert_close(w.double(), ref_w, rtol=1e-4, atol=1e-5)
        pred = (x - mu.double()) / scale.double() @ w.double() + b.double()
        ref = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5) @ ref_w + (y.mean(0) - z.mean(0) @ ref_w)
        torch.testing.assert_close(pred, ref, rtol=1e-4, atol=1e-5)


def test_choose_on_validation_takes_the_grid_argmax_and_mixes_scores():
    m = _mix_method()
    train, val, test = _data(10, 0, "train"), _data(8, 2, "val", two_en=False), _data(12, 1, "test", two_en=False)
    _trained_a_step(m, train)
    val_sets = make_eval_sets(val, ["en", "de"])
    rec = m.choose_on_validation(val_sets, 64, "sumr")
    grid = rec["val_by_choice"]
    assert len(grid) == (2 * 1 + 1) * 2  # (λ × the non-zero weight, and w = 0 once) × β
    assert float(m.qb_beta) == rec["querybank_beta"] and float(m.rmix_w) == rec["ridge_mix"]
    from ccr_fast.eval.scoring import evaluate_method
    assert evaluate_method(m, val_sets, 64)["sumr"] == pytest.approx(max(grid.values()), abs=1e-3)
    # the mixed visual embedding: text·v = (1 - w)·cos(learned) + w·cos(ridge) for a non-zero weight
    lam = 2.0
    for name, t in zip(("rmix_mu", "rmix_scale", "rmix_W", "rmix_b"), m._fit_ridge_mix(train)[lam]):
        setattr(m, name, t)
    m.rmix_w.fill_(0.5)
    t = m.encode_text([c[0] for c in test.captions["en"]]).double()
    learned = torch.nn.functional.normalize(m.embed_visual(torch.as_tensor(test.features)), dim=-1).double()
    x = torch.as_tensor(test.features, dtype=torch.float64)
    ridge = torch.nn.functional.normalize((x - m.rmix_mu.double()) / m.rmix_scale.double() @ m.rmix_W.double()
                                          + m.rmix_b.double(), dim=-1)
    torch.testing.assert_close(m.encode_visual(test.features).double(), learned, rtol=1e-5, atol=1e-6)  # unit norm
    torch.testing.assert_close(t @ m.rank_visual(test.features).double().t(),
                               0.5 * t @ learned.t() + 0.5 * t @ ridge.t(), rtol=1e-5, atol=1e-5)
    # the choices travel with the weights
    sets = make_eval_sets(test, ["en", "de"])
    m._qb_data = None  # score the saved banks (no refresh from the training data)
    first = m.score(sets)["per_language"]
    fresh = _mix_method()
    fresh.load_state_dict(m.state_dict())
    assert float(fresh.rmix_w) == 0.5 and float(fresh.qb_beta) == float(m.qb_beta)
    assert fresh.score(sets)["per_language"] == first


def test_validation_choice_config_errors():
    with pytest.raises(ConfigError, match="querybank_betas"):
        _method(**{"ccrk.querybank": True, "ccrk.querybank_betas": [0.0]})
    with pytest.raises(ConfigError, match="ridge_mix"):
        _method(**{"ccrk.ridge_mix": [0.0, 1.0]})
    with pytest.raises(ConfigError, match="ridge_mix_lambdas"):
        _method(**{"ccrk.ridge_mix": [0.5], "ccrk.ridge_mix_lambdas": []})
    m = _method(**{"ccrk.ridge_mix": [0.5]})
    m.rmix_w.fill_(0.5)
    with pytest.raises(ValueError, match="not fitted"):
        m.rank_visual(np.zeros((2, 16), np.float32))
    with pytest.raises(ConfigError, match="k_test"):
        _method(**{"ccrk.ridge_mix": [0.5], "ccrk.k_test": 4})


def test_validation_choices_are_recorded_and_reload(tmp_path):
    """Through train(): each validation record names β and the mix; the best checkpoint evaluates the same."""
    import ccr_fast

    over = {**TINY, "method": "ccrk", "data": {"name": "synthetic", "n_items": 60}, "languages": ["en", "de"],
            "model.visual_dim": None, "ccrk.k_test": 0, "ccrk.querybank": True, "ccrk.text_center": True,
            "model.visual_encoder": "norm_linear", "ccrk.querybank_betas": [5.0, 20.0],
            "ccrk.ridge_mix": [0.0, 0.5], "ccrk.text_proj": "linear", "ccrk.vision_proj": "linear",
            "batch_size": 8, "epochs": 2, "output_dir": str(tmp_path)}
    res = ccr_fast.train(**over)
    assert len(res.history) == 2
    for h in res.history:
        assert h["querybank_beta"] in (5.0, 20.0) and h["ridge_mix"] in (0.0, 0.5) and len(h["val_by_choice"]) == 6
    again = ccr_fast.evaluate(res.best_checkpoint)
    assert again["sumr"] == pytest.approx(res.metrics["sumr"])
