"""Torch datasets over :class:`CCRData`, one per method, plus the evaluation sets.

Every dataset yields a dict of raw strings and numpy arrays; tokenisation and batching happen in
``ccr_fast.data.collate``. Entries are compact int arrays (item row, caption position), never per-sample Python
objects, and captions are read from the collection when an entry is fetched, so a DataLoader with workers can fork
a dataset of millions of captions cheaply. ``"visual"`` is the item's feature row (``[Dv]`` or ``[F, Dv]`` float32, a view when
possible) and ``"index"`` its row in ``data`` (int). Frame features come without padding (``[n_frames[i], Dv]``).
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from .core import CCRData

__all__ = ["PairDataset", "NRCCRDataset", "CL2CMDataset", "CCRkDataset", "ParallelTextDataset", "EvalSet",
           "make_eval_sets", "concat_datasets", "caption_counts"]


_FDS: dict = {}


def read_row(features: np.ndarray, i: int) -> np.ndarray:
    """Row ``i`` of a feature array as float32.

    A whole-file memory map (``np.load(..., mmap_mode="r")``) is read with one ``os.pread`` of the row's bytes:
    through the page cache, without mapping the pages into the process, so random access does not pull kernel
    read-ahead / fault-around windows into the resident set of every DataLoader worker.
    """
    if isinstance(features, np.memmap) and isinstance(features.base, mmap.mmap) and features.ndim == 2 \
            and features.flags.c_contiguous and features.filename:
        key = (os.getpid(), features.filename)
        fd = _FDS.get(key)
        if fd is None:
            fd = _FDS[key] = os.open(features.filename, os.O_RDONLY)
        n = features.strides[0]
        buf = os.pread(fd, n, int(features.offset) + int(i) * n)
        return np.frombuffer(buf, dtype=features.dtype).astype(np.float32)
    return np.asarray(features[i], dtype=np.float32)


def caption_counts(seq) -> np.ndarray:
    """``[N]`` int64 number of captions per item of a per-item caption sequence (fast for compact tables)."""
    if hasattr(seq, "counts"):
        return np.asarray(seq.counts(), dtype=np.int64)
    return np.fromiter((len(c) for c in seq), dtype=np.int64, count=len(seq))


def _entries(counts: np.ndarray):
    """(item [M] int32/int64, position [M]) of every caption, item-major."""
    item = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pos = np.arange(item.size, dtype=np.int64) - np.repeat(starts, counts)
    return item, pos


def _get(seq, i: int, j: int) -> str:
    """Caption ``j`` of item ``i`` (compact tables decode only that string)."""
    return seq.get(i, j) if hasattr(seq, "get") else seq[i][j]


def concat_datasets(parts: list):
    """One dataset over ``parts`` (the part itself when there is one)."""
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _need_captions(data: CCRData, lang: str, arg: str) -> None:
    if lang not in data.captions:
        raise ValueError(f"{arg}: expected a language of {data.name!r} {sorted(data.captions)}, got {lang!r}")


def _need_translation(data: CCRData, tag: str, arg: str) -> None:
    if tag not in data.translations:
        where = data.sources.get(tag) if getattr(data, "sources", None) else None
        raise ValueError(f"{arg}: {data.name!r} has no translations {tag!r} (has {sorted(data.translations)})"
                         + (f"; expected file: {where}" if where else "")
                         + "; set files.mt_stand_in=true to use the documented stand-in instead")


class CycledCaptions:
    """A stand-in aligned with the source captions: caption ``j`` of item ``i`` is caption ``j mod n_i`` of
    ``captions`` (``n_i`` = that item's count there), for items with more source captions than stand-ins."""

    def __init__(self, captions, counts: np.ndarray):
        self.captions, self.n = captions, np.asarray(counts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.n.size)

    def get(self, i: int, j: int) -> str:
        return _get(self.captions, i, j % int(self.n[i]))


def _translation_or_stand_in(data: CCRData, src: str, tgt: str, tag: str, stand_in: bool, fallback):
    """``data.translations[tag]``, or with ``stand_in`` the ``fallback`` captions aligned with the source captions:
    the same position, cycling (``j mod n``) where an item has fewer fallback captions than source captions (the
    shipped ``train_captions="all"`` data has up to 6 en captions and 1 fr caption per image). An item with source
    captions but no fallback caption is a ValueError naming it."""
    if tag in data.translations or not stand_in:
        _need_translation(data, tag, "tgt")
        return data.translations[tag]
    if fallback is None:
        raise ValueError(f"files.mt_stand_in: {data.name!r} has neither translations {tag!r} nor {tgt!r} captions "
                         "to stand in for them")
    a, b = caption_counts(data.captions[src]), caption_counts(fallback)
    bad = np.flatnonzero((a > 0) & (b == 0))
    if bad.size:
        raise ValueError(f"files.mt_stand_in: {data.name!r} item {data.visual_ids[bad[0]]!r} has {a[bad[0]]} {src!r} "
                         f"captions but no {tgt!r} caption to stand in for {tag!r}")
    return fallback if np.array_equal(a, b) else CycledCaptions(fallback, b)


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
        self.item = np.zeros(0, dtype=np.int64)
        self.pos = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.item.size)

    @property
    def entries(self) -> list:
        """``[(item, position), ...]`` (built on demand; datasets keep the compact arrays)."""
        return list(zip(self.item.tolist(), self.pos.tolist()))

    def _visual(self, i: int) -> np.ndarray:
        """Row i as float32: ``[Dv]``, or ``[n_frames[i], Dv]`` (valid frames only) for frame features."""
        if self.data.n_frames is None:
            return read_row(self.data.features, i)
        return np.asarray(self.data.features[i][: int(self.data.n_frames[i])], dtype=np.float32)


