"""method="linear": the closed-form ridge map against a float64 reference, λ selection on validation, and a
train → checkpoint → evaluate round trip through the public entry points."""
import numpy as np
import pytest
import torch

import ccr_fast
from ccr_fast.config import load_config
from ccr_fast.data import CCRData, make_eval_sets
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY, tiny_items
from ccr_fast.methods.linear import item_pairs


def _linear(**kw):
    torch.manual_seed(0)
    return build_method(load_config(None, method="linear", **{**TINY, "model.trainable_layers": [], **kw}))


def test_ridge_matches_float64_reference():
    m = _linear(**{"linear.lambdas": [0.5]})
    items = tiny_items(8)
    rec = m.fit(items, None)
    x, texts = item_pairs(items)
    assert len(texts) == len({(it["index"], t) for it in items
                              for t in [it["src"], it["tgt"], it["back"], *it["texts"]]})
    pooled = m.encode_pooled(texts).double()
    y = torch.nn.functional.normalize(pooled - pooled.mean(0), dim=-1).numpy()  # center_text
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    a = xc.T @ xc
    lam = 0.5 * np.linalg.eigvalsh(a).clip(min=0).mean()
    w = np.linalg.solve(a + lam * np.eye(a.shape[0]), xc.T @ y)
    np.testing.assert_allclose(m.weight.detach().double().numpy(), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m.bias.double().numpy(), y.mean(0), rtol=1e-5, atol=1e-6)
    assert rec["lambda"] == 0.5 and rec["pairs"] == len(texts)


def test_lambda_is_the_validation_argmax():
    m = _linear(**{"linear.lambdas": [1e-3, 1.0, 1e3]})
    items = tiny_items(12)
    data = CCRData("tiny", list(range(12)), np.stack([it["visual"] for it in items]),
                   {"en": [[it["src"]] for it in items], "de": [[it["tgt"]] for it in items]})
    rec = m.fit(items[:8], make_eval_sets(data.subset(np.arange(8, 12)), ["en", "de"]), "sumr")
    scores = {float(k): v for k, v in rec["val_by_lambda"].items()}
    assert rec["lambda"] == max(scores, key=scores.get)
    assert rec["val_sumr"] == max(scores.values())
    assert float(m.lam) == rec["lambda"]


def test_linear_needs_a_frozen_encoder():
    with pytest.raises(ValueError, match="frozen"):
        _linear(**{"model.trainable_layers": None})


def test_train_and_evaluate_round_trip(tmp_path):
    over = {**TINY, "model.visual_dim": None, "model.trainable_layers": [], "data": "synthetic",
            "languages": ["en", "de"], "output_dir": str(tmp_path), "linear.lambdas": [0.1, 1.0]}
    res = ccr_fast.train(method="linear", **over)
    assert res.best_checkpoint and res.history and "lambda" in res.history[0]
    again = ccr_fast.evaluate(res.best_checkpoint)
    for lang in ("en", "de"):
        assert again[lang]["sumr"] == pytest.approx(res.metrics[lang]["sumr"])


def test_querybank_selection_banks_and_ranks(querybank_recalls):
    """linear.querybank: (λ, β) is the validation argmax; the banks are the training pairs' targets and the
    training images' embeddings; ranking matches a float64 reference; a checkpoint carries the banks."""
    m = _linear(**{"linear.lambdas": [1e-2, 1.0], "linear.querybank": True, "linear.querybank_betas": [5.0, 40.0]})
    items = tiny_items(16)
    data = CCRData("tiny", list(range(16)), np.stack([it["visual"] for it in items]),
                   {"en": [[it["src"]] for it in items], "de": [[it["tgt"]] for it in items]})
    val, test = make_eval_sets(data.subset(np.arange(8, 12)), ["en", "de"]), make_eval_sets(
        data.subset(np.arange(12, 16)), ["en", "de"])
    rec = m.fit(items[:8], val, "sumr")
    assert len(rec["val_by_lambda"]) == 4 and rec["val_sumr"] == max(rec["val_by_lambda"].values())
    assert float(m.qb_beta) == rec["querybank_beta"] and float(m.lam) == pytest.approx(rec["lambda"])
    x, texts = item_pairs(items[:8])
    assert m.qb_text.shape == (len(texts), m.qb_text.shape[1]) and m.qb_visual.shape[0] == 8
    torch.testing.assert_close(m.qb_visual, m.embed_visual(torch.from_numpy(np.unique(x, axis=0))))
    res = m.score(test)
    for lang, field in (("en", "src"), ("de", "tgt")):
        q = [it[field] for it in items[12:16]]
        ref = querybank_recalls(m.encode_text(q), m.encode_visual(data.features[12:16]), m.qb_text, m.qb_visual,
                            float(m.qb_beta))
        for k, v in ref.items():
            assert res["per_language"][lang][k] == pytest.approx(v), (lang, k)
    fresh = _linear(**{"linear.querybank": True})
    fresh.load_state_dict(m.state_dict())
    assert fresh.score(test)["per_language"]["en"] == res["per_language"]["en"]
