"""Collections of raw images or video frames, encoded by the configured vision tower (top-level ``visual_encoder``).

Layouts (``data`` config value):

* CSV / TSV: ``{"root": folder, "train": {"csv": file}, "val": {"csv": file}, "test": {"csv": file}}``; a header
  with ``image`` (a path relative to ``root``, or absolute), ``lang`` and ``caption``, one row per caption; a
  ``video`` column naming a folder of frame images replaces ``image``. ``.tsv`` files are tab-separated.
* IGLUE / CCR^k JSON lines whose records' ``img_path`` lies under ``files.image_root`` (default: the data folder):
  a collection folder without its feature file, or a mapping ``{"jsonl": {lang: file}}`` without ``features``.
* NRCCR layout (``TextData/``) whose ``FeatureData/`` is replaced by ``files.image_folder`` (``ImageData/``): an
  image ``<id>.<ext>`` or a frame folder ``<id>/`` per visual id.

A frozen tower (``model.visual_trainable_layers: []``, the default) runs once per image: its outputs become the
collection's features (``[N, D]`` pooled, ``[N, T, D]`` patch tokens, or ``[N, F, D]`` frames with
``files.video_frames: keep``), kept for the process so validation and test reuse them. Video frames are sampled
uniformly (``files.frames_per_video``). Bad media follow ``files.skip_bad_media`` (:mod:`.media`).

A trainable tower (``model.visual_trainable_layers``: the top blocks by index, or null for the whole tower) is
split: the frozen bottom runs once per image (Pillow decoding in DataLoader workers, as above) and its flat output
states ``[N, T·D]`` (the processed pixels ``[N, C·H·W]`` for null) become the features; the top
(:class:`ccr_fast.models.towers.TowerTop`, attached to the method by :func:`attach_tower`) runs in every step,
trains, and is saved in the checkpoint.
"""
from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .core import CCRData
from .media import IMAGE_EXTS, BadMediaError, MediaReport, tower_features, video_frames
from .readers import DataFormatError

log = logging.getLogger("ccr_fast.data")

__all__ = ["read_media_csv", "media_csv_data", "media_jsonl_data", "nrccr_media_features", "encode_media",
           "get_tower", "last_report", "tower_trains", "feature_tower", "tower_out_dim", "attach_tower"]

_TOWERS: Dict[tuple, tuple] = {}
_FEATURES: "OrderedDict[tuple, tuple]" = OrderedDict()
_REPORTS: List[str] = []


def last_report() -> List[str]:
    """Bad-media summaries of this process's media loads (newest last)."""
    return list(_REPORTS)


def get_tower(name: str, tokens: str = "pooled", trainable_layers=()) -> tuple:
    """``(VisionTower, image processor)`` for ``name`` (a folder or cached hub id), loaded once per process."""
    from ..models.towers import load_image_processor, load_vision_tower, resolve_hf_model

    path = str(resolve_hf_model(name))
    key = (path, tokens)
    if key not in _TOWERS:
        import torch

        with torch.random.fork_rng(devices=[]):  # model construction draws random numbers: keep the run's stream
            _TOWERS[key] = (load_vision_tower(path, tokens=tokens, trainable_layers=[]), load_image_processor(path))
    return _TOWERS[key]


def tower_trains(cfg) -> bool:
    """Whether ``cfg`` trains (part of) its ``visual_encoder`` tower (``model.visual_trainable_layers`` not [])."""
    layers = cfg.model.visual_trainable_layers
    return bool(cfg.visual_encoder) and (layers is None or bool(list(layers)))


def _spec(cfg):
    layers = cfg.model.visual_trainable_layers
    return None if layers is None else list(layers)


def feature_tower(cfg) -> tuple:
    """``(module, image processor)``: what turns ``pixel_values`` into this config's features: the frozen tower,
    or the frozen bottom of a trainable one (:class:`ccr_fast.models.towers.TowerBottom`)."""
    tower, proc = get_tower(cfg.visual_encoder, cfg.model.visual_tokens)
    if not tower_trains(cfg):
        return tower, proc
    from ..models.towers import TowerBottom, trainable_start

    return TowerBottom(tower, trainable_start(tower, _spec(cfg))), proc


def tower_out_dim(cfg) -> int:
    """The width of the tower's output (what the method's visual head takes when the tower trains)."""
    tower, _ = get_tower(cfg.visual_encoder, cfg.model.visual_tokens)
    return int(tower.out_dim)


