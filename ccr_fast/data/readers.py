"""Readers for the on-disk formats of NRCCR, CCLM/CCR^k, IGLUE and Multi30K, and builders of :class:`CCRData`.

Readers return plain Python / numpy. Malformed input raises :class:`DataFormatError` (a ``ValueError``) whose
message starts with ``<file>:<line>:``. Text files may be gzip-compressed (``.gz``); they are read as UTF-8.

Formats:
    * NRCCR caption file: one caption per line, ``<visual_id>#<tag>#<k> <text>`` split at the first space;
      tags ``enc`` (English), ``xx`` (human target), ``enc2xx`` (MT), ``enc2xx2enc`` (back-translation),
      ``xx2enc`` (target MT'd to English). The visual id has ``.jpg``/``.mp4`` stripped.
    * ``.npy`` features + an id list (whitespace separated, row i = id i).
    * BigFile folder: ``shape.txt`` ("N D"), ``id.txt`` (N ids), ``feature.bin`` (N×D float32, row-major, no header,
      memory-mapped), optional ``video2frames.txt`` (a Python dict literal, parsed with ``ast.literal_eval``).
    * HDF5 (needs ``h5py``): a 2-d dataset + an id dataset, or one dataset per item id.
    * CCLM json (a list of ``{"caption": str | [str], "image": path, "image_id": ...}``) and IGLUE jsonl
      (one ``{"sentences": [str], "id": ..., "img_path": path}`` per line).
    * Multi30K raw: ``<split>.<lang>[.gz]`` line-aligned with an image list.
"""
from __future__ import annotations

import ast
import gzip
import json
import os
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .core import CCRData, translation_source

__all__ = [
    "DataFormatError", "NRCCRCaption", "open_text", "read_lines", "read_id_list", "visual_key", "parse_cap_id",
    "nrccr_tag_to_key", "read_nrccr_captions", "read_npy_features", "BigFile", "read_video2frames",
    "read_hdf5_features", "read_caption_records", "iter_caption_records", "read_multi30k", "load_nrccr_collection",
    "load_jsonl_collection",
]

PathLike = Union[str, os.PathLike]
NRCCRCaption = namedtuple("NRCCRCaption", "cap_id visual_id tag k text")
NRCCRCaption.__doc__ = "One parsed NRCCR caption line: ``visual_id#tag#k text``."


class DataFormatError(ValueError):
    """Malformed data file; the message names the file and, where it applies, the 1-based line."""


def _where(path: PathLike, line: Optional[int] = None) -> str:
    return f"{path}:{line}" if line is not None else f"{path}"