class PairDataset(_Base):
    """One entry per (item, caption) over ``langs``: ``{"visual", "index", "text", "lang"}``.

    Args:
        data: the collection.
        langs: languages to include (default all with captions), entries grouped by language in this order.
    """

    def __init__(self, data: CCRData, langs: Optional[Sequence[str]] = None):
        super().__init__(data)
        self.langs = _langs(data, langs)
        parts = [_entries(caption_counts(data.captions[lang])) for lang in self.langs]
        self.lang_of = np.repeat(np.arange(len(self.langs)), [p[0].size for p in parts])
        self.item = np.concatenate([p[0] for p in parts])
        self.pos = np.concatenate([p[1] for p in parts])

    @property
    def entries(self) -> list:
        return [(self.langs[l], i, j) for l, i, j in zip(self.lang_of.tolist(), self.item.tolist(), self.pos.tolist())]

    def __getitem__(self, n: int) -> dict:
        lang, i, j = self.langs[int(self.lang_of[n])], int(self.item[n]), int(self.pos[n])
        return {"visual": self._visual(i), "index": i, "text": _get(self.data.captions[lang], i, j), "lang": lang}


class NRCCRDataset(_Base):
    """NRCCR training tuples, one per ``src`` caption: ``{"visual", "index", "src", "tgt", "back"}``.

    ``src`` is the human source caption, ``tgt`` = ``translations["<src>2<tgt>"]`` (MT of it) and ``back`` =
    ``translations["<src>2<tgt>2<src>"]`` (its back-translation), aligned 1:1. A missing tag is a ValueError naming
    it. ``stand_in=True`` (``files.mt_stand_in``) instead uses, for a missing MT tag, the human ``tgt`` caption at
    the same position (cycling when the item has fewer ``tgt`` captions; an item without any is an error) and,
    for a missing back-translation, the source caption itself.
    """

    def __init__(self, data: CCRData, src: str = "en", tgt: str = "de", stand_in: bool = False):
        super().__init__(data)
        _need_captions(data, src, "src")
        self.src, self.tgt = src, tgt
        self.mt_tag, self.back_tag = f"{src}2{tgt}", f"{src}2{tgt}2{src}"
        self.mt = _translation_or_stand_in(data, src, tgt, self.mt_tag, stand_in, data.captions.get(tgt))
        self.back = _translation_or_stand_in(data, src, tgt, self.back_tag, stand_in, data.captions[src])
        self.item, self.pos = _entries(caption_counts(data.captions[src]))

    def __getitem__(self, n: int) -> dict:
        i, j = int(self.item[n]), int(self.pos[n])
        return {"visual": self._visual(i), "index": i, "src": _get(self.data.captions[self.src], i, j),
                "tgt": _get(self.mt, i, j), "back": _get(self.back, i, j)}