def attach_tower(method) -> None:
    """Give ``method`` the trainable top of its tower (``method.tower_top``, its own copy of the weights) and run
    it in front of ``method.visual``; a no-op for a frozen tower."""
    cfg = method.cfg
    if not tower_trains(cfg):
        return
    from ..models.towers import TowerTop, load_vision_tower, resolve_hf_model, trainable_start

    path = str(resolve_hf_model(cfg.visual_encoder))
    import torch

    with torch.random.fork_rng(devices=[]):
        tower = load_vision_tower(path, tokens=cfg.model.visual_tokens, trainable_layers=[])
    start = trainable_start(tower, _spec(cfg))
    tower.set_trainable(_spec(cfg))
    method.tower_top = TowerTop(tower, start)

    def run_top(module, args):
        return (method.tower_top(args[0]),) + tuple(args[1:])

    method.visual.register_forward_pre_hook(run_top)


def _stamp(path) -> tuple:
    """A file's identity for the per-process feature cache: path, size and modification time (None if missing)."""
    try:
        st = os.stat(path)
        return str(path), st.st_size, st.st_mtime_ns
    except OSError:
        return str(path), None, None


def encode_media(cfg, items: Sequence, what: str) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Features of ``items`` (image paths, or lists of frame paths) through ``cfg.visual_encoder``:
    ``(features, n_frames or None, kept row indices)``; cached per process."""
    f = cfg.files
    trains = tower_trains(cfg)
    if trains and any(isinstance(x, list) for x in items):
        from ..config import ConfigError

        raise ConfigError("model.visual_trainable_layers: a trainable tower takes images, not video frame folders "
                          "(use [] for video)")
    key = (str(cfg.visual_encoder), cfg.model.visual_tokens, repr(_spec(cfg)) if trains else "frozen",
           f.video_frames, bool(f.skip_bad_media),
           tuple(_stamp(x) if not isinstance(x, list) else tuple(map(_stamp, x)) for x in items))
    if key in _FEATURES:
        _FEATURES.move_to_end(key)
        return _FEATURES[key]
    tower, proc = feature_tower(cfg)
    device = cfg.device
    import torch

    with torch.random.fork_rng(devices=[]):  # DataLoader iterators draw a seed: keep the run's random stream
        feats, n_frames, kept, report = tower_features(
            tower, proc, items, batch_size=int(f.media_batch_size), num_workers=int(cfg.num_workers),
            skip_bad=bool(f.skip_bad_media), device=device, frames=f.video_frames, progress=False, desc=what)
    if len(report):
        _REPORTS.append(report.summary(what))
        print(report.summary(what))
    out = (feats, n_frames, kept)
    _FEATURES[key] = out
    while len(_FEATURES) > 8:
        _FEATURES.popitem(last=False)
    return out


def read_media_csv(path: Path) -> Tuple[str, List[Tuple[str, str, str]]]:
    """``(column, rows)``: column is ``"image"`` or ``"video"``; rows ``(media, lang, caption)`` in file order."""
    if not path.is_file():
        raise DataFormatError(f"{path}: CSV file not found")
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delim)
        cols = reader.fieldnames or []
        media = "video" if "video" in cols else "image"
        need = [media, "lang", "caption"]
        if any(c not in cols for c in need):
            raise DataFormatError(f"{path}: expected the columns image (or video), lang, caption; got {cols}")
        rows = []
        for line, r in enumerate(reader, 2):
            if not (r.get(media) or "").strip() or not (r.get("lang") or "").strip() or r.get("caption") is None:
                raise DataFormatError(f"{path}:{line}: empty {media}, lang or caption")
            rows.append((r[media].strip(), r["lang"].strip(), r["caption"]))
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return media, rows


def _under(root: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else root / p


def _media_item(cfg, path: Path, video: bool, skip: bool):
    """An image path, or the sampled frame paths of a video folder (a bad folder: [] when skipping)."""
    if not video:
        return str(path)
    try:
        return [str(p) for p in video_frames(path, cfg.files.frames_per_video)]
    except BadMediaError:
        if not skip:
            raise
        return []


def _encode_items(cfg, vids: list, items: list, what: str):
    """Encode ``items``; returns ``(features, n_frames, keep mask over vids)``."""
    feats, n_frames, kept = encode_media(cfg, items, what)
    keep = np.zeros(len(vids), dtype=bool)
    keep[kept] = True
    return feats, n_frames, keep


def media_csv_data(cfg, csv_path, root, split: str, langs: Optional[Sequence[str]] = None,
                   features=None, ids=None) -> CCRData:
    """A :class:`CCRData` from a caption CSV/TSV over raw media (module docstring), encoded by
    ``cfg.visual_encoder``; or, with ``features`` (an ``.npy`` with ``.ids.txt``, e.g. from ``ccr-fast extract``),
    over those precomputed rows matched by image id (the file stem)."""
    root = Path(str(root)).expanduser()
    path = _under(root, str(csv_path))
    column, rows = read_media_csv(path)
    order = OrderedDict()
    for m, _, _ in rows:
        order.setdefault(m, len(order))
    vids = list(order)
    use = list(langs) if langs else None
    captions: Dict[str, list] = OrderedDict()
    for m, lang, cap in rows:
        if use is not None and lang not in use and split != "train":
            continue
        captions.setdefault(lang, [[] for _ in vids])[order[m]].append(cap)
    skip = bool(cfg.files.skip_bad_media)
    if features is not None:
        from .readers import read_npy_features, visual_key

        fids, arr = read_npy_features(_under(root, str(features)), None if ids is None else _under(root, str(ids)))
        row = {visual_key(i): r for r, i in enumerate(fids)}
        missing = [v for v in vids if visual_key(v) not in row]
        if missing:
            raise DataFormatError(f"{features}: {len(missing)} images of {path} have no feature row, e.g. "
                                  f"{missing[:3]}")
        feats = np.asarray(arr[np.asarray([row[visual_key(v)] for v in vids], dtype=np.int64)], dtype=np.float32)
        n_frames, keep = None, np.ones(len(vids), dtype=bool)
    else:
        items = [_media_item(cfg, _under(root, v), column == "video", skip) for v in vids]
        feats, n_frames, keep = _encode_items(cfg, vids, items, f"{path.name} ({split})")
    idx = np.flatnonzero(keep)
    return CCRData(f"{root.name}/{split}", [vids[i] for i in idx], feats,
                   {lang: [c[i] for i in idx] for lang, c in captions.items()}, n_frames=n_frames,
                   sources={lang: str(path) for lang in captions})


def media_jsonl_data(cfg, files: dict, mt: dict, image_root, name: str) -> CCRData:
    """IGLUE / CCR^k JSON-lines caption files whose ``img_path`` lies under ``image_root``, encoded by the tower."""
    from .readers import iter_caption_records, load_jsonl_collection

    root = Path(str(image_root)).expanduser()
    order: "OrderedDict[str, Path]" = OrderedDict()
    for lang, p in files.items():
        if not Path(p).is_file():
            raise DataFormatError(f"{p}: caption file for {lang!r} not found (set files.jsonl_captions)")
        for rec in iter_caption_records(p):
            if rec["image"] is None:
                raise DataFormatError(f"{p}: record {rec['key']!r} has no img_path (needed with visual_encoder)")
            order.setdefault(rec["key"], _under(root, str(rec["image"])))
    vids = list(order)
    items = [str(order[v]) for v in vids]
    feats, n_frames, keep = _encode_items(cfg, vids, items, name)
    ids = [v for v, k in zip(vids, keep) if k]
    src = list(cfg.languages)[0]
    return load_jsonl_collection(files, feats, ids, mt_files=mt or None, mt_target=src, name=name,
                                 missing_features="drop" if cfg.files.skip_bad_media else "error")


def nrccr_media_features(cfg, folder: Path):
    """A callable ``vids -> (features, n_frames, keep mask)`` over ``folder`` (an image ``<id>.<ext>`` or a frame
    folder ``<id>/`` per id) for :func:`ccr_fast.data.readers.load_nrccr_collection`."""
    skip = bool(cfg.files.skip_bad_media)

    def find(v: str):
        d = folder / v
        if d.is_dir():
            return _media_item(cfg, d, True, skip)
        for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
            if (folder / (v + ext)).is_file():
                return str(folder / (v + ext))
        return str(folder / (v + ".jpg"))  # missing: the bad-media policy names it

    def features(vids):
        return _encode_items(cfg, list(vids), [find(v) for v in vids], f"{folder.name} ({len(vids)} items)")

    return features


__all__ += ["MediaReport"]
