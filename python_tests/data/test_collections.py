"""Collections on disk: fixture writers for each layout, compact captions, the shipped data exported to the NRCCR
layout, missing files named in errors."""
import numpy as np
import pytest

from ccr_fast.config import load_config
from ccr_fast.data import load_shipped, make_synthetic
from ccr_fast.data.collections import load_data
from ccr_fast.data.compact import CaptionTable
from ccr_fast.data.datasets import read_row
from ccr_fast.data.fixtures import fixture_collection, write_nrccr_layout


def test_caption_table_matches_lists():
    lists = [["a dog", "ein Hund ü"], [], ["x"] * 3]
    t = CaptionTable.from_lists(lists)
    assert [t[i] for i in range(3)] == lists and t.counts().tolist() == [2, 0, 3] and list(t) == lists
    assert t.get(0, 1) == "ein Hund ü"
    with pytest.raises(IndexError):
        t.get(1, 0)


@pytest.mark.parametrize("layout", ["nrccr", "jsonl"])
def test_fixture_round_trip(tmp_path, layout):
    cfg = load_config(None, method="nrccr", languages=["en", "de"], **{"files.layout": layout})
    if layout == "jsonl":
        cfg.files.jsonl_mt = {"val": "val.{lang}2en.jsonl", "test": "test.{lang}2en.jsonl"}
    root = fixture_collection(tmp_path / "multi30k", cfg, n_items=12)
    cfg.data = str(root)
    ref = make_synthetic(12, langs=["en", "de"], source="en", feature_dim=16, n_concepts=12)
    train = load_data(cfg, "train")
    # compact training split: caption tables over the memory-mapped rows that have training captions (the
    # JSON-lines layout keeps every split's rows in one file; only the training rows are items)
    assert isinstance(train.captions["en"], CaptionTable) and isinstance(train.features, np.memmap)
    assert list(train.visual_ids) == ref.visual_ids[:6]
    np.testing.assert_array_equal(np.stack([read_row(train.features, i) for i in range(6)]), ref.features[:6])
    assert [train.captions["en"][i] for i in range(6)] == ref.captions["en"][:6]
    if layout == "nrccr":  # the training split carries the MT and back-translation files
        assert [train.translations["en2de"][i] for i in range(6)] == ref.translations["en2de"][:6]
        assert [train.translations["en2de2en"][i] for i in range(6)] == ref.translations["en2de2en"][:6]
    test = load_data(cfg, "test", ["de"])
    assert test.visual_ids == ref.visual_ids[9:] and test.captions["de"] == ref.captions["de"][9:]
    assert test.translations["de2en"] == ref.translations["de2en"][9:]


def test_missing_translation_file_is_named(tmp_path):
    cfg = load_config(None, method="nrccr", languages=["en", "de"])
    root = fixture_collection(tmp_path / "multi30k", cfg, n_items=12)
    (root / "TextData" / "multi30ktrain_google_enc2de2enc.caption.txt").unlink()
    cfg.data = str(root)
    with pytest.raises(ValueError, match=r"multi30ktrain_google_enc2de2enc\.caption\.txt"):
        load_data(cfg, "train")


def test_missing_tag_is_named_unless_stand_in(tmp_path):
    from ccr_fast.data import NRCCRDataset

    data = load_shipped("val")
    del data.translations["en2de2en"]
    with pytest.raises(ValueError, match="en2de2en.*files.mt_stand_in"):
        NRCCRDataset(data, "en", "de")
    ds = NRCCRDataset(data, "en", "de", stand_in=True)  # the documented stand-in: the source caption itself
    assert ds[0]["back"] == ds[0]["src"]


def test_shipped_exported_to_nrccr_layout_reads_back_identically(tmp_path):
    cfg = load_config(None, method="nrccr", languages=["en", "de"])
    splits = {s: load_shipped(s) for s in ("train", "val", "test")}
    root = write_nrccr_layout(tmp_path / "multi30k", splits, cfg)
    cfg.data = str(root)
    for s, ref in splits.items():
        got = load_data(cfg, s, ["de"])
        assert list(got.visual_ids) == list(ref.visual_ids)
        np.testing.assert_array_equal(np.asarray(got.features), ref.features)
        langs = ["en"] if s == "train" else ["de"]
        for lang in langs:
            assert [got.captions[lang][i] for i in range(len(ref))] == ref.captions[lang]
        if s == "train":
            for tag in ("en2de", "en2de2en"):
                assert [got.translations[tag][i] for i in range(len(ref))] == ref.translations[tag]
