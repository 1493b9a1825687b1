"""Batch collation: stack visual features, tokenise the raw strings of dataset items.

Dataset items are dicts of raw strings and numpy arrays (``ccr_fast.data`` datasets): ``visual`` (``[Dv]`` pooled
or ``[F, Dv]`` frames), ``index`` (the visual item's row), and text fields — ``src``/``tgt``/``back``/``text``
(one string each) or ``texts`` (K strings, one per language, in a fixed language order).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

TEXT_KEYS = ("src", "tgt", "back", "text")


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int = 40, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Tokenise ``texts`` padded to the batch maximum (at most ``max_tokens``): ``input_ids``/``attention_mask`` ``[N, L]``."""
    enc = tokenizer([prefix + t for t in texts], padding=True, truncation=True, max_length=max_tokens,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def stack_visual(arrays: List[np.ndarray]):
    """``[N, Dv]`` float32 for pooled features; ``([N, F, Dv], mask [N, F])`` zero-padded for frame features."""
    arrs = [np.asarray(a, dtype=np.float32) for a in arrays]
    if arrs[0].ndim == 1:
        return torch.from_numpy(np.stack(arrs)), None
    n_max = max(a.shape[0] for a in arrs)
    out = torch.zeros(len(arrs), n_max, arrs[0].shape[-1])
    mask = torch.zeros(len(arrs), n_max)
    for i, a in enumerate(arrs):
        out[i, : a.shape[0]] = torch.from_numpy(a)
        mask[i, : a.shape[0]] = 1
    return out, mask


class Collator:
    """Callable collate_fn: items → batch dict.

    The batch has ``visual`` (float32), ``visual_mask`` (or None), ``index`` (int64 ``[N]``), one tokenised dict per
    text field present (``batch["src"]["input_ids"]``...), and for ``texts`` the K captions flattened image-major
    (text ``i·K + k``) plus ``K``. Raw strings are kept under ``raw``.
    """

    def __init__(self, tokenizer, max_tokens: int = 40, prefix: str = ""):
        self.tokenizer, self.max_tokens, self.prefix = tokenizer, max_tokens, prefix

    def __call__(self, items: List[dict]) -> dict:
        visual, vmask = stack_visual([it["visual"] for it in items])
        batch = {"visual": visual, "visual_mask": vmask, "raw": {}}
        batch["index"] = torch.as_tensor([int(it.get("index", i)) for i, it in enumerate(items)], dtype=torch.long)
        for key in TEXT_KEYS:
            if key in items[0]:
                texts = [it[key] for it in items]
                batch["raw"][key] = texts
                batch[key] = tokenize(self.tokenizer, texts, self.max_tokens, self.prefix)
        if "texts" in items[0]:
            k = len(items[0]["texts"])
            if any(len(it["texts"]) != k for it in items):
                raise ValueError(f"texts: every item must carry the same number of captions K={k}")
            flat = [t for it in items for t in it["texts"]]
            batch["raw"]["texts"] = flat
            batch["texts"] = tokenize(self.tokenizer, flat, self.max_tokens, self.prefix)
            batch["K"] = k
        return batch


def to_device(batch, device: torch.device):
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
