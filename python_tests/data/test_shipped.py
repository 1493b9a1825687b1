"""The shipped real data: integrity, shapes, id/caption alignment with the raw files, the split, determinism."""
import gzip
import hashlib
import json

import numpy as np
import pytest

from ccr_fast.data import SHIPPED_LANGUAGES, load_shipped, shipped_data_dir, shipped_split_indices
from ccr_fast.data.shipped import SPLIT_SEED


@pytest.fixture(scope="module")
def root():
    return shipped_data_dir()


@pytest.fixture(scope="module")
def full():
    return load_shipped("all")


def test_sha256sums(root):
    lines = (root / "SHA256SUMS").read_text().split("\n")
    entries = [line.split("  ", 1) for line in lines if line.strip()]
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert sorted(on_disk - {"README.md", "SHA256SUMS", "MANIFEST.tsv"}) == sorted(n for _, n in entries)
    for digest, name in entries:
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    assert (root / "README.md").is_file()


def test_split_sizes_disjoint_deterministic():
    parts = {s: shipped_split_indices(s) for s in ("train", "val", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 700, "val": 100, "test": 200}
    allidx = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(allidx), np.arange(1000))
    perm = np.random.default_rng(SPLIT_SEED).permutation(1000)
    assert np.array_equal(parts["test"], np.sort(perm[800:]))
    # pinned: a change of the split would silently change every reported number
    assert parts["val"][:5].tolist() == np.sort(perm[700:800])[:5].tolist() and SPLIT_SEED == 20221010
    for s, p in parts.items():
        assert np.all(np.diff(p) > 0), s
    with pytest.raises(ValueError, match="split: expected one of"):
        shipped_split_indices("dev")


def test_shapes_and_languages(full):
    assert full.features.shape == (1000, 2048) and full.features.dtype == np.float32
    assert full.languages == SHIPPED_LANGUAGES and len(SHIPPED_LANGUAGES) == 10
    for lang in SHIPPED_LANGUAGES:
        missing = [i for i, c in enumerate(full.captions[lang]) if len(c) != 1]
        assert missing == ([900] if lang == "id" else []), lang  # xFlickr&CO id line 900 is empty upstream
        assert all(c[0].strip() for c in full.captions[lang] if c), lang
    assert 900 in shipped_split_indices("train") and full.translations["id2en"][900] == []
    assert sorted(full.translations) == sorted(
        ["en2de", "en2fr", "en2cs", "en2de2en", "en2fr2en", "en2cs2en", "es2en", "id2en", "ja2en", "ru2en",
         "tr2en", "zh2en"])


def test_alignment_with_raw_files(root, full):
    raw = np.load(root / "features/test_2016_flickr-resnet50-avgpool.npy")
    images = (root / "multi30k/task1/image_splits/test_2016_flickr.txt").read_text().split()
    assert full.visual_ids == [i[:-4] for i in images]
    np.testing.assert_array_equal(full.features, raw.astype(np.float32))
    for lang in ("en", "de", "fr", "cs"):
        lines = gzip.open(root / f"multi30k/task1/raw/test_2016_flickr.{lang}.gz", "rt").read().splitlines()
        assert [c[0] for c in full.captions[lang]] == [x.strip() for x in lines]
    recs = [json.loads(x) for x in gzip.open(root / "xflickrco/test.ja.jsonl.gz", "rt")][:1000]
    assert len(recs) == 1000
    assert [r["id"] for r in recs] == full.visual_ids
    assert [c[0] for c in full.captions["ja"]] == [r["sentences"][0] for r in recs]
    gmt = [json.loads(x) for x in gzip.open(root / "xflickrco/test_gmt.zh.jsonl.gz", "rt")][:1000]
    assert [c[0] for c in full.translations["zh2en"]] == [r["sentences"][0] for r in gmt]
    assert full.translations["en2de"] == full.captions["de"]
    assert all(b[0] != e[0] for b, e in zip(full.translations["en2de2en"], full.captions["en"]))


def test_splits_are_subsets(full):
    for split in ("train", "val", "test"):
        d = load_shipped(split)
        idx = shipped_split_indices(split)
        assert d.name == f"shipped/{split}" and len(d) == len(idx)
        assert d.visual_ids == [full.visual_ids[i] for i in idx]
        np.testing.assert_array_equal(d.features, full.features[idx])
        assert d.captions["tr"] == [full.captions["tr"][i] for i in idx]
    a, b = load_shipped("test"), load_shipped("test")
    assert a.captions == b.captions and np.array_equal(a.features, b.features)
    a.captions["en"][0][0] = "mutated"
    assert load_shipped("test").captions["en"][0][0] != "mutated"  # the cache hands out copies


def test_de_source_xflickrco(root):
    d = load_shipped("val", de_source="xflickrco")
    assert "de2en" in d.translations and d.translations["en2de"] != d.captions["de"]
    with pytest.raises(ValueError, match="de_source"):
        load_shipped("val", de_source="task2")


def test_env_var_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CCR_FAST_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CCR_FAST_DATA="):
        shipped_data_dir()
