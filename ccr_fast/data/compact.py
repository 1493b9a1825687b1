"""Compact caption storage for large collections, and a streaming NRCCR reader that builds it.

:class:`CaptionTable` holds every caption of one language (or MT tag) as one UTF-8 byte buffer with int64 offsets,
grouped by item: a few bytes per caption besides the text, no Python object per caption, and cheap to share with
DataLoader workers (fork, no reference counts touched). It behaves like the per-item list of lists that
:class:`ccr_fast.data.CCRData` expects (``table[i]`` is item i's captions), and datasets read single captions with
``table.get(i, j)``.

:func:`load_nrccr_compact` reads NRCCR caption files line by line into tables and keeps the ``.npy`` features
memory-mapped: items are the feature rows that have captions, in id-file order (a contiguous block of rows stays
memory-mapped, so no feature is copied).
"""
from __future__ import annotations

import mmap
from array import array
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .core import CCRData, translation_source
from .readers import DataFormatError, nrccr_tag_to_key, open_text, visual_key

__all__ = ["CaptionTable", "load_nrccr_compact", "load_jsonl_compact", "mapped_features"]


class CaptionTable:
    """Per-item captions: ``buffer`` (uint8 UTF-8), ``offsets [M+1]`` (caption m is ``buffer[offsets[m]:
    offsets[m+1]]``), ``item_start [N+1]`` (item i owns captions ``item_start[i]:item_start[i+1]``)."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, item_start: np.ndarray):
        self.buffer = np.asarray(buffer, dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.item_start = np.asarray(item_start, dtype=np.int64)
        if self.offsets[-1] != self.buffer.size or self.item_start[-1] != self.offsets.size - 1:
            raise ValueError("CaptionTable: offsets/item_start do not match the buffer")

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[str]]) -> "CaptionTable":
        enc = [t.encode("utf-8") for per in lists for t in per]
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in enc], out=offsets[1:])
        starts = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(per) for per in lists], out=starts[1:])
        return cls(np.frombuffer(b"".join(enc), dtype=np.uint8).copy(), offsets, starts)

    def __len__(self) -> int:
        return self.item_start.size - 1

    def counts(self) -> np.ndarray:
        """``[N]`` captions per item."""
        return np.diff(self.item_start)

    def get(self, i: int, j: int) -> str:
        """Caption ``j`` of item ``i``."""
        m = self.item_start[i] + j
        if not 0 <= j < self.item_start[i + 1] - self.item_start[i]:
            raise IndexError(f"caption {j} of item {i}: the item has {self.item_start[i + 1] - self.item_start[i]}")
        return self.buffer[self.offsets[m]: self.offsets[m + 1]].tobytes().decode("utf-8")

    def __getitem__(self, i: int) -> List[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if int(i) < 0 else 0)
        return [self.get(i, j) for j in range(int(self.item_start[i + 1] - self.item_start[i]))]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.offsets.nbytes + self.item_start.nbytes


def _read_file(path: Path, row_of: dict):
    """(tag, rows int64 [M], k int64 [M], buffer, offsets) of one NRCCR caption file, in file order."""
    rows, ks, lens = array("q"), array("q"), array("q")  # 8 bytes per caption, no Python int objects
    buf = bytearray()
    tag0 = None
    with open_text(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            cap_id, _, text = line.partition(" ")
            parts = cap_id.split("#")
            if len(parts) != 3 or not all(parts) or not text.strip():
                raise DataFormatError(f"{path}:{lineno}: expected '<visual_id>#<tag>#<k> <text>', got {line[:80]!r}")
            vid, tag, k = parts
            if tag0 is None:
                tag0 = tag
            elif tag != tag0:
                raise DataFormatError(f"{path}:{lineno}: tag {tag!r} differs from the file's first tag {tag0!r}")
            row = row_of.get(vid)
            if row is None:
                row = row_of.get(visual_key(vid))
            if row is None:
                raise DataFormatError(f"{path}:{lineno}: visual id {vid!r} has no feature row (id file)")
            b = text.strip().encode("utf-8")
            rows.append(row)
            ks.append(int(k) if k.isdigit() else hash(k) & 0x7FFFFFFF)
            lens.append(len(b))
            buf += b
    if tag0 is None:
        raise DataFormatError(f"{path}: no captions")
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(lens, dtype=np.int64), out=offsets[1:])
    data = np.frombuffer(buf, dtype=np.uint8)  # shares the bytearray, no copy
    return tag0, np.frombuffer(rows, dtype=np.int64).copy(), np.frombuffer(ks, dtype=np.int64).copy(), data, offsets


def random_access(arr: np.ndarray) -> np.ndarray:
    """Advise the kernel that a memory-mapped array is read at random rows (no read-ahead: a 4 KB feature row
    then costs one page, not a 128 KB read-ahead window). A no-op for in-memory arrays."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):
            pass
    return arr


