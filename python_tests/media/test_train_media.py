"""Training end to end from image files (CSV/TSV, JSON lines, video frame folders, NRCCR image folder) with a tiny
vision tower and the shipped text encoder; checkpoints evaluate to the same numbers; extracted features train the
same model as the tower on the fly; bad media."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

import ccr_fast
from ccr_fast.data.media import BadMediaError

from media_helpers import write_csv, write_images

FAST = {"method": "baseline", "languages": ["en", "de"], "max_steps": 3, "epochs": 1, "batch_size": 8,
        "progress": False, "model.trainable_layers": [], "model.cache_text_states": True, "files.mt_stand_in": True,
        "model.visual_hidden": 32, "model.embed_dim": 32}


def csv_data(root, name="csv"):
    return {"root": str(root), "train": {name: "train.csv"}, "val": {name: "val.csv"}, "test": {name: "test.csv"}}


def _metrics(m):
    return {k: v for k, v in m.items() if k != "train_seconds"}


def test_csv_clip_default_method_trains_and_checkpoint_evaluates_same(towers, image_set, tmp_path):
    """CSV + tiny CLIP tower + the shipped text encoder with the default method (CCR^k)."""
    res = ccr_fast.train({"data": csv_data(image_set), "visual_encoder": str(towers("clip")),
                          "languages": ["en", "de"], "max_steps": 2, "epochs": 1, "batch_size": 8,
                          "progress": False, "output_dir": str(tmp_path), "model.trainable_layers": [],
                          "model.cache_text_states": True})
    assert res.metrics["languages"] == ["de"] or "de" in res.metrics
    again = ccr_fast.evaluate(res.best_checkpoint)
    assert _metrics(again) == _metrics(res.metrics)


@pytest.mark.parametrize("kind", ["clip", "siglip", "convnext"])
def test_csv_trains_and_checkpoint_evaluates_same(towers, image_set, tmp_path, kind):
    res = ccr_fast.train({**FAST, "data": csv_data(image_set), "visual_encoder": str(towers(kind)),
                          "output_dir": str(tmp_path)})
    saved = json.loads((tmp_path.glob("**/config.json").__next__()).read_text())
    assert saved["visual_encoder"] == str(towers(kind))
    assert _metrics(ccr_fast.evaluate(res.best_checkpoint)) == _metrics(res.metrics)


def test_extracted_features_train_the_same_model(towers, image_set, tmp_path):
    tower = str(towers("vit"))
    feats = ccr_fast.extract_features(tower, image_set / "images", tmp_path / "vit.npy", dtype="float32",
                                      batch_size=16, progress=False)
    data = csv_data(image_set)
    for split in ("train", "val", "test"):
        data[split]["features"] = feats
    a = ccr_fast.train({**FAST, "data": data, "output_dir": str(tmp_path / "a")})
    b = ccr_fast.train({**FAST, "data": csv_data(image_set), "visual_encoder": tower, "files.media_batch_size": 16,
                        "output_dir": str(tmp_path / "b")})
    assert _metrics(a.metrics) == _metrics(b.metrics)
    from ccr_fast.training.checkpoint import load_checkpoint_model

    ma, _ = load_checkpoint_model(a.best_checkpoint)
    mb, _ = load_checkpoint_model(b.best_checkpoint)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_tsv_patch_tokens(towers, image_set, tmp_path):
    for split in ("train", "val", "test"):
        with open(image_set / f"{split}.csv", newline="") as fh, open(tmp_path / f"{split}.tsv", "w", newline="") as g:
            w = csv.writer(g, delimiter="\t")
            for row in csv.reader(fh):
                w.writerow([str(image_set / row[0]) if row[0] != "image" else "image", *row[1:]])
    data = {"root": str(tmp_path), **{s: {"csv": f"{s}.tsv"} for s in ("train", "val", "test")}}
    res = ccr_fast.train({**FAST, "method": "ccrk", "data": data, "visual_encoder": str(towers("clip")),
                          "model.visual_tokens": "patches", "output_dir": str(tmp_path / "run")})
    assert np.isfinite(res.metrics["de"]["sumr"])


def test_jsonl_img_path_under_image_root(towers, image_set, tmp_path):
    coll = tmp_path / "coll"
    coll.mkdir()
    rows = {}
    with open(image_set / "train.csv") as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(r["lang"], {}).setdefault(r["image"], []).append(r["caption"])
    for split in ("train", "val", "test"):
        for lang, per in rows.items():
            with open(coll / f"{split}.{lang}.jsonl", "w") as fh:
                for i, (img, caps) in enumerate(per.items()):
                    if split == "train" or i >= 8:
                        fh.write(json.dumps({"id": i, "img_path": img, "sentences": caps}) + "\n")
    res = ccr_fast.train({**FAST, "data": str(coll), "visual_encoder": str(towers("swin")),
                          "files.image_root": str(image_set), "output_dir": str(tmp_path / "run")})
    assert _metrics(ccr_fast.evaluate(res.best_checkpoint)) == _metrics(res.metrics)
    with pytest.raises(ValueError, match="img0"):  # img_path resolved under the wrong root: names the file
        ccr_fast.train({**FAST, "data": str(coll), "visual_encoder": str(towers("swin")),
                        "output_dir": str(tmp_path / "run2")})


def test_video_frame_folders(towers, tmp_path):
    names = []
    for v in range(12):
        write_images(tmp_path / "videos" / f"vid{v:02d}", 3 + v % 4, seed=v)
        names.append(f"videos/vid{v:02d}")
    write_csv(tmp_path / "train.csv", names[:8], column="video")
    write_csv(tmp_path / "val.csv", names[8:], column="video")
    write_csv(tmp_path / "test.csv", names[8:], column="video")
    base = {**FAST, "data": csv_data(tmp_path), "visual_encoder": str(towers("clip")), "files.frames_per_video": 3}
    res = ccr_fast.train({**base, "output_dir": str(tmp_path / "mean")})
    assert _metrics(ccr_fast.evaluate(res.best_checkpoint)) == _metrics(res.metrics)
    res = ccr_fast.train({**base, "method": "nrccr", "files.video_frames": "keep",
                          "model.visual_encoder": "transformer", "output_dir": str(tmp_path / "keep")})
    assert np.isfinite(res.metrics["de"]["sumr"])


def test_nrccr_layout_with_image_folder(towers, image_set, tmp_path):
    coll = tmp_path / "m30k"
    (coll / "TextData").mkdir(parents=True)
    shutil.copytree(image_set / "images", coll / "ImageData")
    ids = [f"img{i:03d}" for i in range(24)]

    def write(name, tag, items, text):
        with open(coll / "TextData" / f"{name}.caption.txt", "w") as fh:
            for i in items:
                fh.write(f"{ids[i]}#{tag}#0 {text(i)}\n")

    en = lambda i: f"a photo number {i % 8}"  # noqa: E731
    write("m30ktrain_enc", "enc", range(16), en)
    write("m30ktrain_google_enc2de", "enc2de", range(16), lambda i: f"ein Foto {i % 8}")
    write("m30ktrain_google_enc2de2enc", "enc2de2enc", range(16), en)
    write("m30kval_de_task1", "de", range(16, 24), lambda i: f"ein Foto {i % 8}")
    write("m30ktest_de_2016_task1", "de", range(16, 24), lambda i: f"ein Foto {i % 8}")
    res = ccr_fast.train({**FAST, "method": "nrccr", "data": str(coll), "files.coll": "m30k",
                          "visual_encoder": str(towers("clip")), "output_dir": str(tmp_path / "run")})
    assert _metrics(ccr_fast.evaluate(res.best_checkpoint)) == _metrics(res.metrics)
    # the shipped NRCCR CLIP-variant config reads the same layout (only data, the towers and CPU sizes changed)
    res = ccr_fast.train("nrccr_multi30k_de_clip", data=str(coll), output_dir=str(tmp_path / "run2"),
                         **{**FAST, "method": "nrccr", "files.coll": "m30k", "visual_encoder": str(towers("clip")),
                            "text_encoder": None, "model.text_hidden": 32, "model.qk_dim": 32, "batch_size": 8})
    assert np.isfinite(res.metrics["sumr"])


def test_corrupt_image_names_the_file_or_is_skipped(towers, image_set, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(image_set / "images", root / "images")
    (root / "images" / "img005.jpg").write_bytes(b"\xff\xd8 truncated")
    for s in ("train", "val", "test"):
        shutil.copy(image_set / f"{s}.csv", root / f"{s}.csv")
    cfg = {**FAST, "data": csv_data(root), "visual_encoder": str(towers("clip")), "output_dir": str(tmp_path / "r")}
    with pytest.raises(BadMediaError, match="img005.jpg"):
        ccr_fast.train(cfg)
    from ccr_fast.data.media_data import last_report

    res = ccr_fast.train({**cfg, "files.skip_bad_media": True})
    assert any("skipped 1" in r and "img005.jpg" in r for r in last_report())
    assert "img005.jpg" in capsys.readouterr().out
    assert np.isfinite(res.metrics["de"]["sumr"])


def test_visual_encoder_needs_raw_media(towers, tmp_path):
    with pytest.raises(ValueError, match="visual_encoder"):
        ccr_fast.train({**FAST, "data": "synthetic", "visual_encoder": str(towers("clip")),
                        "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="visual_encoder"):
        ccr_fast.train({**FAST, "data": {"train": {"csv": "x.csv"}}, "output_dir": str(tmp_path)})


def test_retriever_encodes_image_paths(towers, image_set, tmp_path):
    """ccr_fast.load on a vision-tower checkpoint: image paths and PIL images encode as the tower's extracted
    features do, and searching an index of image files finds the items."""
    from PIL import Image

    tower = str(towers("clip"))
    res = ccr_fast.train({**FAST, "data": csv_data(image_set), "visual_encoder": tower,
                          "output_dir": str(tmp_path / "run")})
    r = ccr_fast.load(res.best_checkpoint, device="cpu")
    files = sorted((image_set / "images").iterdir())[16:]
    feats = ccr_fast.extract_features(tower, [str(f) for f in files], tmp_path / "t.npy", dtype="float32",
                                      batch_size=32, progress=False)
    from_paths = r.encode_images([str(f) for f in files])
    from_pil = r.encode_images([Image.open(f) for f in files])
    from_feats = r.encode_images(np.load(feats))
    assert from_paths.shape == (8, 32)
    torch.testing.assert_close(from_paths, from_feats, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_pil, from_feats, rtol=1e-5, atol=1e-6)
    index = r.build_index([str(f) for f in files], ids=[f.stem for f in files])
    hits = r.search("a red dog", index, k=3, lang="en")
    assert len(hits) == 1 and len(hits[0]) == 3 and all(h[0].startswith("img0") for h in hits[0])
