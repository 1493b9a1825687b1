"""Synthetic multilingual retrieval data with a known structure (deterministic by seed, tiny to 100k items).

Model:
    * ``n_concepts`` random unit vectors ``C[c]`` in ``R^feature_dim``.
    * Item i owns ``concepts_per_item`` distinct concepts; its "image" feature is a mixture
      ``sum_c w_ic C[c] + feature_noise * N(0, I/d)`` with weights ``w_ic ~ U(0.5, 1.5)`` (float32), or
      ``frames`` noisy copies of it (``[N, F, d]``).
    * Each language has its own made-up vocabulary: one word per concept and ``n_function_words`` function words.
      A human caption lists the item's concepts in a random order, each preceded by a random function word, so
      captions of one item differ across captions and languages only in order and function words.
    * Machine translation of a caption maps every concept word to the target word of the same concept, except
      that with probability ``mt_drop`` it is dropped and with probability ``mt_substitute`` it becomes a random
      other concept; function words are re-drawn in the target language.

Translations (for every target language ``xx != source``):
    ``"<src>2xx"`` MT of each source caption, ``"<src>2xx2<src>"`` MT of that MT back into the source, and
    ``"xx2<src>"`` MT of each human xx caption into the source language (translate-test).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .core import CCRData

__all__ = ["make_synthetic"]

_ONSETS = {
    "en": "b c d f g h l m n p r s t w".split(), "de": "b d f g h k l m n r s t z sch".split(),
    "fr": "b c d f j l m n p r s t v ch".split(), "cs": "b c d h k l m n p r s t v z".split(),
    "es": "b c d f g l m n p r s t ll".split(), "ja": "k s t n h m y r w g".split(),
    "zh": "b p m f d t n l g k h j q x zh".split(),
}
_VOWELS = {"en": "a e i o u".split(), "de": "a e i o u ei au".split(), "fr": "a e i o u ou".split(),
           "ja": "a i u e o".split(), "zh": "a o e i u ai ao".split()}


def _vocabulary(rng: np.random.Generator, lang: str, n_words: int) -> list:
    """``n_words`` distinct pseudo-words made of 2-3 syllables of the language's letter set."""
    onsets = _ONSETS.get(lang, "b d g k l m n p r s t v".split())
    vowels = _VOWELS.get(lang, "a e i o u".split())
    words, seen = [], set()
    while len(words) < n_words:
        n_syl = 2 + int(rng.integers(0, 2)) + (len(seen) > len(onsets) * len(vowels) * 4)
        w = "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] for _ in range(n_syl))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def _pick_concepts(rng: np.random.Generator, n: int, n_concepts: int, k: int) -> np.ndarray:
    """``[n, k]`` distinct concept ids per row (chunked ``argpartition`` of uniform keys)."""
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, 4_000_000 // max(n_concepts, 1))
    for s in range(0, n, step):
        keys = rng.random((min(step, n - s), n_concepts), dtype=np.float32)
        out[s: s + keys.shape[0]] = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n_concepts else \
            np.argsort(keys, axis=1)
    return out


