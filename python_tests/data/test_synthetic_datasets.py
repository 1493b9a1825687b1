"""Synthetic generator (determinism, structure, MT noise) and the per-method datasets / eval sets."""
import numpy as np
import pytest

from ccr_fast.data import (CCRData, CCRkDataset, CL2CMDataset, NRCCRDataset, PairDataset, ParallelTextDataset,
                           make_eval_sets, make_synthetic)


def test_synthetic_deterministic():
    a = make_synthetic(30, seed=3, captions_per_item=2)
    b = make_synthetic(30, seed=3, captions_per_item=2)
    c = make_synthetic(30, seed=4, captions_per_item=2)
    assert np.array_equal(a.features, b.features) and a.captions == b.captions and a.translations == b.translations
    assert not np.array_equal(a.features, c.features) and a.captions != c.captions
    assert a.features.shape == (30, 64) and a.features.dtype == np.float32
    assert all(len(x) == 2 for x in a.captions["de"])
    assert sorted(a.translations) == ["de2en", "en2de", "en2de2en", "en2fr", "en2fr2en", "fr2en"]


def test_synthetic_structure_and_noise():
    clean = make_synthetic(40, langs=("en", "de"), concepts_per_item=3, mt_drop=0, mt_substitute=0, seed=1)
    noisy = make_synthetic(40, langs=("en", "de"), concepts_per_item=3, mt_drop=0.5, mt_substitute=0, seed=1)
    words = lambda s: s.split()[1::2]  # noqa: E731  (function word, concept word) pairs
    for i in range(40):
        en, de = clean.captions["en"][i][0], clean.captions["de"][i][0]
        assert len(words(en)) == 3 and len(words(de)) == 3
        # noiseless MT round trip keeps the concept words (order may differ) and no English word is German
        assert sorted(words(clean.translations["en2de2en"][i][0])) == sorted(words(en))
        assert not set(en.split()) & set(de.split())
    n_clean = sum(len(t[0].split()) for t in clean.translations["en2de"])
    n_noisy = sum(len(t[0].split()) for t in noisy.translations["en2de"])
    assert n_noisy < 0.8 * n_clean
    # features: items sharing more concepts are closer (concept mixture model)
    f = make_synthetic(200, feature_noise=0.0, n_concepts=16, concepts_per_item=1, seed=0)
    same = [i for i in range(1, 200) if words(f.captions["en"][i][0]) == words(f.captions["en"][0][0])]
    cos = f.features @ f.features[0] / np.linalg.norm(f.features, axis=1) / np.linalg.norm(f.features[0])
    assert same and np.allclose(cos[same], 1.0, atol=1e-5)
    frames = make_synthetic(5, frames=4, seed=0)
    assert frames.features.shape == (5, 4, 64)
    with pytest.raises(ValueError, match="source"):
        make_synthetic(5, langs=("de",), source="en")
    with pytest.raises(ValueError, match="concepts_per_item"):
        make_synthetic(5, n_concepts=2, concepts_per_item=3)


@pytest.fixture
def small():
    feats = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    caps = {"en": [["e0a", "e0b"], ["e1"], ["e2"]], "de": [["d0"], [], ["d2a", "d2b"]]}
    trans = {"en2de": [["m0a", "m0b"], ["m1"], ["m2"]], "en2de2en": [["b0a", "b0b"], ["b1"], ["b2"]],
             "de2en": [["t0"], [], ["t2a", "t2b"]]}
    return CCRData("small", ["i0", "i1", "i2"], feats, caps, trans)


def test_datasets(small):
    p = PairDataset(small, ["de", "en"])
    item = p[0]
    assert len(p) == 7 and {k: item[k] for k in ("index", "text", "lang")} == {"index": 0, "text": "d0", "lang": "de"}
    assert np.array_equal(item["visual"], [0, 1]) and item["visual"].dtype == np.float32
    assert p[2]["text"] == "d2b" and p[3]["text"] == "e0a" and np.array_equal(p[1]["visual"], [4, 5])
    n = NRCCRDataset(small, "en", "de")
    assert len(n) == 4 and {k: n[1][k] for k in ("index", "src", "tgt", "back")} == \
        {"index": 0, "src": "e0b", "tgt": "m0b", "back": "b0b"}
    c = CL2CMDataset(small, "en", "de")
    assert len(c) == 4 and c[3]["src"] == "e2" and c[3]["tgt"] == "m2"
    assert set(c[3]) == {"visual", "index", "src", "tgt"}
    k = CCRkDataset(small, ["en", "de"])
    assert len(k) == 2 and k.skipped == 1 and k[0]["texts"] == ["e0a", "d0"] and k[1]["texts"] == ["e2", "d2a"]
    pt = ParallelTextDataset(small, "en", "de")
    assert len(pt) == 4 and pt[0] == {"index": 0, "src": "e0a", "tgt": "m0a"}
    pt2 = ParallelTextDataset(small, "de", "en")  # de2en exists: MT pairs
    assert pt2[0] == {"index": 0, "src": "d0", "tgt": "t0"}
    del small.translations["de2en"]
    pt3 = ParallelTextDataset(small, "de", "en")  # falls back to human captions position-wise
    assert [pt3[i]["tgt"] for i in range(len(pt3))] == ["e0a", "e2"]
    with pytest.raises(ValueError, match="no translations 'en2fr'"):
        NRCCRDataset(small, "en", "fr")
    with pytest.raises(ValueError, match="langs: expected a language"):
        PairDataset(small, ["ja"])


def test_frame_dataset_trims_padding():
    d = CCRData("v", ["a", "b"], np.ones((2, 3, 2), np.float32), {"en": [["x"], ["y"]]}, n_frames=np.array([3, 1]))
    assert PairDataset(d)[1]["visual"].shape == (1, 2) and PairDataset(d)[0]["visual"].shape == (3, 2)


def test_make_eval_sets(small):
    sets = make_eval_sets(small, ["en", "de"])
    en, de = sets
    assert en.queries == ["e0a", "e0b", "e1", "e2"] and en.query_item.tolist() == [0, 0, 1, 2]
    assert en.queries_mt is None and de.queries_mt == ["t0", "t2a", "t2b"] and de.query_item.tolist() == [0, 2, 2]
    assert en.gallery is de.gallery and en.item_ids == ["i0", "i1", "i2"] and len(de) == 3
