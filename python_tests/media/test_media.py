"""Decoding with Pillow, the bad-media policy and video frame sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ccr_fast.data.media import (BadMediaError, decode_image, list_images, tower_features, video_frames)
from ccr_fast.models.towers import load_image_processor, load_vision_tower

from media_helpers import write_images


def test_decode_modes(image_set):
    files = list_images(image_set / "images")
    modes = set()
    for f in files:
        from PIL import Image

        with Image.open(f) as im:
            modes.add(im.mode)
        out = decode_image(f)
        assert out.mode == "RGB" and out.size[0] >= 17
    assert {"RGB", "L", "RGBA"} <= modes
    assert {f.suffix for f in files} == {".png", ".jpg"}


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(BadMediaError, match="broken.jpg"):
        decode_image(bad)
    with pytest.raises(BadMediaError, match="nothere.png"):
        decode_image(tmp_path / "nothere.png")
    assert issubclass(BadMediaError, ValueError)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_media_counts_and_reports(towers, tmp_path, workers):
    names = write_images(tmp_path, 6)
    (tmp_path / "broken.png").write_bytes(b"garbage")
    items = [str(tmp_path / n) for n in names[:3]] + [str(tmp_path / "broken.png"), str(tmp_path / "gone.png")] \
        + [str(tmp_path / n) for n in names[3:]]
    tower, proc = load_vision_tower(towers("clip")), load_image_processor(towers("clip"))
    with pytest.raises(BadMediaError, match="broken.png"):
        tower_features(tower, proc, items, batch_size=4, num_workers=workers)
    feats, n_frames, kept, report = tower_features(tower, proc, items, batch_size=4, num_workers=workers,
                                                   skip_bad=True)
    assert kept.tolist() == [0, 1, 2, 5, 6, 7] and n_frames is None
    assert report.skipped == [3, 4] and "broken.png" in report.reasons[0] and "gone.png" in report.reasons[1]
    assert "skipped 2" in report.summary()
    good, _, _, _ = tower_features(tower, proc, [items[i] for i in kept], batch_size=4)
    np.testing.assert_allclose(feats, good, rtol=1e-5, atol=1e-6)  # nothing blank stands in


def test_video_frames_uniform(tmp_path):
    write_images(tmp_path / "v", 10)
    frames = video_frames(tmp_path / "v", 4)
    assert [f.name for f in frames] == ["img000.png", "img003.png", "img006.png", "img009.jpg"]
    assert len(video_frames(tmp_path / "v", None)) == 10 and len(video_frames(tmp_path / "v", 20)) == 10
    with pytest.raises(BadMediaError, match="missing_video"):
        video_frames(tmp_path / "missing_video", 4)


def test_video_items_mean_and_keep(towers, tmp_path):
    write_images(tmp_path / "a", 5)
    write_images(tmp_path / "b", 3, seed=1)
    tower, proc = load_vision_tower(towers("clip")), load_image_processor(towers("clip"))
    items = [[str(p) for p in video_frames(tmp_path / v, 4)] for v in ("a", "b")]
    mean, nf, _, _ = tower_features(tower, proc, items, batch_size=2, frames="mean")
    keep, nf2, _, _ = tower_features(tower, proc, items, batch_size=2, frames="keep")
    assert nf is None and mean.shape == (2, tower.out_dim)
    assert nf2.tolist() == [4, 3] and keep.shape == (2, 4, tower.out_dim) and not keep[1, 3].any()
    np.testing.assert_allclose(keep[0].mean(0), mean[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keep[1, :3].mean(0), mean[1], rtol=1e-5, atol=1e-6)
    single, _, _, _ = tower_features(tower, proc, items[1], batch_size=8)
    np.testing.assert_allclose(keep[1, :3], single, rtol=1e-5, atol=1e-6)
    assert torch.is_tensor(torch.from_numpy(mean))


def test_feature_cache_sees_changed_files(towers, tmp_path):
    from ccr_fast.config import load_config
    from ccr_fast.data.media_data import encode_media

    names = write_images(tmp_path, 3)
    cfg = load_config(None, visual_encoder=str(towers("clip")))
    items = [str(tmp_path / n) for n in names]
    a, _, _ = encode_media(cfg, items, "t")
    b, _, _ = encode_media(cfg, items, "t")
    assert b is a  # cached within the process
    write_images(tmp_path / "other", 3, seed=7)
    import shutil

    shutil.copy(tmp_path / "other" / names[0], tmp_path / names[0])  # same name, new content
    c, _, _ = encode_media(cfg, items, "t")
    assert not np.array_equal(c[0], a[0]) and np.array_equal(c[1:], a[1:])