def open_text(path: PathLike):
    """Open a UTF-8 text file for reading, transparently decompressing ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def read_lines(path: PathLike) -> list:
    """All lines of a (possibly gzipped) text file, without the trailing newline."""
    with open_text(path) as f:
        return [line.rstrip("\r\n") for line in f]


def read_id_list(path: PathLike) -> list:
    """Whitespace-separated ids (one per line or all on one line), in file order. Duplicates raise."""
    with open_text(path) as f:
        ids = f.read().split()
    seen = set()
    for i in ids:
        if i in seen:
            raise DataFormatError(f"{path}: duplicate id {i!r}")
        seen.add(i)
    return ids


def visual_key(name) -> str:
    """Canonical visual id: directory and a ``.jpg/.jpeg/.png/.mp4/.avi/.webm`` extension stripped."""
    name = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    if dot and ext.lower() in ("jpg", "jpeg", "png", "mp4", "avi", "webm"):
        return stem
    return name


def parse_cap_id(cap_id: str, *, path: PathLike = "<string>", line: Optional[int] = None):
    """Split an NRCCR caption id ``<visual_id>#<tag>#<k>`` into ``(visual_id, tag, k)``.

    ``k`` is an ``int`` when numeric, else the string. The visual id loses a media extension (:func:`visual_key`).

    Raises:
        DataFormatError: not three non-empty ``#``-separated fields.
    """
    parts = cap_id.split("#")
    if len(parts) != 3 or not all(parts):
        raise DataFormatError(f"{_where(path, line)}: caption id {cap_id!r}: expected '<visual_id>#<tag>#<k>'")
    vid, tag, k = parts
    return visual_key(vid), tag, int(k) if k.isdigit() else k


def nrccr_tag_to_key(tag: str):
    """Map an NRCCR tag to ``("captions", lang)`` or ``("translations", mt_tag)``; ``enc`` is English.

    ``enc`` -> captions en; ``de`` -> captions de; ``enc2de`` -> translations en2de; ``enc2de2enc`` -> en2de2en;
    ``de2enc`` -> de2en.
    """
    parts = ["en" if p == "enc" else p for p in tag.split("2")]
    if len(parts) == 1:
        return "captions", parts[0]
    key = "2".join(parts)
    translation_source(key)  # validates the shape of the tag
    return "translations", key


def read_nrccr_captions(path: PathLike) -> list:
    """Read an NRCCR caption file.

    Args:
        path: ``*.caption.txt`` (or ``.gz``), lines ``<visual_id>#<tag>#<k> <text>``; blank lines are skipped.

    Returns:
        list of :data:`NRCCRCaption` in file order.

    Raises:
        DataFormatError: a line without text, a malformed id, or a caption id seen twice (file and line named).
    """
    out, seen = [], {}
    with open_text(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            cap_id, _, text = line.partition(" ")
            if not text.strip():
                raise DataFormatError(f"{_where(path, lineno)}: expected '<visual_id>#<tag>#<k> <text>', got {line!r}")
            vid, tag, k = parse_cap_id(cap_id, path=path, line=lineno)
            if cap_id in seen:
                raise DataFormatError(f"{_where(path, lineno)}: caption id {cap_id!r} already on line {seen[cap_id]}")
            seen[cap_id] = lineno
            out.append(NRCCRCaption(cap_id, vid, tag, k, text.strip()))
    return out


def read_npy_features(npy_path: PathLike, ids: Union[PathLike, Sequence[str], None] = None, *, mmap: bool = True):
    """Load an ``.npy`` feature matrix and its row ids.

    Args:
        npy_path: ``[N, Dv]`` (or ``[N, F, Dv]``) array.
        ids: an id file, a list of ids, or None to look for ``<name>.ids.txt`` / ``<name>_id.txt`` next to it.
        mmap: memory-map the array read-only instead of loading it.

    Returns:
        ``(ids: list[str], features: np.ndarray)`` with ``len(ids) == features.shape[0]``.
    """
    npy_path = Path(npy_path)
    if ids is None:
        stem = npy_path.name[:-4] if npy_path.name.endswith(".npy") else npy_path.name
        candidates = [npy_path.with_name(stem + ".ids.txt"), npy_path.with_name(stem + "_id.txt")]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"ids for {npy_path}: none given and none of {[str(c) for c in candidates]} exist")
        ids = found[0]
    ids = read_id_list(ids) if isinstance(ids, (str, os.PathLike)) else [str(i) for i in ids]
    if not npy_path.is_file():
        raise FileNotFoundError(f"data file not found: {npy_path}")
    feats = np.load(npy_path, mmap_mode="r" if mmap else None)
    if feats.ndim not in (2, 3) or feats.shape[0] != len(ids):
        raise DataFormatError(f"{npy_path}: expected shape [N={len(ids)} (ids), Dv], got {feats.shape}")
    return ids, feats


def read_video2frames(path: PathLike) -> dict:
    """Parse ``video2frames.txt`` (a Python dict literal ``{video_id: [frame_id, ...]}``) with ``ast.literal_eval``."""
    with open_text(path) as f:
        text = f.read()
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        line = getattr(e, "lineno", None)
        raise DataFormatError(f"{_where(path, line)}: expected a Python dict literal "
                              f"{{video: [frames]}}: {e}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, (list, tuple)) for v in obj.values()):
        raise DataFormatError(f"{path}: expected a dict of lists of frame ids, got {type(obj).__name__}")
    return {str(k): [str(x) for x in v] for k, v in obj.items()}


class BigFile:
    """NRCCR/W2VV BigFile feature folder, memory-mapped.

    Args:
        folder: holds ``shape.txt`` ("N D"), ``id.txt`` (N ids) and ``feature.bin`` (N×D float32, row-major).

    Attributes:
        names: the N row ids; ``shape``: ``(N, D)``; ``features``: read-only ``np.memmap`` ``[N, D]`` float32.
    """

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        shape_path = self.folder / "shape.txt"
        fields = read_lines(shape_path)
        fields = " ".join(fields).split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise DataFormatError(f"{_where(shape_path, 1)}: expected 'N D', got {' '.join(fields)!r}")
        self.shape = (int(fields[0]), int(fields[1]))
        self.names = read_id_list(self.folder / "id.txt")
        if len(self.names) != self.shape[0]:
            raise DataFormatError(f"{self.folder / 'id.txt'}: expected {self.shape[0]} ids (shape.txt), "
                                  f"got {len(self.names)}")
        bin_path = self.folder / "feature.bin"
        if not bin_path.is_file():
            raise FileNotFoundError(f"data file not found: {bin_path}")
        expected = self.shape[0] * self.shape[1] * 4
        if bin_path.stat().st_size != expected:
            raise DataFormatError(f"{bin_path}: expected {expected} bytes (float32 {self.shape}), "
                                  f"got {bin_path.stat().st_size}")
        self.features = np.memmap(bin_path, dtype=np.float32, mode="r", shape=self.shape)
        self._row = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, ids: Iterable[str]) -> np.ndarray:
        """Rows for ``ids`` as a new ``[len(ids), D]`` float32 array (KeyError names a missing id)."""
        rows = []
        for i in ids:
            if i not in self._row:
                raise KeyError(f"id {i!r} not in {self.folder / 'id.txt'}")
            rows.append(self._row[i])
        return np.asarray(self.features[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def read_frames(self, video2frames: Mapping[str, Sequence[str]], videos: Sequence[str],
                    max_frames: Optional[int] = None):
        """Frame features per video, zero-padded: ``([V, F, D] float32, n_frames [V] int64)``.

        ``F`` is the largest frame count (capped at ``max_frames``, keeping the first frames).
        """
        lists = []
        for v in videos:
            if v not in video2frames:
                raise KeyError(f"video {v!r} not in video2frames")
            frames = list(video2frames[v])[: max_frames] if max_frames else list(video2frames[v])
            if not frames:
                raise ValueError(f"video {v!r}: no frames")
            lists.append(frames)
        f_max = max(len(f) for f in lists) if lists else 0
        out = np.zeros((len(videos), f_max, self.shape[1]), dtype=np.float32)
        n = np.zeros(len(videos), dtype=np.int64)
        for j, frames in enumerate(lists):
            out[j, : len(frames)] = self.read(frames)
            n[j] = len(frames)
        return out, n


def read_hdf5_features(path: PathLike, dataset: Optional[str] = None, ids_dataset: str = "ids"):
    """Read features from HDF5 (needs ``h5py``).

    Args:
        path: the ``.h5``/``.hdf5`` file.
        dataset: name of a 2-d ``[N, D]`` dataset (with ids in ``ids_dataset``), or None when every top-level
            dataset is one item (its name is the id, its value the feature vector or ``[F, D]`` frames).

    Returns:
        ``(ids: list[str], features: np.ndarray)``; for per-item datasets of equal shape they are stacked.
    """
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("read_hdf5_features needs h5py (pip install h5py)") from e
    with h5py.File(path, "r") as f:
        if dataset is not None:
            if dataset not in f or ids_dataset not in f:
                raise DataFormatError(f"{path}: expected datasets {dataset!r} and {ids_dataset!r}, "
                                      f"got {list(f.keys())}")
            feats = np.asarray(f[dataset])
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in np.asarray(f[ids_dataset]).tolist()]
            if feats.shape[0] != len(ids):
                raise DataFormatError(f"{path}: {dataset!r} has {feats.shape[0]} rows, "
                                      f"{ids_dataset!r} has {len(ids)} ids")
            return ids, feats
        ids = list(f.keys())
        arrays = [np.asarray(f[k]) for k in ids]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataFormatError(f"{path}: per-item datasets have different shapes {sorted(shapes)[:3]}; pass dataset=")
    return ids, np.stack(arrays) if arrays else np.zeros((0, 0), np.float32)


def _record(obj, path, line):
    """Normalise one CCLM/IGLUE record to ``{"key", "image", "captions"}``."""
    if not isinstance(obj, dict):
        raise DataFormatError(f"{_where(path, line)}: expected a JSON object, got {type(obj).__name__}")
    if "sentences" in obj:
        caps = obj["sentences"]
    elif "caption" in obj:
        caps = obj["caption"]
    else:
        raise DataFormatError(f"{_where(path, line)}: expected key 'caption' or 'sentences', got {sorted(obj)}")
    caps = [caps] if isinstance(caps, str) else caps
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise DataFormatError(f"{_where(path, line)}: captions must be a string or a list of strings")
    image = obj.get("image", obj.get("img_path"))
    ident = obj.get("id", obj.get("image_id"))
    if image is None and ident is None:
        raise DataFormatError(f"{_where(path, line)}: expected 'image'/'img_path' or 'id'/'image_id', "
                              f"got {sorted(obj)}")
    key = visual_key(image) if image is not None else str(ident)
    return {"key": key, "image": image, "captions": list(caps)}


def iter_caption_records(path: PathLike):
    """Yield the records of a CCLM ``.json`` (one list) or IGLUE ``.jsonl`` (one object per line, read line by line),
    optionally gzipped, as ``{"key", "image", "captions"}`` (see :func:`read_caption_records`)."""
    name = Path(path).name.removesuffix(".gz")
    with open_text(path) as f:
        if name.endswith(".jsonl"):
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"{_where(path, lineno)}: invalid JSON: {e.msg}") from None
                yield _record(obj, path, lineno)
        else:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{_where(path, e.lineno)}: invalid JSON: {e.msg}") from None
            if not isinstance(data, list):
                raise DataFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            for i, obj in enumerate(data):
                yield _record(obj, path, f"record {i}")


def read_caption_records(path: PathLike) -> list:
    """Read CCLM ``.json`` (one list) or IGLUE ``.jsonl`` (one object per line), optionally gzipped.

    Returns:
        list of ``{"key": visual id (image file stem, else id), "image": path or None, "captions": [str]}`` in
        file order (a CCLM training file has one record per caption; records are not grouped here).
    """
    return list(iter_caption_records(path))


def read_multi30k(raw_dir: PathLike, split: str, lang: str, image_list: PathLike) -> list:
    """Multi30K raw captions paired with their images.

    Args:
        raw_dir: folder with ``<split>.<lang>`` or ``<split>.<lang>.gz``.
        split: e.g. ``"test_2016_flickr"`` (task 1) or ``"test_2016.3"`` (task 2, caption 3).
        lang: ``en``/``de``/``fr``/``cs``.
        image_list: image file names, line i ↔ caption line i.

    Returns:
        list of ``(visual_id, caption)`` with the visual id the image stem.
    """
    raw_dir = Path(raw_dir)
    path = raw_dir / f"{split}.{lang}.gz"
    if not path.is_file():
        path = raw_dir / f"{split}.{lang}"
    caps = read_lines(path)
    images = read_lines(image_list)
    images = [i.strip() for i in images if i.strip()]
    if caps and caps[-1] == "" and len(caps) == len(images) + 1:
        caps = caps[:-1]
    if len(caps) != len(images):
        raise DataFormatError(f"{path}: expected {len(images)} lines (as {image_list}), got {len(caps)}")
    for lineno, c in enumerate(caps, 1):
        if not c.strip():
            raise DataFormatError(f"{_where(path, lineno)}: empty caption")
    return [(visual_key(i), c.strip()) for i, c in zip(images, caps)]


# ----------------------------------------------------------------------------------------------- builders


def _resolve(root: Path, sub: str, name: PathLike, suffixes: Sequence[str] = ("",)) -> Path:
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    for s in suffixes:
        q = root / sub / (str(name) + s)
        if q.exists():
            return q
    raise FileNotFoundError(f"{name}: not found as a path nor under {root / sub} (tried suffixes {list(suffixes)})")


def load_nrccr_collection(root: PathLike, caption_files: Sequence[PathLike], features: PathLike, *,
                          id_file: Optional[PathLike] = None, name: Optional[str] = None,
                          max_frames: Optional[int] = None) -> CCRData:
    """Build a :class:`CCRData` from an NRCCR collection folder (``<root>/TextData``, ``<root>/FeatureData``).

    Args:
        root: the collection folder, e.g. ``~/VisualSearch/multi30k``.
        caption_files: NRCCR caption files, as paths or names under ``root/TextData`` (``.caption.txt`` is
            appended when needed), e.g. ``["multi30ktrain_enc", "multi30ktrain_google_enc2de",
            "multi30ktrain_google_enc2de2enc"]``. Tags map as :func:`nrccr_tag_to_key`.
        features: a BigFile folder or an ``.npy`` file, as a path or a name under ``root/FeatureData``. A BigFile
            with ``video2frames.txt`` gives frame features ``[N, F, D]`` (zero-padded, ``n_frames`` set). Or a
            callable ``vids -> (features, n_frames, keep mask)`` (raw media, :mod:`ccr_fast.data.media_data`).
        id_file: row ids of an ``.npy`` (path or name under ``root/FeatureData``); default
            ``<npy>.ids.txt`` / ``<npy>_id.txt``.
        name: the data name (default: the folder name).
        max_frames: keep at most this many frames per video.

    Returns:
        Items are the visual ids with at least one caption, in order of first appearance in ``caption_files``.
        Per item, captions keep file order; a translation is placed at the position of the source caption with
        the same ``(visual_id, k)`` (the NRCCR alignment rule).

    Raises:
        DataFormatError: malformed lines (file:line), a translation without its source caption, a source caption
            without its translation, or an item missing from the features.
    """
    root = Path(root).expanduser()
    parsed = []
    for cf in caption_files:
        path = _resolve(root, "TextData", cf, ("", ".caption.txt", ".caption.txt.gz", ".gz"))
        parsed.append((path, read_nrccr_captions(path)))
    items = OrderedDict()
    for _, caps in parsed:
        for c in caps:
            items.setdefault(c.visual_id, len(items))
    vids = list(items)
    captions, trans_raw = OrderedDict(), OrderedDict()
    for path, caps in parsed:
        for c in caps:
            kind, key = nrccr_tag_to_key(c.tag)
            if kind == "captions":
                if key not in captions:  # (not setdefault: its default would be built for every caption)
                    captions[key] = [[] for _ in vids]
                captions[key][items[c.visual_id]].append((c.k, c.text))
            else:
                trans_raw.setdefault(key, {})[(c.visual_id, c.k)] = (c.text, path, c.cap_id)
    translations = OrderedDict()
    for tag, table in trans_raw.items():
        src = translation_source(tag)
        if src not in captions:
            path, cap_id = next(iter(table.values()))[1:]
            raise DataFormatError(f"{path}: translations {tag!r} (e.g. {cap_id!r}) but no {src!r} caption file given")
        out, missing = [], []
        for i, per_item in enumerate(captions[src]):
            row = []
            for k, _ in per_item:
                hit = table.pop((vids[i], k), None)
                if hit is None:
                    missing.append(f"{vids[i]}#{k}")
                row.append(hit[0] if hit else None)
            out.append(row)
        if missing:
            raise DataFormatError(f"translations {tag!r}: {len(missing)} {src!r} captions have no translation, "
                                  f"e.g. {missing[:3]}")
        if table:
            text, path, cap_id = next(iter(table.values()))
            raise DataFormatError(f"{path}: translation {cap_id!r} has no {src!r} source caption with the same (id, k)")
        translations[tag] = out
    captions = {lang: [[t for _, t in per] for per in lists] for lang, lists in captions.items()}

    if callable(features):  # raw media (ccr_fast.data.media_data): vids -> (features, n_frames, keep mask)
        feats, n_frames, keep = features(vids)
        full = np.zeros((len(vids),) + feats.shape[1:], dtype=np.float32)
        full[keep] = feats
        nf = None if n_frames is None else np.zeros(len(vids), dtype=np.int64)
        if nf is not None:
            nf[keep] = n_frames
        data = CCRData(name or root.name, vids, full, dict(captions), dict(translations), nf)
        return data if keep.all() else data.subset(np.flatnonzero(keep))  # bad media left out (reported)
    feat_path = _resolve(root, "FeatureData", features)
    n_frames = None
    if feat_path.is_dir():
        bf = BigFile(feat_path)
        v2f = feat_path / "video2frames.txt"
        if v2f.is_file():
            feats, n_frames = bf.read_frames(read_video2frames(v2f), vids, max_frames=max_frames)
        else:
            feats = bf.read(vids)
    else:
        ids_arg = _resolve(root, "FeatureData", id_file, ("", ".txt")) if id_file is not None else None
        ids, arr = read_npy_features(feat_path, ids_arg)
        row = {visual_key(i): r for r, i in enumerate(ids)}
        missing = [v for v in vids if v not in row]
        if missing:
            raise DataFormatError(f"{feat_path}: {len(missing)} captioned items have no feature row, "
                                  f"e.g. {missing[:3]}")
        feats = np.asarray(arr[np.asarray([row[v] for v in vids], dtype=np.int64)], dtype=np.float32)
    return CCRData(name or root.name, vids, feats, dict(captions), dict(translations), n_frames)


def load_jsonl_collection(files: Mapping[str, PathLike], features: Union[PathLike, np.ndarray],
                          feature_ids: Union[PathLike, Sequence[str], None] = None, *,
                          mt_files: Optional[Mapping[str, PathLike]] = None, mt_target: str = "en",
                          name: str = "jsonl", missing_features: str = "error") -> CCRData:
    """Build a :class:`CCRData` from CCLM json / IGLUE jsonl caption files, one per language.

    Args:
        files: language -> caption file (:func:`read_caption_records`); records of the same image are merged.
        features: ``[N, Dv]`` array or an ``.npy`` path; rows follow ``feature_ids``.
        feature_ids: ids or an id file (image names are reduced with :func:`visual_key`); optional for a path with
            a ``.ids.txt`` next to it.
        mt_files: language -> machine translation of that language's file into ``mt_target`` with the same
            records and sentence counts (IGLUE ``test_gmt``); stored as ``translations["<lang>2<mt_target>"]``.
        name: the data name.
        missing_features: ``"error"`` or ``"drop"`` (skip captioned images that have no feature row).

    Returns:
        Items in feature-row order, restricted to images with a caption in at least one language.
    """
    if missing_features not in ("error", "drop"):
        raise ValueError(f"missing_features: expected 'error' or 'drop', got {missing_features!r}")
    if isinstance(features, np.ndarray):
        if feature_ids is None:
            raise ValueError("feature_ids: required when features is an array")
        ids = read_id_list(feature_ids) if isinstance(feature_ids, (str, os.PathLike)) else list(feature_ids)
        arr = features
        if arr.shape[0] != len(ids):
            raise ValueError(f"features: expected {len(ids)} rows (feature_ids), got shape {arr.shape}")
    else:
        ids, arr = read_npy_features(features, feature_ids)
    row = {visual_key(i): r for r, i in enumerate(ids)}

    def grouped(path):
        out = OrderedDict()
        for rec in read_caption_records(path):
            out.setdefault(rec["key"], []).extend(rec["captions"])
        return out

    per_lang = {lang: grouped(p) for lang, p in files.items()}
    keys = set().union(*per_lang.values()) if per_lang else set()
    missing = sorted(k for k in keys if k not in row)
    if missing and missing_features == "error":
        raise DataFormatError(f"{len(missing)} captioned images have no feature row, e.g. {missing[:3]} "
                              "(pass missing_features='drop' to skip them)")
    vids = [k for k in (visual_key(i) for i in ids) if k in keys]
    captions = {lang: [list(g.get(v, [])) for v in vids] for lang, g in per_lang.items()}
    translations = {}
    for lang, path in (mt_files or {}).items():
        if lang not in captions:
            raise ValueError(f"mt_files[{lang!r}]: no caption file for {lang!r} in files")
        g = grouped(path)
        rows = []
        for v, caps in zip(vids, captions[lang]):
            mt = g.get(v, [])
            if len(mt) != len(caps):
                raise DataFormatError(f"{path}: image {v!r} has {len(mt)} translations for "
                                      f"{len(caps)} {lang!r} captions")
            rows.append(list(mt))
        translations[f"{lang}2{mt_target}"] = rows
    feats = np.asarray(arr[np.asarray([row[v] for v in vids], dtype=np.int64)], dtype=np.float32)
    return CCRData(name, vids, feats, captions, translations)
