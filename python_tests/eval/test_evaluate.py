"""evaluate_encoders vs a brute-force float64 reference (full score matrix), fusion, MRV, folds, reports."""
import numpy as np
import pytest
import torch

from ccr_fast.data import EvalSet
from ccr_fast.eval import (evaluate_encoders, flatten_results, format_table, fused_ranks, load_results,
                           save_results)


def ref_ranks(S, targets_per_row):
    """Stable 0-based rank of the best target per row of a float64 score matrix (ties -> lower index)."""
    out = []
    for q, targets in enumerate(targets_per_row):
        r = [int((S[q] > S[q, t]).sum() + ((S[q] == S[q, t]) & (np.arange(S.shape[1]) < t)).sum()) for t in targets]
        out.append(r)
    return out


def ref_metrics(S, qi):
    """Brute-force retrieval metrics from the full [Q, G] matrix (docs/methods.md, "Common parts")."""
    t2v = np.array([r[0] for r in ref_ranks(S, [[t] for t in qi])])
    items = np.unique(qi)
    all_r = ref_ranks(S.T[items], [np.flatnonzero(qi == g) for g in items])
    v2t = np.array([min(r) for r in all_r])
    m = {}
    for p, r in (("t2v", t2v), ("v2t", v2t)):
        for k in (1, 5, 10):
            m[f"{p}_r{k}"] = 100.0 * np.mean(r < k)
        m[f"{p}_medr"] = np.floor(np.median(r)) + 1
        m[f"{p}_meanr"] = r.mean() + 1
        m[f"{p}_map"] = np.mean(1.0 / (r + 1))
    m["v2t_map"] = np.mean([np.mean(np.arange(1, len(r) + 1) / (np.sort(r) + 1.0)) for r in all_r])
    m["sumr"] = sum(m[f"{p}_r{k}"] for p in ("t2v", "v2t") for k in (1, 5, 10))
    m["mr"] = m["sumr"] / 6
    return m, t2v, v2t, items


def integer_embeddings(rng, n, d=6):
    """Small-integer embeddings: dot products are exact in fp32 and fp64, with many exact ties."""
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32)


def make_set(rng, lang, gallery, n_items_with_caps, caps_per_item, mt=False):
    items = np.sort(rng.choice(len(gallery), n_items_with_caps, replace=False))
    qi = np.repeat(items, caps_per_item)
    q = len(qi)
    emb = integer_embeddings(rng, q, gallery.shape[1])
    queries = [f"{lang}:{i}" for i in range(q)]
    table = {s: e for s, e in zip(queries, emb)}
    mt_q = None
    if mt:
        mt_emb = integer_embeddings(rng, q, gallery.shape[1])
        mt_q = [f"{lang}-mt:{i}" for i in range(q)]
        table.update({s: e for s, e in zip(mt_q, mt_emb)})
    return EvalSet(lang, queries, qi, gallery, [f"g{i}" for i in range(len(gallery))], mt_q), table


def encoders(tables):
    table = {k: v for t in tables for k, v in t.items()}
    return (lambda texts: torch.from_numpy(np.stack([table[t] for t in texts])),
            lambda feats: torch.from_numpy(np.asarray(feats)))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_metrics_match_bruteforce(backend):
    rng = np.random.default_rng(0)
    gallery = integer_embeddings(rng, 40)
    s1, t1 = make_set(rng, "en", gallery, 40, 1)
    s2, t2 = make_set(rng, "de", gallery, 25, 3)  # several captions per item, 15 items without captions
    et, ev = encoders([t1, t2])
    res = evaluate_encoders(et, ev, [s1, s2], batch_size=7, backend=backend, return_ranks=True)
    assert res["languages"] == ["en", "de"]
    for s, table in ((s1, t1), (s2, t2)):
        T = np.stack([table[x] for x in s.queries]).astype(np.float64)
        S = T @ gallery.astype(np.float64).T
        ref, t2v, v2t, items = ref_metrics(S, s.query_item)
        got = res["per_language"][s.lang]
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k] == pytest.approx(ref[k], abs=1e-9), (s.lang, k)
        assert np.array_equal(res["ranks"][s.lang]["t2v"], t2v)
        v2t_full = np.full(len(gallery), -1)
        v2t_full[items] = v2t
        assert np.array_equal(res["ranks"][s.lang]["v2t"], v2t_full)
    for k in res["mean"]:
        assert res["mean"][k] == pytest.approx((res["per_language"]["en"][k] + res["per_language"]["de"][k]) / 2)
    assert "mrv" not in res  # only en has one caption per item


