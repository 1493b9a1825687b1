"""Helpers for the media tests: tiny random-init Hugging Face vision towers saved with ``save_pretrained`` (+ their
image processors), images written by Pillow, caption CSVs and a fake local Hugging Face cache."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import torch

SIZE = 32  # towers' input resolution


def make_tower(kind: str, folder: Path) -> Path:
    """A tiny random-init ``kind`` tower (clip, clip_full, siglip, vit, swin, convnext) saved in ``folder``."""
    import transformers as T

    torch.manual_seed(0)
    vit_kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
                  patch_size=8)
    pil_size = {"height": SIZE, "width": SIZE}
    if kind == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(projection_dim=16, **vit_kw))
        proc = T.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=pil_size)
    elif kind == "clip_full":
        cfg = T.CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, vocab_size=64, bos_token_id=0,
                                            eos_token_id=1, pad_token_id=1),
                           vision_config=vit_kw, projection_dim=16)
        model = T.CLIPModel(cfg)
        proc = T.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=pil_size)
    elif kind == "siglip":
        model = T.SiglipVisionModel(T.SiglipVisionConfig(**vit_kw))
        proc = T.SiglipImageProcessor(size=pil_size)
    elif kind == "vit":
        model = T.ViTModel(T.ViTConfig(**vit_kw))
        proc = T.ViTImageProcessor(size=pil_size)
    elif kind == "swin":
        model = T.SwinModel(T.SwinConfig(image_size=SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                         window_size=4))
        proc = T.ViTImageProcessor(size=pil_size)
    elif kind == "convnext":
        model = T.ConvNextModel(T.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3))
        proc = T.ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0)
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def write_images(folder: Path, n: int, seed: int = 0) -> list:
    """``n`` images of mixed kinds: PNG and JPEG, odd sizes, grayscale, RGBA. Returns the file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = int(rng.integers(17, 61)), int(rng.integers(17, 61))
        kind = i % 4
        if kind == 0:
            im, ext = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"), "png"
        elif kind == 1:
            im, ext = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"), "jpg"
        elif kind == 2:
            im, ext = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"), "png"
        else:
            im, ext = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA"), "png"
        name = f"img{i:03d}.{ext}"
        im.save(folder / name)
        names.append(name)
    return names


def write_csv(path: Path, names: list, langs=("en", "de"), caps_per_lang: int = 1, column: str = "image",
              sep: str = ",") -> Path:
    """One row per caption: ``column, lang, caption`` (a few words drawn per image, so the task is learnable)."""
    words = {"en": ["red", "dog", "car", "tree", "house", "girl", "boat", "cat"],
             "de": ["rot", "Hund", "Auto", "Baum", "Haus", "Mädchen", "Boot", "Katze"]}
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=sep)
        w.writerow([column, "lang", "caption"])
        for i, name in enumerate(names):
            for lang in langs:
                vocab = words.get(lang, words["en"])
                for k in range(caps_per_lang):
                    w.writerow([name, lang, f"a {vocab[i % 8]} and a {vocab[(i // 8 + k) % 8]}"])
    return path


def fake_hf_cache(cache: Path, repo_id: str, model_dir: Path, commit: str = "0123456789abcdef") -> Path:
    """Copy ``model_dir`` into ``cache`` in the hub cache layout (``models--org--name/snapshots/<commit>`` +
    ``refs/main``); returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(model_dir, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


