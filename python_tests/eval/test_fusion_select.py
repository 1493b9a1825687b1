"""select_fusion_weight: per-language weight picked on validation, test reported for every weight, one encoding."""
import numpy as np
import pytest
import torch

from ccr_fast.data import EvalSet
from ccr_fast.eval import evaluate_encoders
from ccr_fast.eval.fusion import select_fusion_weight


def _set(rng, lang, gallery, noise_tgt, noise_mt, tag):
    """One caption per item: target and MT query embeddings = the item's row plus noise of the given sizes."""
    n, d = gallery.shape
    tgt = gallery + noise_tgt * rng.standard_normal((n, d)).astype(np.float32)
    mt = gallery + noise_mt * rng.standard_normal((n, d)).astype(np.float32)
    q = [f"{tag}{lang}:{i}" for i in range(n)]
    qm = [f"{tag}{lang}-mt:{i}" for i in range(n)]
    table = dict(zip(q, tgt))
    table.update(zip(qm, mt))
    return EvalSet(lang, q, np.arange(n), gallery, [f"g{i}" for i in range(n)], qm), table


def _encoders(tables, calls):
    table = {k: v for t in tables for k, v in t.items()}

    def et(texts):
        calls["text"] += len(texts)
        return torch.from_numpy(np.stack([table[t] for t in texts]))

    def ev(feats):
        calls["visual"] += len(feats)
        return torch.from_numpy(np.asarray(feats))

    return et, ev


def test_select_matches_evaluate_encoders_and_picks_val_argmax():
    rng = np.random.default_rng(0)
    g_val = rng.standard_normal((60, 8)).astype(np.float32)
    g_test = rng.standard_normal((80, 8)).astype(np.float32)
    # "de": the target query is good and the MT poor (small w should win); "es": the reverse
    vd, t1 = _set(rng, "de", g_val, 0.6, 2.5, "v")
    ve, t2 = _set(rng, "es", g_val, 2.5, 0.6, "v")
    td, t3 = _set(rng, "de", g_test, 0.6, 2.5, "t")
    te, t4 = _set(rng, "es", g_test, 2.5, 0.6, "t")
    calls = {"text": 0, "visual": 0}
    et, ev = _encoders([t1, t2, t3, t4], calls)
    weights = [0.0, 0.2, 0.5, 0.8, 1.0]
    out = select_fusion_weight(et, ev, [vd, ve], [td, te], weights)
    # every caption, MT and gallery encoded exactly once over the 5 weights x 2 splits
    assert calls["text"] == 2 * (60 + 60) + 2 * (80 + 80)
    assert calls["visual"] == 60 + 80
    et2, ev2 = _encoders([t1, t2, t3, t4], {"text": 0, "visual": 0})
    for split, sets in (("val", [vd, ve]), ("test", [td, te])):
        for w in weights:
            ref = evaluate_encoders(et2, ev2, sets, fusion_weight=w)["fused"]
            for lang in ("de", "es"):
                assert out["languages"][lang][split][f"{w:g}"] == ref[lang]
    for lang in ("de", "es"):
        rec = out["languages"][lang]
        val = {w: rec["val"][f"{w:g}"]["sumr"] for w in weights}
        best = max(val.values())
        assert rec["val_weight"] == min(w for w in weights if val[w] == best)  # ties: the smaller weight
        assert rec["test_at_val_weight"] == rec["test"][f"{rec['val_weight']:g}"]
    assert out["languages"]["de"]["val_weight"] < 0.5 < out["languages"]["es"]["val_weight"]
    # w = 0 is the target-only ranking
    direct = evaluate_encoders(et2, ev2, [td, te])["per_language"]
    assert out["languages"]["de"]["test"]["0"] == direct["de"]


def test_select_rejects_bad_input():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((10, 4)).astype(np.float32)
    s, t = _set(rng, "de", g, 0.5, 0.5, "v")
    et, ev = _encoders([t], {"text": 0, "visual": 0})
    with pytest.raises(ValueError, match="weights"):
        select_fusion_weight(et, ev, [s], [s], [0.5, 1.5])
    no_mt = EvalSet("de", s.queries, s.query_item, g, s.item_ids)
    with pytest.raises(ValueError, match="queries_mt"):
        select_fusion_weight(et, ev, [s], [no_mt])
    en = EvalSet("en", s.queries, s.query_item, g, s.item_ids, s.queries_mt)
    with pytest.raises(ValueError, match="test_sets"):
        select_fusion_weight(et, ev, [s], [en])


def test_compare_claims_needs_a_source_checkout(tmp_path, monkeypatch):
    """``compare --claims`` runs tools/run_claims.py from the checkout, or says where it looked."""
    from ccr_fast.experiments import compare

    monkeypatch.setattr(compare, "_repo_root", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="run_claims.py"):
        compare.main(["--claims", "--from-json"])