def test_fusion_matches_bruteforce_and_limits():
    rng = np.random.default_rng(1)
    gallery = integer_embeddings(rng, 30)
    s, table = make_set(rng, "de", gallery, 20, 2, mt=True)
    et, ev = encoders([table])
    T = np.stack([table[x] for x in s.queries]).astype(np.float64)
    Tm = np.stack([table[x] for x in s.queries_mt]).astype(np.float64)
    G = gallery.astype(np.float64)
    mm = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    for w in (0.0, 0.3, 1.0):
        res = evaluate_encoders(et, ev, [s], fusion_weight=w, backend="torch", return_ranks=True)
        fused = w * mm(Tm @ G.T) + (1 - w) * mm(T @ G.T)
        # the streamed fusion must agree with the whole-matrix reference; use float64 embeddings to avoid
        # last-bit differences between the fp32 normalisation and the fp64 reference
        t2v, v2t_all = fused_ranks(torch.from_numpy(T), torch.from_numpy(Tm), torch.from_numpy(G),
                                   torch.from_numpy(s.query_item), w, block_rows=3)
        ref, ref_t2v, _, items = ref_metrics(fused, s.query_item)
        assert np.array_equal(t2v.numpy(), ref_t2v)
        ref_all = ref_ranks(fused.T[s.query_item], [[q] for q in range(len(s.queries))])
        assert np.array_equal(v2t_all.numpy(), [r[0] for r in ref_all])
        got = res["fused"]["de"]
        for k in ("t2v_r1", "t2v_r10", "v2t_r5", "sumr", "v2t_map"):
            assert got[k] == pytest.approx(ref[k], abs=1e-9), (w, k)
        assert res["fusion_weight"] == w and res["fused_mean"] == got
    # w = 0 reproduces the target-only ranking (min-max is monotone)
    res = evaluate_encoders(et, ev, [s], fusion_weight=0.0, backend="torch", return_ranks=True)
    assert np.array_equal(res["ranks"]["de"]["fused_t2v"], res["ranks"]["de"]["t2v"])
    assert res["fused"]["de"] == res["per_language"]["de"]


def test_fusion_hand_checked():
    # 2 queries x 3 items. S_tgt = [[1, 0, 0], [0, 0, 1]]; S_mt = [[0, 2, 0], [0, 0, 2]]; min-max over the whole
    # matrix: n_tgt = S_tgt, n_mt = S_mt / 2. w = 0.75: row 0 = [0.25, 0.75, 0], row 1 = [0, 0, 1].
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mt = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    vis = torch.eye(3)
    t2v, v2t = fused_ranks(text, mt, vis, torch.tensor([0, 2]), 0.75)
    assert t2v.tolist() == [1, 0]  # item 1 (0.75) beats item 0 (0.25) for query 0
    assert v2t.tolist() == [0, 0]  # column 0: 0.25 vs 0; column 2: 1 vs 0
    t2v, _ = fused_ranks(text, mt, vis, torch.tensor([0, 2]), 0.25)  # row 0 = [0.75, 0.25, 0]
    assert t2v.tolist() == [0, 0]
    with pytest.raises(ValueError, match="weight"):
        fused_ranks(text, mt, vis, torch.tensor([0, 2]), 1.5)
    with pytest.raises(ValueError, match="text_mt: expected 2 rows"):
        fused_ranks(text, mt[:1], vis, torch.tensor([0, 2]), 0.5)