class CL2CMDataset(_Base):
    """CL2CM training pairs, one per ``src`` caption: ``{"visual", "index", "src", "tgt"}`` with ``tgt`` =
    ``translations["<src>2<tgt>"]`` aligned 1:1 with the source caption (``stand_in`` as :class:`NRCCRDataset`).
    Also the baseline's (V, S) / (V, T*) pairs."""

    def __init__(self, data: CCRData, src: str = "en", tgt: str = "de", stand_in: bool = False):
        super().__init__(data)
        _need_captions(data, src, "src")
        self.src, self.tgt, self.mt_tag = src, tgt, f"{src}2{tgt}"
        self.mt = _translation_or_stand_in(data, src, tgt, self.mt_tag, stand_in, data.captions.get(tgt))
        self.item, self.pos = _entries(caption_counts(data.captions[src]))

    def __getitem__(self, n: int) -> dict:
        i, j = int(self.item[n]), int(self.pos[n])
        return {"visual": self._visual(i), "index": i, "src": _get(self.data.captions[self.src], i, j),
                "tgt": _get(self.mt, i, j)}


class CCRkDataset(_Base):
    """CCR^k 1-to-K entries: ``{"visual", "index", "texts": [K strings, in langs order]}``.

    An item yields ``m = min_l len(captions[l][i])`` entries (``groups="min"``) or ``m = max_l`` entries
    (``groups="max"``: every caption is used, a language with fewer captions repeats them cyclically); entry
    ``j < m`` takes caption ``j`` (``j mod count``) of every language. Items lacking a language are skipped;
    ``skipped`` counts them.
    """

    def __init__(self, data: CCRData, langs: Optional[Sequence[str]] = None, groups: str = "min"):
        super().__init__(data)
        if groups not in ("min", "max"):
            raise ValueError(f"groups: expected 'min' or 'max', got {groups!r}")
        self.langs = _langs(data, langs)
        self.counts = np.stack([caption_counts(data.captions[lang]) for lang in self.langs])  # [L, N]
        low = self.counts.min(axis=0)
        m = low if groups == "min" else np.where(low > 0, self.counts.max(axis=0), 0)
        self.skipped = int((m == 0).sum())
        self.item, self.pos = _entries(m)

    def __getitem__(self, n: int) -> dict:
        i, j = int(self.item[n]), int(self.pos[n])
        return {"visual": self._visual(i), "index": i,
                "texts": [_get(self.data.captions[lang], i, j % int(self.counts[k, i]))
                          for k, lang in enumerate(self.langs)]}


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
            self.item, self.pos = _entries(caption_counts(data.captions[src]))
        else:
            _need_captions(data, tgt, "tgt")
            self.pairs = data.captions[tgt]
            self.item, self.pos = _entries(np.minimum(caption_counts(data.captions[src]),
                                                      caption_counts(data.captions[tgt])))

    def __getitem__(self, n: int) -> dict:
        i, j = int(self.item[n]), int(self.pos[n])
        return {"index": i, "src": _get(self.data.captions[self.src], i, j), "tgt": _get(self.pairs, i, j)}


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