def _table(rows, ks, buffer, offsets, n_items: int, path: Path):
    """Captions grouped by item (sorted by row, then k) → (CaptionTable, sorted (row, k) keys)."""
    order = np.lexsort((ks, rows))
    r, k = rows[order], ks[order]
    dup = np.flatnonzero((np.diff(r) == 0) & (np.diff(k) == 0))
    if dup.size:
        raise DataFormatError(f"{path}: caption (item row {r[dup[0]]}, k {k[dup[0]]}) appears twice")
    if order.size and np.all(np.diff(order) > 0):  # already in (row, k) order: keep the buffer
        table_buf, new_off = buffer, offsets
    else:
        lens = offsets[1:] - offsets[:-1]
        new_off = np.zeros(order.size + 1, dtype=np.int64)
        np.cumsum(lens[order], out=new_off[1:])
        table_buf = np.empty(int(new_off[-1]), dtype=np.uint8)
        for c in range(0, order.size, 1 << 16):  # gather the byte ranges in chunks (bounded temporaries)
            o = order[c: c + (1 << 16)]
            lo, hi = new_off[c], new_off[c + o.size]
            idx = np.repeat(offsets[:-1][o] - new_off[c: c + o.size], lens[o]) + np.arange(lo, hi)
            table_buf[lo:hi] = buffer[idx]
    item_start = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_items), out=item_start[1:])
    return CaptionTable(table_buf, new_off, item_start), (r, k)


def mapped_features(features, id_file=None):
    """``(ids, [N, D] memory map)`` of pooled features: a BigFile folder (``id.txt`` + ``feature.bin``) or an ``.npy``
    file with its id file (default ``<name>.ids.txt`` / ``<name>_id.txt`` next to it). Nothing is copied."""
    from .readers import BigFile, read_npy_features

    if Path(features).is_dir():
        bf = BigFile(features)
        ids, feats = bf.names, bf.features
    else:
        ids, feats = read_npy_features(features, id_file, mmap=True)
    if feats.ndim != 2:
        raise DataFormatError(f"{features}: expected pooled features [N={len(ids)}, D], got shape {feats.shape}")
    return ids, random_access(feats)


def is_pooled_bigfile_or_npy(features) -> bool:
    """True for an ``.npy`` file or a BigFile folder without ``video2frames.txt`` (pooled rows, mappable)."""
    p = Path(features)
    return (p.is_dir() and (p / "feature.bin").is_file() and not (p / "video2frames.txt").is_file()) or \
        (p.is_file() and p.name.endswith(".npy"))



