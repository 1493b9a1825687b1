"""A bounded token-state cache for frozen text encoders, and the training loop's policy for it.

:class:`ccr_fast.models.text.TextBackbone` with ``model.cache_text_states`` keeps each caption's token states keyed by
its token ids, so a frozen encoder runs once per distinct caption. Unbounded, that cache grows with every new caption
(measured: ~1.6 MiB per step in the scale benchmark, 3 new captions per sample) until it holds the whole training
text. :class:`StateCache` is a drop-in mapping with a byte budget (least recently used entries go first), and
:func:`install_state_cache` gives every frozen cached encoder of a method one, shared between runs of one process with
the same encoder. When the training texts cannot fit in the budget the cache is switched off for the run: with each
caption seen once per epoch in random order, a cache smaller than the texts would almost never hit.

Budget: ``CCR_FAST_TEXT_CACHE_MB`` (default 1024 MiB).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np
import torch

log = logging.getLogger("ccr_fast.training")

__all__ = ["StateCache", "cache_budget_bytes", "install_state_cache", "estimate_text_state_bytes"]

KEEP_RECENT = 4096  # never evict the newest entries: one call's captions are read back after they are stored
_KEY_BYTES_PER_TOKEN = 40  # a Python int in the key tuple (28) + its slot (8), rounded up
_ENTRY_OVERHEAD = 320  # tensor object, tuple and dict slot


def cache_budget_bytes() -> int:
    """The byte budget of a text-state cache (``CCR_FAST_TEXT_CACHE_MB``, default 1024)."""
    return int(float(os.environ.get("CCR_FAST_TEXT_CACHE_MB", "1024")) * 2**20)


def entry_bytes(key: tuple, value: torch.Tensor) -> int:
    return int(value.numel() * value.element_size()) + _KEY_BYTES_PER_TOKEN * len(key) + _ENTRY_OVERHEAD


class StateCache(OrderedDict):
    """``{token id tuple: states [L, H]}`` holding at most ``max_bytes`` (tensor bytes + key overhead).

    A lookup (``in`` / ``[]``) marks the entry as recently used; storing past the budget evicts the least recently
    used entries, except the newest :data:`KEEP_RECENT` (a caller reads a batch's states back after storing them).
    """

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.evicted = 0

    def __contains__(self, key) -> bool:
        hit = super().__contains__(key)
        if hit:
            self.move_to_end(key)
        return hit

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key, value) -> None:
        if super().__contains__(key):
            self.nbytes -= entry_bytes(key, super().__getitem__(key))
        super().__setitem__(key, value)
        self.move_to_end(key)
        self.nbytes += entry_bytes(key, value)
        while self.nbytes > self.max_bytes and len(self) > KEEP_RECENT:
            old, v = self.popitem(last=False)
            self.nbytes -= entry_bytes(old, v)
            self.evicted += 1

    def __delitem__(self, key) -> None:
        self.nbytes -= entry_bytes(key, super().__getitem__(key))
        super().__delitem__(key)

    def clear(self) -> None:
        super().clear()
        self.nbytes = 0


_SHARED: Dict[tuple, StateCache] = {}


def _text_count(item: dict) -> int:
    from ..data.collate import TEXT_KEYS

    return sum(1 for k in TEXT_KEYS if k in item) + len(item.get("texts", ()))


def estimate_text_state_bytes(dataset, tokenize, hidden: int, samples: int = 64, seed: int = 0) -> int:
    """Bytes a cache would need for every text of ``dataset`` (token counts from ``samples`` random samples).

    Args:
        dataset: the training dataset (items with ``src``/``tgt``/``back``/``text`` strings or ``texts`` lists).
        tokenize: ``list[str] -> {"attention_mask": [n, L]}``.
        hidden: encoder hidden size H (states are float32 ``[tokens, H]``).
    """
    from ..data.collate import TEXT_KEYS

    n = len(dataset)
    if n == 0:
        return 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, size=min(samples, n), replace=False)
    texts, per_item = [], 0
    for i in pick.tolist():
        item = dataset[i]
        per_item += _text_count(item)
        texts += [item[k] for k in TEXT_KEYS if k in item] + list(item.get("texts", ()))
    if not texts:
        return 0
    tokens = float(tokenize(texts)["attention_mask"].sum()) / len(texts)
    per_text = tokens * (4 * hidden + _KEY_BYTES_PER_TOKEN) + _ENTRY_OVERHEAD
    return int(n * per_item / len(pick) * per_text)


def _cacheable(m) -> bool:
    """A frozen encoder (final states cached) or one whose top layers alone train (their input states cached)."""
    return m.frozen() or bool(getattr(m, "frozen_prefix", lambda: 0)())


def install_state_cache(method, cfg, train_set=None, budget: Optional[int] = None) -> Tuple[int, str]:
    """Give each cached text encoder of ``method`` a bounded :class:`StateCache` (a frozen pretrained encoder's is
    shared by the runs of this process with the same encoder), or switch caching off when ``train_set``'s texts
    cannot fit.

    Returns:
        ``(budget bytes, a sentence saying what was done)``.
    """
    from ..models.text import TextBackbone

    budget = cache_budget_bytes() if budget is None else int(budget)
    mods = [m for m in method.modules() if isinstance(m, TextBackbone) and m.use_cache and _cacheable(m)]
    if not mods:
        return budget, "no cached text encoder"
    if train_set is not None and hasattr(method, "tokenize"):
        need = estimate_text_state_bytes(train_set, method.tokenize, mods[0].hidden_size)
        if need > budget:
            for m in mods:
                m.use_cache = False
                m._cache = StateCache(0)
            return budget, (f"text-state cache off: the training texts need ~{need / 2**20:.0f} MiB of states, "
                            f"more than the {budget / 2**20:.0f} MiB budget (CCR_FAST_TEXT_CACHE_MB)")
    for m in mods:
        if not cfg.model.tiny_text_encoder and m.frozen():  # final states of a pretrained encoder
            key = (str(cfg.text_encoder), cfg.model.max_tokens)
            cache = _SHARED.get(key)
            if cache is None or cache.max_bytes != budget:
                cache = _SHARED[key] = StateCache(budget)
        else:
            cache = StateCache(budget)
        m._cache = cache
    return budget, f"text-state cache: {budget / 2**20:.0f} MiB budget"