def test_mrv_hand_checked():
    # gallery = e1, e2, e3 (3 items, d = 3). en queries retrieve perfectly (ranks 0); de query of item 0 points to
    # item 2 -> its t2v rank is 1 (item 2 first; item 0 and 1 tie at 0, item 0 wins by index).
    gallery = np.eye(3, dtype=np.float32)
    en = EvalSet("en", ["a", "b", "c"], np.arange(3), gallery, ["x", "y", "z"])
    de = EvalSet("de", ["A", "B", "C"], np.arange(3), gallery, ["x", "y", "z"])
    table = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1], "A": [0, 0, 1], "B": [0, 1, 0], "C": [0, 0, 1]}
    et = lambda t: torch.tensor([table[x] for x in t], dtype=torch.float32)  # noqa: E731
    ev = lambda f: torch.from_numpy(np.asarray(f))  # noqa: E731
    res = evaluate_encoders(et, ev, [en, de], backend="torch", return_ranks=True)
    assert res["ranks"]["de"]["t2v"].tolist() == [1, 0, 0]
    # v2t de: item 0 column = [0, 0, 0] -> caption 0 rank 0; item 2 column = [1, 0, 1] -> caption C (index 2)
    # has A above it: rank 1
    assert res["ranks"]["de"]["v2t"].tolist() == [0, 0, 1]
    # per-instance std over {en, de}: t2v {0,1},{0,0},{0,0} -> 0.5, 0, 0; v2t {0,0},{0,0},{0,1} -> 0, 0, 0.5
    assert res["mrv"]["t2v"] == pytest.approx(0.5 / 3) and res["mrv"]["v2t"] == pytest.approx(0.5 / 3)
    assert res["mrv"]["languages"] == ["en", "de"] and res["mrv"]["n"] == 3
    flat = flatten_results(res)
    assert flat["mrv"] == pytest.approx(0.5 / 3) and flat["de/t2v_r1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="mrv_langs"):
        evaluate_encoders(et, ev, [en, de], backend="torch", mrv_langs=["en", "ja"])


def test_folds_average_per_fold_metrics():
    rng = np.random.default_rng(2)
    gallery = integer_embeddings(rng, 20)
    s, table = make_set(rng, "en", gallery, 20, 2)
    et, ev = encoders([table])
    res = evaluate_encoders(et, ev, [s], folds=4, backend="torch")
    T = np.stack([table[x] for x in s.queries]).astype(np.float64)
    refs = []
    for part in np.array_split(np.arange(20), 4):
        sel = np.flatnonzero(np.isin(s.query_item, part))
        refs.append(ref_metrics(T[sel] @ gallery[part].astype(np.float64).T, s.query_item[sel] - part[0])[0])
    for k in refs[0]:
        assert res["per_language"]["en"][k] == pytest.approx(np.mean([r[k] for r in refs]), abs=1e-9), k
    assert res["folds"] == 4 and "4 folds" in format_table(res)


def test_report_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    gallery = integer_embeddings(rng, 8)
    s1, t1 = make_set(rng, "en", gallery, 8, 1)
    s2, t2 = make_set(rng, "de", gallery, 8, 1, mt=True)
    et, ev = encoders([t1, t2])
    res = evaluate_encoders(et, ev, [s1, s2], fusion_weight=0.5, backend="torch", return_ranks=True)
    table = format_table(res, "demo")
    assert table.splitlines()[0] == "demo" and "de+mt" in table and "MRV (en, de; N=8)" in table
    p = save_results(res, tmp_path / "r" / "res.json")
    back = load_results(p)
    assert back["per_language"] == res["per_language"]
    assert back["ranks"]["de"]["t2v"] == res["ranks"]["de"]["t2v"].tolist()
    with pytest.raises(ValueError, match=r"encode_text: expected a \[8, d\] tensor"):
        evaluate_encoders(lambda t: torch.zeros(1, 6), ev, [s1], backend="torch")
    with pytest.raises(TypeError, match="encode_visual: expected it to return a torch.Tensor"):
        evaluate_encoders(et, lambda f: np.asarray(f), [s1], backend="torch")
    with pytest.raises(ValueError, match="encode_text: expected d=6"):
        evaluate_encoders(lambda t: torch.zeros(len(t), 5), ev, [s1], backend="torch")
    with pytest.raises(ValueError, match="fusion_weight"):
        evaluate_encoders(et, ev, [s1], fusion_weight=2.0)
    with pytest.raises(ValueError, match="one set per language"):
        evaluate_encoders(et, ev, [s1, s1])
