"""Tiny, weight-free settings for tests and smoke runs: a random-init 2-layer BERT (hidden 32) with the shipped
tokenizer, small heads, synthetic items."""
from __future__ import annotations

import numpy as np

TINY = {
    "model.tiny_text_encoder": 32, "model.visual_dim": 16, "model.visual_hidden": 32, "model.embed_dim": 16,
    "model.text_hidden": 32, "model.qk_dim": 32, "model.heads": 4, "model.dropout": 0.0, "model.map_dropout": 0.0,
    "ccrk.fusion_width": 32, "ccrk.fusion_layers": 1, "ccrk.k_test": 4, "progress": False, "device": "cpu",
}


def tiny_items(n: int = 8, dim: int = 16, seed: int = 0) -> list:
    """``n`` synthetic items carrying every text field (src/tgt/back and two-language ``texts``)."""
    rng = np.random.default_rng(seed)
    words = ["dog", "cat", "man", "woman", "red", "blue", "runs", "sits", "snow", "beach", "ball", "car"]
    out = []
    for i in range(n):
        w = [words[j] for j in rng.choice(len(words), 3, replace=False)]
        en = "a " + " ".join(w)
        out.append({"visual": rng.standard_normal(dim).astype(np.float32), "index": i, "src": en,
                    "tgt": "ein " + " ".join(reversed(w)), "back": "the " + " ".join(w), "texts": [en, "le " + w[0]]})
    return out
