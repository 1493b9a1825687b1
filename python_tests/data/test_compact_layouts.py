"""Every supported layout's training split is compact (caption tables, memory-mapped pooled features) and gives the
same samples to every method's dataset as the list-based readers: NRCCR with .npy and with a BigFile, IGLUE JSON
lines (with MT files), and explicit file mappings of both."""
import numpy as np
import pytest

from ccr_fast.config import load_config
from ccr_fast.data import (CCRkDataset, CL2CMDataset, NRCCRDataset, PairDataset, load_jsonl_collection,
                           load_nrccr_collection)
from ccr_fast.data.collections import load_data
from ccr_fast.data.compact import CaptionTable
from ccr_fast.data.fixtures import fixture_collection
from ccr_fast.data.readers import DataFormatError


def _to_bigfile(root):
    """Replace the training .npy of an NRCCR fixture by a BigFile folder (shape.txt, id.txt, feature.bin)."""
    feat_dir = root / "FeatureData" / "resnet_152"
    arr = np.load(feat_dir / "train-resnet_152-avgpool.npy").astype(np.float32)
    ids = (root / "FeatureData" / "train_id.txt").read_text().split()
    big = root / "FeatureData" / "bigfile_train"
    big.mkdir()
    (big / "shape.txt").write_text(f"{arr.shape[0]} {arr.shape[1]}\n")
    (big / "id.txt").write_text(" ".join(ids) + "\n")
    arr.tofile(big / "feature.bin")
    return big, arr, ids


def _samples(ds):
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ds[i].items()} for i in range(len(ds))]


def _same_datasets(compact, ref):
    assert isinstance(compact.captions["en"], CaptionTable) and isinstance(compact.features, np.memmap)
    for make in (lambda d: NRCCRDataset(d, "en", "de"), lambda d: CL2CMDataset(d, "en", "de"),
                 lambda d: PairDataset(d, ["en"])):
        a, b = _samples(make(compact)), _samples(make(ref))
        for s in a + b:
            s.pop("index")
        assert a == b


@pytest.mark.parametrize("features", ["npy", "bigfile"])
def test_nrccr_training_split_is_compact(tmp_path, features):
    cfg = load_config(None, method="nrccr", languages=["en", "de"])
    root = fixture_collection(tmp_path / "multi30k", cfg, n_items=16)
    caps = [root / "TextData" / f"{n}.caption.txt" for n in
            ("multi30ktrain_enc", "multi30ktrain_google_enc2de", "multi30ktrain_google_enc2de2enc")]
    feat = root / "FeatureData" / "resnet_152" / "train-resnet_152-avgpool.npy"
    ids = root / "FeatureData" / "train_id.txt"
    if features == "bigfile":
        big, _, _ = _to_bigfile(root)
        cfg.files.feature = "bigfile_train"
        feat, ids = big, None
    cfg.data = str(root)
    got = load_data(cfg, "train")
    ref = load_nrccr_collection(root, caps, feat, id_file=ids)
    _same_datasets(got, ref)
    # an explicit file mapping of the same files reads the same way
    cfg.data = {"root": str(root), "train": {"captions": [str(c) for c in caps], "features": str(feat),
                                             **({"ids": str(ids)} if ids else {})}}
    _same_datasets(load_data(cfg, "train"), ref)


def test_jsonl_training_split_is_compact(tmp_path):
    cfg = load_config(None, method="ccrk", languages=["en", "de", "fr"], **{"files.layout": "jsonl"})
    cfg.files.jsonl_mt = {"train": "train.{lang}2en.jsonl"}
    root = fixture_collection(tmp_path / "xflickrco", cfg, n_items=16)
    cfg.data = str(root)
    got = load_data(cfg, "train")
    files = {lang: root / f"train.{lang}.jsonl" for lang in ("en", "de", "fr")}
    mt = {lang: root / f"train.{lang}2en.jsonl" for lang in ("de", "fr")}
    ref = load_jsonl_collection(files, root / "features.npy", mt_files=mt)
    assert isinstance(got.captions["de"], CaptionTable) and isinstance(got.features, np.memmap)
    assert sorted(got.translations) == sorted(ref.translations) == ["de2en", "fr2en"]
    a = _samples(CCRkDataset(got, ["en", "de", "fr"], groups="max"))
    b = _samples(CCRkDataset(ref, ["en", "de", "fr"], groups="max"))
    for s in a + b:
        s.pop("index")
    assert a == b and len(a) > 0
    row = {v: i for i, v in enumerate(got.visual_ids)}
    for i, vid in enumerate(ref.visual_ids):
        assert got.translations["fr2en"][row[vid]] == ref.translations["fr2en"][i]
    # the same files named in a mapping
    cfg.data = {"root": str(root), "train": {"jsonl": {k: str(v) for k, v in files.items()},
                                             "mt": {k: str(v) for k, v in mt.items()}, "features": "features.npy"}}
    m = load_data(cfg, "train")
    assert [m.captions["fr"][i] for i in range(len(m))] == [got.captions["fr"][i] for i in range(len(got))]
    # a translation file that does not pair with its captions is named
    lines = mt["fr"].read_text().splitlines()
    mt["fr"].write_text("\n".join(lines[1:]) + "\n")
    cfg.data = str(root)
    with pytest.raises(DataFormatError, match=r"train\.fr2en\.jsonl"):
        load_data(cfg, "train")


@pytest.mark.parametrize("order", ["train_block_in_the_middle", "scattered"])
def test_shared_bigfile_keeps_only_training_rows(tmp_path, order):
    """A BigFile holding every split's items (the NRCCR releases' FeatureData/<feature>/): the training split's items
    are the captioned rows only (a block stays memory-mapped, scattered rows are copied), with the right features."""
    cfg = load_config(None, method="nrccr", languages=["en", "de"])
    root = fixture_collection(tmp_path / "multi30k", cfg, n_items=16)
    big, arr, ids = _to_bigfile(root)
    other = np.random.default_rng(0).standard_normal((5, arr.shape[1])).astype(np.float32)
    rows = np.concatenate([other[:2], arr, other[2:]])
    names = ["o0", "o1"] + ids + ["o2", "o3", "o4"]
    if order == "scattered":
        perm = np.random.default_rng(1).permutation(len(names))
        rows, names = rows[perm], [names[i] for i in perm]
    (big / "shape.txt").write_text(f"{rows.shape[0]} {rows.shape[1]}\n")
    (big / "id.txt").write_text(" ".join(names) + "\n")
    rows.tofile(big / "feature.bin")
    cfg.files.feature = "bigfile_train"
    cfg.data = str(root)
    got = load_data(cfg, "train")
    assert sorted(got.visual_ids) == sorted(ids) and isinstance(got.features, np.memmap) == (order != "scattered")
    want = {v: arr[i] for i, v in enumerate(ids)}
    ds = NRCCRDataset(got, "en", "de")
    for n in range(len(ds)):
        s = ds[n]
        np.testing.assert_array_equal(s["visual"], want[got.visual_ids[s["index"]]])