def _row_view(feats: np.ndarray, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` of a memory-mapped feature array as a memory map of their own (file offset adjusted, so
    :func:`ccr_fast.data.datasets.read_row` reads them with ``pread``); a plain slice otherwise."""
    fn = getattr(feats, "filename", None)
    if isinstance(feats, np.memmap) and fn and feats.flags.c_contiguous:
        return random_access(np.memmap(fn, dtype=feats.dtype, mode="r", shape=(b - a,) + feats.shape[1:],
                                       offset=int(feats.offset) + a * feats.strides[0]))
    return feats[a:b]


def _keep_captioned(ids: list, feats: np.ndarray, groups: Sequence[dict]):
    """Only the rows with at least one caption (a feature file may hold other splits' items too: they must not be
    training items). A contiguous block of rows stays memory-mapped; scattered rows are copied. Caption tables are
    re-indexed without touching their text (rows without captions own no caption)."""
    has = np.zeros(len(ids), dtype=bool)
    for g in groups:
        for t in g.values():
            has |= t.counts() > 0
    rows = np.flatnonzero(has)
    if rows.size == len(ids):
        return ids, feats, groups
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size:
        feats = _row_view(feats, int(rows[0]), int(rows[-1]) + 1)
    else:
        feats = np.ascontiguousarray(feats[rows])
    out = []
    for g in groups:
        new = {}
        for key, t in g.items():
            starts = np.zeros(rows.size + 1, dtype=np.int64)
            np.cumsum(t.counts()[rows], out=starts[1:])
            new[key] = CaptionTable(t.buffer, t.offsets, starts)
        out.append(new)
    return [ids[i] for i in rows.tolist()], feats, out


def load_nrccr_compact(root, caption_files: Sequence, features, id_file, *, name: Optional[str] = None) -> CCRData:
    """An NRCCR collection with compact captions and memory-mapped ``.npy`` features.

    Args:
        root: the collection folder (for the name).
        caption_files: caption file paths; each holds one tag (human captions or an MT tag, as
            :func:`ccr_fast.data.readers.nrccr_tag_to_key`). Translations must pair 1:1 with their source captions
            by ``(visual id, k)``.
        features: an ``[N, D]`` ``.npy`` file (memory-mapped, any float dtype; rows follow ``id_file``) or a BigFile
            folder (``feature.bin`` memory-mapped, rows follow its ``id.txt``).
        id_file: the N row ids of an ``.npy`` (None: ``<name>.ids.txt`` / ``<name>_id.txt``; unused for a BigFile).

    Returns:
        :class:`CCRData` whose items are the feature rows with captions (in row order; a contiguous block of rows
        stays memory-mapped) and whose ``captions``/``translations`` are :class:`CaptionTable` s.
    """
    ids, feats = mapped_features(features, id_file)
    row_of = {v: i for i, v in enumerate(ids)}
    captions, translations, keys, sources = {}, {}, {}, {}
    for path in caption_files:
        tag, rows, ks, buf, off = _read_file(Path(path), row_of)
        kind, key = nrccr_tag_to_key(tag)
        table, kk = _table(rows, ks, buf, off, len(ids), Path(path))
        (captions if kind == "captions" else translations)[key] = table
        keys[key], sources[key] = kk, str(path)
    for tag in translations:
        src = translation_source(tag)
        if src not in captions:
            raise DataFormatError(f"{sources[tag]}: translations {tag!r} but no {src!r} caption file given")
        a, b = keys[src], keys[tag]
        if a[0].shape != b[0].shape or not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
            raise DataFormatError(f"{sources[tag]}: translations {tag!r} do not pair 1:1 by (visual id, k) with the "
                                  f"{src!r} captions of {sources[src]}")
    ids, feats, (captions, translations) = _keep_captioned(ids, feats, (captions, translations))
    return CCRData(name or Path(root).name, [visual_key(i) for i in ids], feats, captions, translations,
                   sources=sources)


def _read_records(path: Path, row_of: dict, per_row: np.ndarray):
    """(rows [M], k [M], buffer, offsets) of one IGLUE/CCLM caption file; ``k`` numbers each item's captions in file
    order (``per_row`` counts them across the file's records)."""
    from .readers import iter_caption_records

    rows, ks, lens = array("q"), array("q"), array("q")
    buf = bytearray()
    for rec in iter_caption_records(path):
        row = row_of.get(rec["key"])
        if row is None:
            raise DataFormatError(f"{path}: image {rec['key']!r} has no feature row (feature ids)")
        for text in rec["captions"]:
            b = text.encode("utf-8")
            rows.append(row)
            ks.append(int(per_row[row]))
            per_row[row] += 1
            lens.append(len(b))
            buf += b
    if not rows:
        raise DataFormatError(f"{path}: no captions")
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(lens, dtype=np.int64), out=offsets[1:])
    return (np.frombuffer(rows, dtype=np.int64).copy(), np.frombuffer(ks, dtype=np.int64).copy(),
            np.frombuffer(buf, dtype=np.uint8), offsets)


def load_jsonl_compact(files, features, feature_ids=None, *, mt_files=None, mt_target: str = "en",
                       name: str = "jsonl") -> CCRData:
    """An IGLUE / CCLM collection with compact captions and memory-mapped pooled features (training splits).

    Args:
        files: language -> caption file (``.jsonl`` records ``{"id"|"img_path", "sentences"}`` or a CCLM ``.json``
            list); records of one image are merged in file order.
        features: an ``.npy`` file or a BigFile folder (see :func:`mapped_features`); items are its rows with
            captions (as :func:`load_nrccr_compact`).
        feature_ids: the ``.npy``'s id file (image names reduced with :func:`~ccr_fast.data.readers.visual_key`).
        mt_files: language -> its machine translation into ``mt_target`` with the same records and sentence counts;
            stored as ``translations["<lang>2<mt_target>"]``.

    Returns:
        :class:`CCRData` with :class:`CaptionTable` captions/translations; a captioned image without a feature row
        is an error naming the file.
    """
    ids, feats = mapped_features(features, feature_ids)
    keys = [visual_key(i) for i in ids]
    row_of = {k: i for i, k in enumerate(keys)}
    captions, translations, sources, kk = {}, {}, {}, {}
    for lang, path in files.items():
        rows, ks, buf, off = _read_records(Path(path), row_of, np.zeros(len(ids), dtype=np.int64))
        captions[lang], kk[lang] = _table(rows, ks, buf, off, len(ids), Path(path))
        sources[lang] = str(path)
    for lang, path in (mt_files or {}).items():
        if lang not in captions:
            raise ValueError(f"mt_files[{lang!r}]: no caption file for {lang!r} in files")
        rows, ks, buf, off = _read_records(Path(path), row_of, np.zeros(len(ids), dtype=np.int64))
        table, k2 = _table(rows, ks, buf, off, len(ids), Path(path))
        a = kk[lang]
        if a[0].shape != k2[0].shape or not (np.array_equal(a[0], k2[0]) and np.array_equal(a[1], k2[1])):
            raise DataFormatError(f"{path}: its sentences do not pair 1:1 per image with the {lang!r} captions of "
                                  f"{files[lang]}")
        tag = f"{lang}2{mt_target}"
        translations[tag], sources[tag] = table, str(path)
    keys, feats, (captions, translations) = _keep_captioned(keys, feats, (captions, translations))
    return CCRData(name, keys, feats, captions, translations, sources=sources)