def make_synthetic(n_items: int = 200, *, langs: Sequence[str] = ("en", "de", "fr"), source: str = "en",
                   n_concepts: int = 64, concepts_per_item: int = 3, feature_dim: int = 64,
                   captions_per_item: int = 1, n_function_words: int = 8, feature_noise: float = 0.3,
                   mt_drop: float = 0.1, mt_substitute: float = 0.1, frames: Optional[int] = None,
                   seed: int = 0, name: str = "synthetic") -> CCRData:
    """Generate a :class:`CCRData` (see the module docstring for the model).

    Args:
        n_items: N visual items.
        langs: caption languages; ``source`` must be one of them.
        source: the language the MT tags translate from / back into.
        n_concepts, concepts_per_item: concept inventory and concepts per item (``1 <= k <= n_concepts``).
        feature_dim: Dv.
        captions_per_item: human captions per item and language.
        n_function_words: function words per language.
        feature_noise: std of the isotropic feature noise (relative to unit concept vectors).
        mt_drop, mt_substitute: per concept-word probabilities of dropping / substituting in MT.
        frames: None for pooled ``[N, Dv]`` features, else F for ``[N, F, Dv]`` noisy frames.
        seed: everything is a function of the seed.

    Returns:
        :class:`CCRData` with ``visual_ids`` ``"syn000000"...``, ``features`` float32, ``captions[lang]`` and the
        ``translations`` tags listed in the module docstring.
    """
    langs = list(langs)
    if n_items < 1:
        raise ValueError(f"n_items: expected >= 1, got {n_items}")
    if source not in langs:
        raise ValueError(f"source: expected one of langs {langs}, got {source!r}")
    if not 1 <= concepts_per_item <= n_concepts:
        raise ValueError(f"concepts_per_item: expected 1..n_concepts={n_concepts}, got {concepts_per_item}")
    if captions_per_item < 1 or n_function_words < 1 or feature_dim < 1:
        raise ValueError("captions_per_item, n_function_words, feature_dim: expected >= 1, got "
                         f"{captions_per_item}, {n_function_words}, {feature_dim}")
    if not (0 <= mt_drop <= 1 and 0 <= mt_substitute <= 1 and mt_drop + mt_substitute <= 1):
        raise ValueError(f"mt_drop, mt_substitute: expected probabilities summing to <= 1, "
                         f"got {mt_drop}, {mt_substitute}")
    rng = np.random.default_rng(seed)
    concept_vecs = rng.standard_normal((n_concepts, feature_dim))
    concept_vecs /= np.linalg.norm(concept_vecs, axis=1, keepdims=True)
    item_concepts = _pick_concepts(rng, n_items, n_concepts, concepts_per_item)
    weights = rng.uniform(0.5, 1.5, size=item_concepts.shape)
    feats = np.einsum("nk,nkd->nd", weights, concept_vecs[item_concepts])
    scale = feature_noise / np.sqrt(feature_dim)
    if frames is None:
        feats = feats + scale * rng.standard_normal(feats.shape)
    else:
        if frames < 1:
            raise ValueError(f"frames: expected >= 1 or None, got {frames}")
        feats = feats[:, None, :] + scale * rng.standard_normal((n_items, frames, feature_dim))
    feats = feats.astype(np.float32)

    vocab = {lang: _vocabulary(np.random.default_rng([seed, i]), lang, n_concepts + n_function_words)
             for i, lang in enumerate(langs)}
    concept_words = {lang: v[:n_concepts] for lang, v in vocab.items()}
    function_words = {lang: v[n_concepts:] for lang, v in vocab.items()}

    m, k = captions_per_item, concepts_per_item

    def human() -> np.ndarray:
        """``[N, m, k]`` each item's concepts in a random order per caption."""
        order = np.argsort(rng.random((n_items, m, k)), axis=2)
        return np.take_along_axis(np.broadcast_to(item_concepts[:, None, :], (n_items, m, k)), order, axis=2)

    def mt(concepts: np.ndarray) -> np.ndarray:
        """Word-level MT noise on concept ids; ``-1`` marks a dropped word."""
        u = rng.random(concepts.shape)
        shift = 1 + rng.integers(max(n_concepts - 1, 1), size=concepts.shape)
        sub = (u >= mt_drop) & (u < mt_drop + mt_substitute) & (n_concepts > 1)
        out = np.where(sub, (concepts + shift) % n_concepts, concepts)
        return np.where(u < mt_drop, -1, out)

    def render(lang: str, concepts: np.ndarray) -> list:
        """Per item, the ``m`` caption strings (function word before each kept concept word)."""
        fw, cw = function_words[lang], concept_words[lang]
        picks = rng.integers(len(fw), size=concepts.shape).tolist()
        fallback = rng.integers(len(fw), size=concepts.shape[:2]).tolist()
        out = []
        for cs_i, ps_i, fb_i in zip(concepts.tolist(), picks, fallback):
            row = []
            for cs, ps, fb in zip(cs_i, ps_i, fb_i):
                words = " ".join(f"{fw[p]} {cw[c]}" for c, p in zip(cs, ps) if c >= 0)
                row.append(words or fw[fb])
            out.append(row)
        return out

    human_ids = {lang: human() for lang in langs}
    captions = {lang: render(lang, human_ids[lang]) for lang in langs}
    translations = {}
    for t in (lang for lang in langs if lang != source):
        fwd = mt(human_ids[source])
        translations[f"{source}2{t}"] = render(t, fwd)
        translations[f"{source}2{t}2{source}"] = render(source, np.where(fwd >= 0, mt(np.maximum(fwd, 0)), -1))
        translations[f"{t}2{source}"] = render(source, mt(human_ids[t]))
    ids = [f"syn{i:06d}" for i in range(n_items)]
    return CCRData(name, ids, feats, captions, translations)
