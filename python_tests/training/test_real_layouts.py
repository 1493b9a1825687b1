"""Training from a collection folder in a release layout (NRCCR for NRCCR, IGLUE JSON lines for CCR^k) equals
training on the same data in memory."""
import pytest

import ccr_fast
from ccr_fast.config import load_config
from ccr_fast.data import load_shipped
from ccr_fast.data.fixtures import write_collection
from ccr_fast.methods._tiny import TINY


@pytest.mark.parametrize("method,layout", [("nrccr", "nrccr"), ("ccrk", "jsonl")])
def test_shipped_exported_to_a_release_layout_gives_the_same_test_metrics(tmp_path, method, layout):
    langs = ["en", "de"]
    cfg = load_config(None, method=method, languages=langs, **{"files.layout": layout})
    root = write_collection(tmp_path / "multi30k", {s: load_shipped(s) for s in ("train", "val", "test")}, cfg)
    kw = dict(TINY, method=method, languages=langs, batch_size=32, max_steps=3, **{"model.visual_dim": None,
              "eval.every_epoch": False, "ccrk.k_test": 0})
    a = ccr_fast.train(dict(kw, data="shipped", output_dir=str(tmp_path / "a")))
    b = ccr_fast.train(dict(kw, data=str(root), output_dir=str(tmp_path / "b"), **{"files.layout": layout}))
    for lang in a.metrics["languages"]:
        for k in ("t2v_r1", "t2v_r10", "v2t_r5", "sumr", "mr"):
            assert b.metrics[lang][k] == pytest.approx(a.metrics[lang][k], abs=1e-9), (lang, k)
    assert b.metrics["languages"] == a.metrics["languages"]
