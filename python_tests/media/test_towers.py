"""Vision towers from folders and from a (fake) local Hugging Face cache; text encoders by cached hub id."""
from __future__ import annotations

import os

import pytest
import torch

from ccr_fast.data.media import encode_images, list_images
from ccr_fast.models.towers import hf_cache_dir, load_image_processor, load_vision_tower, resolve_hf_model

from media_helpers import fake_hf_cache

KINDS = ["clip", "clip_full", "siglip", "vit", "swin", "convnext"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens", ["pooled", "patches"])
def test_tower_shapes_and_determinism(towers, image_set, kind, tokens):
    path = towers(kind)
    tower = load_vision_tower(path, tokens=tokens)
    proc = load_image_processor(path)
    images = list_images(image_set / "images")[:5]  # PNG, JPEG, grayscale, RGBA, odd sizes
    a = encode_images(tower, proc, images)
    b = encode_images(tower, proc, list(reversed(images)))
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    if tokens == "pooled":
        assert a.shape == (5, tower.out_dim)
    else:
        assert a.dim() == 3 and a.shape[0] == 5 and a.shape[2] == tower.out_dim and a.shape[1] > 1
    torch.testing.assert_close(a, b.flip(0), rtol=1e-5, atol=1e-6)
    # per-image results do not depend on the batch
    torch.testing.assert_close(encode_images(tower, proc, images[2:3])[0], a[2], rtol=1e-4, atol=1e-5)


def test_clip_pooled_is_the_projected_embedding(towers, image_set):
    import transformers as T

    path = towers("clip_full")
    tower = load_vision_tower(path)
    proc = load_image_processor(path)
    images = list_images(image_set / "images")[:3]
    ref = T.CLIPModel.from_pretrained(str(path)).eval()
    px = proc(images=[__import__("PIL.Image", fromlist=["Image"]).open(p).convert("RGB") for p in images],
              return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = ref.get_image_features(pixel_values=px)
    want = getattr(want, "pooler_output", want)
    torch.testing.assert_close(encode_images(tower, proc, images), want, rtol=1e-5, atol=1e-5)


def test_trainable_layers(towers):
    tower = load_vision_tower(towers("vit"), trainable_layers=[-1])
    names = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("model.layers.1.") or "layernorm" in n or "pooler" in n for n in names)
    assert not any(".layers.0." in n for n in names)
    assert load_vision_tower(towers("vit")).frozen()
    assert not any(p.requires_grad is False for p in load_vision_tower(towers("vit"), trainable_layers=None)
                   .parameters())
    with pytest.raises(ValueError, match="visual_trainable_layers"):
        load_vision_tower(towers("vit"), trainable_layers=[5])


def test_hub_id_from_local_cache_equals_folder(towers, image_set, tmp_path, monkeypatch):
    folder = towers("clip")
    cache = tmp_path / "hub"
    snap = fake_hf_cache(cache, "tiny-org/tiny-clip", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # read at call time, after import
    assert hf_cache_dir() == cache
    assert resolve_hf_model("tiny-org/tiny-clip") == snap
    images = list_images(image_set / "images")[:4]
    a = encode_images(load_vision_tower("tiny-org/tiny-clip"), load_image_processor("tiny-org/tiny-clip"), images)
    b = encode_images(load_vision_tower(folder), load_image_processor(folder), images)
    assert torch.equal(a, b)
    # HF_HOME/hub is used when HF_HUB_CACHE is unset
    monkeypatch.delenv("HF_HUB_CACHE")
    home = tmp_path / "home"
    fake_hf_cache(home / "hub", "tiny-org/tiny-clip", folder)
    monkeypatch.setenv("HF_HOME", str(home))
    assert resolve_hf_model("tiny-org/tiny-clip").is_relative_to(home / "hub")


def test_missing_hub_id_names_id_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as e:
        load_vision_tower("nobody/no-such-model")
    msg = str(e.value)
    assert "nobody/no-such-model" in msg and str(tmp_path / "empty") in msg and "\n" not in msg


def test_text_encoder_by_cached_hub_id(tmp_path, monkeypatch):
    from ccr_fast.models.text import default_encoder_path, load_text_encoder, load_tokenizer, resolve_encoder_path

    src = default_encoder_path()
    cache = tmp_path / "hub"
    snap = cache / "models--intfloat--e5-tiny" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    for f in src.iterdir():  # the cache layout links snapshot files to blobs; links are enough here
        os.symlink(f, snap / f.name)
    (cache / "models--intfloat--e5-tiny" / "refs").mkdir()
    (cache / "models--intfloat--e5-tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_encoder_path("intfloat/e5-tiny") == snap
    a = load_text_encoder("intfloat/e5-tiny").eval()
    b = load_text_encoder(src).eval()
    tok = load_tokenizer("intfloat/e5-tiny")(["ein Hund"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(a(**tok).last_hidden_state, b(**tok).last_hidden_state)
    with pytest.raises(FileNotFoundError, match="text_encoder.*intfloat/missing"):
        resolve_encoder_path("intfloat/missing")


def test_not_a_vision_model(tmp_path):
    from ccr_fast.models.text import default_encoder_path

    with pytest.raises(ValueError, match="supported vision towers"):
        load_vision_tower(default_encoder_path())
