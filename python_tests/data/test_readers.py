"""Readers and builders on small fixture files written to tmp dirs (incl. malformed input)."""
import gzip
import json

import numpy as np
import pytest

from ccr_fast.data import CCRData, DataFormatError, load_jsonl_collection, load_nrccr_collection
from ccr_fast.data.readers import (BigFile, parse_cap_id, read_caption_records, read_hdf5_features, read_multi30k,
                                   read_npy_features, read_nrccr_captions, read_video2frames)
from ccr_fast.data.text import clean_english, normalize_text, pre_caption, strip_accents


def _write(path, text, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def nrccr_root(tmp_path):
    root = tmp_path / "multi30k"
    t = root / "TextData"
    _write(t / "m30ktrain_enc.caption.txt",
           "img1.jpg#enc#0 A dog runs.\nimg1.jpg#enc#1 A brown dog.\nimg2.jpg#enc#0 Two men talk.\n")
    # translations listed in another order: alignment must follow (visual_id, k), not line order
    _write(t / "m30ktrain_google_enc2de.caption.txt",
           "img2.jpg#enc2de#0 Zwei Männer reden.\nimg1.jpg#enc2de#1 Ein brauner Hund.\n"
           "img1.jpg#enc2de#0 Ein Hund läuft.\n")
    _write(t / "m30ktrain_google_enc2de2enc.caption.txt", "img1#enc2de2enc#0 A dog is running.\n"
           "img1#enc2de2enc#1 A brown dog.\nimg2#enc2de2enc#0 Two men are talking.\n", gz=False)
    feats = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    (root / "FeatureData").mkdir(parents=True)
    np.save(root / "FeatureData" / "x.npy", feats)
    _write(root / "FeatureData" / "x.ids.txt", "img0.jpg\nimg2.jpg\nimg1.jpg\n")
    return root


def test_parse_cap_id():
    assert parse_cap_id("yBsSqb4orpw_000000_000010#enc#5") == ("yBsSqb4orpw_000000_000010", "enc", 5)
    assert parse_cap_id("1000092795.jpg#enc2zh#0") == ("1000092795", "enc2zh", 0)
    with pytest.raises(DataFormatError, match="expected '<visual_id>#<tag>#<k>'"):
        parse_cap_id("img1#enc")


def test_nrccr_collection_alignment(nrccr_root):
    d = load_nrccr_collection(nrccr_root, ["m30ktrain_enc", "m30ktrain_google_enc2de",
                                           "m30ktrain_google_enc2de2enc"], "x.npy")
    assert isinstance(d, CCRData) and d.visual_ids == ["img1", "img2"]
    assert d.captions["en"] == [["A dog runs.", "A brown dog."], ["Two men talk."]]
    assert d.translations["en2de"] == [["Ein Hund läuft.", "Ein brauner Hund."], ["Zwei Männer reden."]]
    assert d.translations["en2de2en"][0] == ["A dog is running.", "A brown dog."]
    # features follow the id file: img1 is row 2, img2 row 1
    np.testing.assert_array_equal(d.features, np.array([[8, 9, 10, 11], [4, 5, 6, 7]], np.float32))
    assert d.features.dtype == np.float32


def test_nrccr_malformed_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.caption.txt", "img1#enc#0 fine\nimg2#enc#0\n")
    with pytest.raises(DataFormatError, match=r"bad\.caption\.txt:2:"):
        read_nrccr_captions(p)
    p = _write(tmp_path / "bad2.caption.txt", "img1#enc#0 fine\n\nimg2-enc-0 text here\n")
    with pytest.raises(DataFormatError, match=r"bad2\.caption\.txt:3: caption id 'img2-enc-0'"):
        read_nrccr_captions(p)
    p = _write(tmp_path / "dup.caption.txt", "img1#enc#0 a\nimg1#enc#0 b\n")
    with pytest.raises(DataFormatError, match=r"dup\.caption\.txt:2: .*already on line 1"):
        read_nrccr_captions(p)


def test_nrccr_missing_translation_and_orphan(nrccr_root):
    t = nrccr_root / "TextData"
    _write(t / "short_enc2de.caption.txt", "img1#enc2de#0 Ein Hund.\n")
    with pytest.raises(DataFormatError, match="have no translation"):
        load_nrccr_collection(nrccr_root, ["m30ktrain_enc", "short_enc2de"], "x.npy")
    _write(t / "orphan_enc2de.caption.txt", "img1#enc2de#0 a\nimg1#enc2de#1 b\nimg2#enc2de#0 c\nimg2#enc2de#7 d\n")
    with pytest.raises(DataFormatError, match="img2#enc2de#7.*no 'en' source"):
        load_nrccr_collection(nrccr_root, ["m30ktrain_enc", "orphan_enc2de"], "x.npy")
    with pytest.raises(DataFormatError, match="no 'en' caption file"):
        load_nrccr_collection(nrccr_root, ["m30ktrain_google_enc2de"], "x.npy")


def test_nrccr_missing_features(nrccr_root):
    _write(nrccr_root / "TextData" / "t_de.caption.txt", "img9#de#0 Ein Bild.\n")
    with pytest.raises(DataFormatError, match="no feature row.*img9"):
        load_nrccr_collection(nrccr_root, ["t_de"], "x.npy")


def test_npy_rows_must_match_ids(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 2), np.float32))
    _write(tmp_path / "f.ids.txt", "a b\n")
    with pytest.raises(DataFormatError, match=r"f\.npy: expected shape \[N=2"):
        read_npy_features(tmp_path / "f.npy")


