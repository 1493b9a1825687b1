"""Torch datasets over :class:`CCRData`, one per method, plus the evaluation sets.

Every dataset yields a dict of raw strings and numpy arrays; tokenisation and batching happen in
``ccr_fast.data.collate``. ``"visual"`` is the item's feature row (``[Dv]`` or ``[F, Dv]`` float32, a view when
possible) and ``"index"`` its row in ``data`` (int). Frame features come without padding (``[n_frames[i], Dv]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from .core import CCRData

__all__ = ["PairDataset", "NRCCRDataset", "CL2CMDataset", "CCRkDataset", "ParallelTextDataset", "EvalSet",
           "make_eval_sets"]


def _need_captions(data: CCRData, lang: str, arg: str) -> None:
    if lang not in data.captions:
        raise ValueError(f"{arg}: expected a language of {data.name!r} {sorted(data.captions)}, got {lang!r}")


def _need_translation(data: CCRData, tag: str, arg: str) -> None:
    if tag not in data.translations:
        raise ValueError(f"{arg}: {data.name!r} has no translations {tag!r} (has {sorted(data.translations)})")


def _langs(data: CCRData, langs) -> list:
    if isinstance(langs, str):
        langs = [langs]
    langs = list(langs) if langs is not None else list(data.languages)
    if not langs:
        raise ValueError("langs: expected at least one language, got none")
    for lang in langs:
        _need_captions(data, lang, "langs")
    return langs


class _Base(Dataset):
    def __init__(self, data: CCRData):
        if not isinstance(data, CCRData):
            raise TypeError(f"data: expected CCRData, got {type(data).__name__}")
        self.data = data
        self.entries: list = []

    def __len__(self) -> int:
        return len(self.entries)

    def _visual(self, i: int) -> np.ndarray:
        """Row i as float32: ``[Dv]``, or ``[n_frames[i], Dv]`` (valid frames only) for frame features."""
        feats = self.data.features[i]
        if self.data.n_frames is not None:
            feats = feats[: int(self.data.n_frames[i])]
        return np.asarray(feats, dtype=np.float32)


class PairDataset(_Base):
    """One entry per (item, caption) over ``langs``: ``{"visual", "index", "text", "lang"}``.

    Args:
        data: the collection.
        langs: languages to include (default all with captions), entries grouped by language in this order.
    """

    def __init__(self, data: CCRData, langs: Optional[Sequence[str]] = None):
        super().__init__(data)
        self.langs = _langs(data, langs)
        self.entries = [(lang, i, j) for lang in self.langs
                        for i, caps in enumerate(data.captions[lang]) for j in range(len(caps))]

    def __getitem__(self, n: int) -> dict:
        lang, i, j = self.entries[n]
        return {"visual": self._visual(i), "index": i, "text": self.data.captions[lang][i][j], "lang": lang}


class NRCCRDataset(_Base):
    """NRCCR training tuples, one per ``src`` caption: ``{"visual", "index", "src", "tgt", "back"}``.

    ``src`` is the human source caption, ``tgt`` = ``translations["<src>2<tgt>"]`` (MT of it) and ``back`` =
    ``translations["<src>2<tgt>2<src>"]`` (its back-translation), aligned 1:1.
    """

    def __init__(self, data: CCRData, src: str = "en", tgt: str = "de"):
        super().__init__(data)
        _need_captions(data, src, "src")
        self.src, self.tgt = src, tgt
        self.mt_tag, self.back_tag = f"{src}2{tgt}", f"{src}2{tgt}2{src}"
        _need_translation(data, self.mt_tag, "tgt")
        _need_translation(data, self.back_tag, "tgt")
        self.entries = [(i, j) for i, caps in enumerate(data.captions[src]) for j in range(len(caps))]

    def __getitem__(self, n: int) -> dict:
        i, j = self.entries[n]
        d = self.data
        return {"visual": self._visual(i), "index": i, "src": d.captions[self.src][i][j],
                "tgt": d.translations[self.mt_tag][i][j], "back": d.translations[self.back_tag][i][j]}


class CL2CMDataset(_Base):
    """CL2CM training pairs, one per ``src`` caption: ``{"visual", "index", "src", "tgt"}`` with ``tgt`` =
    ``translations["<src>2<tgt>"]`` aligned 1:1 with the source caption."""

    def __init__(self, data: CCRData, src: str = "en", tgt: str = "de"):
        super().__init__(data)
        _need_captions(data, src, "src")
        self.src, self.tgt, self.mt_tag = src, tgt, f"{src}2{tgt}"
        _need_translation(data, self.mt_tag, "tgt")
        self.entries = [(i, j) for i, caps in enumerate(data.captions[src]) for j in range(len(caps))]

    def __getitem__(self, n: int) -> dict:
        i, j = self.entries[n]
        return {"visual": self._visual(i), "index": i, "src": self.data.captions[self.src][i][j],
                "tgt": self.data.translations[self.mt_tag][i][j]}


class CCRkDataset(_Base):
    """CCR^k 1-to-K entries: ``{"visual", "index", "texts": [K strings, in langs order]}``.

    An item yields ``m = min_l len(captions[l][i])`` entries; entry ``j < m`` takes caption ``j`` of every
    language. Items lacking a language (``m = 0``) are skipped; ``skipped`` counts them.
    """

    def __init__(self, data: CCRData, langs: Optional[Sequence[str]] = None):
        super().__init__(data)
        self.langs = _langs(data, langs)
        self.skipped = 0
        for i in range(len(data)):
            m = min(len(data.captions[lang][i]) for lang in self.langs)
            self.skipped += m == 0
            self.entries.extend((i, j) for j in range(m))

    def __getitem__(self, n: int) -> dict:
        i, j = self.entries[n]
        return {"visual": self._visual(i), "index": i,
                "texts": [self.data.captions[lang][i][j] for lang in self.langs]}


class ParallelTextDataset(_Base):
    """Text pairs ``{"index", "src", "tgt"}`` for cross-lingual alignment.

    Uses ``translations["<src>2<tgt>"]`` when present (one pair per source caption); otherwise pairs the human
    captions of ``src`` and ``tgt`` of the same item position-wise (``min`` of the two counts per item).
    """

    def __init__(self, data: CCRData, src: str = "en", tgt: str = "de"):
        super().__init__(data)
        _need_captions(data, src, "src")
        self.src, self.tgt, self.mt_tag = src, tgt, f"{src}2{tgt}"
        if self.mt_tag in data.translations:
            self.pairs = data.translations[self.mt_tag]
            self.entries = [(i, j) for i, caps in enumerate(data.captions[src]) for j in range(len(caps))]
        else:
            _need_captions(data, tgt, "tgt")
            self.pairs = data.captions[tgt]
            self.entries = [(i, j) for i in range(len(data))
                            for j in range(min(len(data.captions[src][i]), len(data.captions[tgt][i])))]

    def __getitem__(self, n: int) -> dict:
        i, j = self.entries[n]
        return {"index": i, "src": self.data.captions[self.src][i][j], "tgt": self.pairs[i][j]}


@dataclass
class EvalSet:
    """One language's retrieval test: every caption is a query against the whole gallery.

    Attributes:
        lang: query language.
        queries: Q caption strings.
        query_item: ``[Q]`` int64, gallery row of each query's item.
        gallery: ``[G, Dv]`` (or ``[G, F, Dv]``) visual features; shared object across the languages of one data.
        item_ids: G visual ids.
        queries_mt: Q machine translations of the queries into English (translate-test), or None.
        name: the data name.
    """

    lang: str
    queries: list
    query_item: np.ndarray
    gallery: np.ndarray
    item_ids: list
    queries_mt: Optional[list] = None
    name: str = ""

    def __post_init__(self):
        self.query_item = np.asarray(self.query_item, dtype=np.int64)
        if self.query_item.shape != (len(self.queries),):
            raise ValueError(f"query_item: expected shape [{len(self.queries)}], got {self.query_item.shape}")
        if len(self.item_ids) != self.gallery.shape[0]:
            raise ValueError(f"item_ids: expected {self.gallery.shape[0]} ids (gallery rows), got {len(self.item_ids)}")
        if self.query_item.size and (self.query_item.min() < 0 or self.query_item.max() >= len(self.item_ids)):
            raise ValueError(f"query_item: expected rows in [0, {len(self.item_ids)}), got "
                             f"[{self.query_item.min()}, {self.query_item.max()}]")
        if self.queries_mt is not None and len(self.queries_mt) != len(self.queries):
            raise ValueError(f"queries_mt: expected {len(self.queries)} strings, got {len(self.queries_mt)}")

    def __len__(self) -> int:
        return len(self.queries)


def make_eval_sets(data: CCRData, langs: Optional[Sequence[str]] = None, *, mt_target: str = "en") -> list:
    """One :class:`EvalSet` per language; the gallery is all items of ``data``.

    Args:
        data: the test collection.
        langs: languages (default: all with captions). A language without captions raises.
        mt_target: ``queries_mt`` is ``translations["<lang>2<mt_target>"]`` when present (never for ``mt_target``).

    Returns:
        list of :class:`EvalSet` in ``langs`` order; queries are item-major (item 0's captions first).
    """
    langs = _langs(data, langs)
    out = []
    for lang in langs:
        caps = data.captions[lang]
        if not any(caps):
            raise ValueError(f"langs: {lang!r} has no captions in {data.name!r}")
        queries = [c for per in caps for c in per]
        item = np.repeat(np.arange(len(caps), dtype=np.int64), [len(per) for per in caps])
        tag = f"{lang}2{mt_target}"
        mt = None
        if tag in data.translations and lang != mt_target:
            mt = [c for per in data.translations[tag] for c in per]
        out.append(EvalSet(lang, queries, item, data.features, list(data.visual_ids), mt, data.name))
    return out