def _bigfile(folder, ids, feats, v2f=None):
    folder.mkdir(parents=True)
    (folder / "shape.txt").write_text(f"{feats.shape[0]} {feats.shape[1]}\n")
    (folder / "id.txt").write_text(" ".join(ids))
    feats.astype(np.float32).tofile(folder / "feature.bin")
    if v2f is not None:
        (folder / "video2frames.txt").write_text(v2f)


def test_bigfile_and_frames(tmp_path):
    feats = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    frames = ["v1_0", "v1_1", "v1_2", "v2_0", "v2_1"]
    root = tmp_path / "vatex"
    _bigfile(root / "FeatureData" / "i3d", frames, feats, "{'v1': ['v1_0', 'v1_1', 'v1_2'],\n 'v2': ['v2_0', 'v2_1']}")
    bf = BigFile(root / "FeatureData" / "i3d")
    assert bf.shape == (5, 3) and isinstance(bf.features, np.memmap)
    np.testing.assert_array_equal(bf.read(["v2_1", "v1_0"]), feats[[4, 0]])
    _write(root / "TextData" / "vatextest_zh.caption.txt", "v2.mp4#zh#0 两个人\nv1.mp4#zh#0 一只狗\nv1.mp4#zh#1 狗\n")
    d = load_nrccr_collection(root, ["vatextest_zh"], "i3d")
    assert d.visual_ids == ["v2", "v1"] and d.features.shape == (2, 3, 3)
    np.testing.assert_array_equal(d.n_frames, [2, 3])
    np.testing.assert_array_equal(d.features[0, :2], feats[3:5])
    np.testing.assert_array_equal(d.features[0, 2], 0)
    np.testing.assert_array_equal(d.features[1], feats[:3])
    d2 = load_nrccr_collection(root, ["vatextest_zh"], "i3d", max_frames=2)
    assert d2.features.shape == (2, 2, 3) and d2.n_frames.tolist() == [2, 2]


def test_bigfile_errors(tmp_path):
    _bigfile(tmp_path / "b", ["a", "b"], np.zeros((2, 3)))
    (tmp_path / "b" / "feature.bin").write_bytes(b"\0" * 20)
    with pytest.raises(DataFormatError, match=r"feature\.bin: expected 24 bytes"):
        BigFile(tmp_path / "b")
    (tmp_path / "b" / "shape.txt").write_text("2 x\n")
    with pytest.raises(DataFormatError, match=r"shape\.txt:1: expected 'N D'"):
        BigFile(tmp_path / "b")


def test_video2frames_is_not_eval(tmp_path):
    p = _write(tmp_path / "video2frames.txt", "__import__('os').system('echo hacked')")
    with pytest.raises(DataFormatError, match="video2frames.txt"):
        read_video2frames(p)
    p = _write(tmp_path / "v2.txt", "{'a': ['a_0',\n 'a_1'\n")
    with pytest.raises(DataFormatError, match=r"v2\.txt"):
        read_video2frames(p)


def test_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["feats"] = np.eye(3, dtype=np.float32)
        f["ids"] = np.array([b"a", b"b", b"c"])
    ids, x = read_hdf5_features(tmp_path / "f.h5", "feats")
    assert ids == ["a", "b", "c"] and x.shape == (3, 3)


def test_json_jsonl_collection(tmp_path):
    cclm = [{"caption": "a dog", "image": "flickr/1.jpg", "image_id": 0},
            {"caption": "a brown dog", "image": "flickr/1.jpg", "image_id": 0},
            {"caption": ["two men", "men"], "image": "flickr/2.jpg", "image_id": 1}]
    _write(tmp_path / "train.en.json", json.dumps(cclm))
    _write(tmp_path / "test.de.jsonl.gz", '{"sentences": ["Hund"], "id": "1", "img_path": "1.jpg"}\n'
           '{"sentences": ["Männer"], "id": "2", "img_path": "2.jpg"}\n'
           '{"sentences": ["Katze"], "id": "77", "img_path": "77.jpg"}\n', gz=True)
    _write(tmp_path / "test_gmt.de.jsonl", '{"sentences": ["dog"], "id": "1", "img_path": "1.jpg"}\n'
           '{"sentences": ["men"], "id": "2", "img_path": "2.jpg"}\n'
           '{"sentences": ["cat"], "id": "77", "img_path": "77.jpg"}\n')
    recs = read_caption_records(tmp_path / "train.en.json")
    assert recs[0] == {"key": "1", "image": "flickr/1.jpg", "captions": ["a dog"]}
    feats = np.eye(3, dtype=np.float32)
    files = {"en": tmp_path / "train.en.json", "de": tmp_path / "test.de.jsonl.gz"}
    with pytest.raises(DataFormatError, match="no feature row.*77"):
        load_jsonl_collection(files, feats, ["2.jpg", "9.jpg", "1.jpg"])
    d = load_jsonl_collection(files, feats, ["2.jpg", "9.jpg", "1.jpg"],
                              mt_files={"de": tmp_path / "test_gmt.de.jsonl"},
                              missing_features="drop")
    assert d.visual_ids == ["2", "1"]
    assert d.captions["en"] == [["two men", "men"], ["a dog", "a brown dog"]]
    assert d.captions["de"] == [["Männer"], ["Hund"]] and d.translations["de2en"] == [["men"], ["dog"]]
    np.testing.assert_array_equal(d.features, feats[[0, 2]])


def test_jsonl_malformed(tmp_path):
    p = _write(tmp_path / "x.jsonl", '{"sentences": ["a"], "id": "1"}\n{"sentences": ["b"], "id": \n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: invalid JSON"):
        read_caption_records(p)
    p = _write(tmp_path / "y.jsonl", '{"sentences": ["a"], "id": "1"}\n\n{"text": "b", "id": "2"}\n')
    with pytest.raises(DataFormatError, match=r"y\.jsonl:3: expected key 'caption' or 'sentences'"):
        read_caption_records(p)
    p = _write(tmp_path / "z.json", '[{"caption": 3, "image": "a.jpg"}]')
    with pytest.raises(DataFormatError, match=r"z\.json:record 0: captions must be"):
        read_caption_records(p)


def test_multi30k_reader(tmp_path):
    _write(tmp_path / "raw" / "test.en.gz", "A dog.\nTwo men.\n", gz=True)
    _write(tmp_path / "imgs.txt", "1.jpg\n2.jpg\n")
    assert read_multi30k(tmp_path / "raw", "test", "en", tmp_path / "imgs.txt") == [("1", "A dog."), ("2", "Two men.")]
    _write(tmp_path / "imgs3.txt", "1.jpg\n2.jpg\n3.jpg\n")
    with pytest.raises(DataFormatError, match=r"test\.en\.gz: expected 3 lines"):
        read_multi30k(tmp_path / "raw", "test", "en", tmp_path / "imgs3.txt")
    _write(tmp_path / "raw" / "test.de", "Hund.\n \n")
    with pytest.raises(DataFormatError, match=r"test\.de:2: empty caption"):
        read_multi30k(tmp_path / "raw", "test", "de", tmp_path / "imgs.txt")


def test_ccrdata_validation_and_subset():
    caps = {"en": [["a", "b"], ["c"], []]}
    with pytest.raises(ValueError, match=r"translations\['en2de'\]\[0\]: expected 2 captions"):
        CCRData("x", ["i", "j", "k"], np.zeros((3, 2), np.float32), caps, {"en2de": [["A"], ["C"], []]})
    with pytest.raises(ValueError, match=r"features: expected shape \[N=3"):
        CCRData("x", ["i", "j", "k"], np.zeros((2, 2), np.float32), caps)
    with pytest.raises(ValueError, match="source language 'de' has no captions"):
        CCRData("x", ["i", "j", "k"], np.zeros((3, 2), np.float32), caps, {"de2en": [[], [], []]})
    d = CCRData("x", ["i", "j", "k"], np.arange(6, dtype=np.float32).reshape(3, 2), caps,
                {"en2de": [["A", "B"], ["C"], []]})
    s = d.subset([2, 0])
    assert s.visual_ids == ["k", "i"] and s.captions["en"] == [[], ["a", "b"]]
    assert s.translations["en2de"] == [[], ["A", "B"]] and s.features.tolist() == [[4, 5], [0, 1]]
    assert d.subset(np.array([False, True, False])).visual_ids == ["j"]


def test_text_helpers():
    assert clean_english("a man, in a hat!!") == "A man in a hat."
    assert clean_english("Is it a DOG?") == "Is it a dog."
    assert strip_accents("für příliš") == "fur prilis"
    assert strip_accents("がパン") == "かハン"  # the ja dakuten effect of BERT accent stripping
    assert strip_accents("一只狗") == "一只狗"
    assert normalize_text("Für", strip_accents=False) == "für"
    assert normalize_text("Für", lowercase=False) == "Fur"
    assert pre_caption("A man--in a (red) hat; near/the car!", 30) == "a man in a red hat near the car"
    assert pre_caption("one two three four", 2) == "one two"
    with pytest.raises(ValueError, match="max_words"):
        pre_caption("x", 0)
