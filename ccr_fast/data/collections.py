"""The ``data`` config value → :class:`CCRData` of a split.

``data`` may be:

* ``"shipped"`` (also ``"multi30k"``/``"default"``): the small real data of the repository (:mod:`.shipped`), or
  ``{"name": "shipped", "train_captions": "all", ...}`` (other keys are :func:`load_shipped` arguments);
* ``"synthetic"`` or ``{"name": "synthetic", **make_synthetic kwargs}``: :func:`ccr_fast.data.make_synthetic` over
  ``languages``, split 60/20/20 % into train/val/test;
* a collection folder in a paper release layout, read with the file names of the ``files`` config section
  (:class:`ccr_fast.config.FilesConfig`): the NRCCR layout (``TextData/*.caption.txt``, ``FeatureData/``) or the
  IGLUE / CCR^k JSON-lines layout (one ``.jsonl`` per split and language + a feature file);
* raw images or video frames with a top-level ``visual_encoder`` (:mod:`.media_data`): ``{"root": folder, "train":
  {"csv": file}, ...}`` (CSV/TSV captions: ``image``/``video``, ``lang``, ``caption``; with ``"features": npy`` the
  rows come from precomputed features instead), JSON lines whose ``img_path`` lies under ``files.image_root``, or an
  NRCCR folder with ``files.image_folder`` in place of ``FeatureData/``;
* a mapping naming the files explicitly: ``{"root": folder (optional), "train": {...}, "val": {...},
  "test": {...}}`` where each split is ``{"captions": [caption files], "features": npy or BigFile, "ids":
  id file}`` (NRCCR caption files) or ``{"jsonl": {lang: file}, "features": ..., "ids": ..., "mt": {lang:
  file}}``.

Missing files and malformed lines raise :class:`ccr_fast.data.DataFormatError` (a ValueError) naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from .core import CCRData
from .readers import DataFormatError

__all__ = ["load_data", "SYNTHETIC_DEFAULTS", "SPLITS"]

SYNTHETIC_DEFAULTS = {"n_items": 400, "n_concepts": 48, "feature_dim": 64, "seed": 0}
SPLITS = ("train", "val", "test")


def load_data(cfg, split: str, langs: Sequence[str] = None) -> CCRData:
    """The :class:`CCRData` of ``split`` (``"train"``, ``"val"``, ``"test"``) for ``cfg.data`` (module docstring).

    ``langs``: the languages evaluated on a val/test split (default ``cfg.languages``); a collection folder reads
    the caption files of these languages only.
    """
    data = cfg.data
    if getattr(cfg, "visual_encoder", None) and (data in ("synthetic", "shipped", "multi30k", "default") or (
            isinstance(data, dict) and data.get("name") in ("synthetic", "shipped"))):
        raise DataFormatError(f"visual_encoder is set, but data={data!r} holds precomputed features, not images "
                              f"(give a CSV, JSON lines with img_path, or a collection with an image folder)")
    if isinstance(data, dict) and data.get("name") == "synthetic":
        return _synthetic(cfg, split, {k: v for k, v in data.items() if k != "name"})
    if data == "synthetic":
        return _synthetic(cfg, split, {})
    if data in ("shipped", "multi30k", "default") or (isinstance(data, dict) and data.get("name") == "shipped"):
        from .shipped import load_shipped

        kw = {k: v for k, v in data.items() if k != "name"} if isinstance(data, dict) else {}
        train_caps = kw.pop("train_captions", None)
        if train_caps is not None and split == "train":
            kw["captions"] = train_caps  # every human caption for training; evaluation keeps one per language
        return load_shipped(split, **kw)
    try:
        if isinstance(data, dict):
            return _from_mapping(cfg, dict(data), split, langs)
        if isinstance(data, (str, Path)) and Path(str(data)).expanduser().is_dir():
            return _from_folder(cfg, Path(str(data)).expanduser(), split, langs)
    except FileNotFoundError as e:
        raise DataFormatError(str(e)) from None
    raise DataFormatError(f"data: expected 'shipped', 'synthetic', a collection folder or a mapping of files, "
                          f"got {data!r}" + (" (no such folder)" if isinstance(data, str) else ""))


def _synthetic(cfg, split: str, kw: dict) -> CCRData:
    from .synthetic import make_synthetic

    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS} for synthetic data, got {split!r}")
    langs = list(cfg.languages)
    data = make_synthetic(langs=langs, source=langs[0], **{**SYNTHETIC_DEFAULTS, **kw})
    n = len(data)
    cut = [0, int(0.6 * n), int(0.8 * n), n]
    i = SPLITS.index(split)
    return data.subset(np.arange(cut[i], cut[i + 1]))


def _fmt(name: str, **kw) -> str:
    try:
        return str(name).format(**kw)
    except (KeyError, IndexError) as e:
        raise DataFormatError(f"files: {name!r} uses an unknown placeholder {e} (known: {sorted(kw)})") from None


def _names(cfg, root: Path, split: str) -> Dict[str, object]:
    f = cfg.files
    langs = list(cfg.languages)
    src, tgt = langs[0], (langs[1] if len(langs) > 1 else langs[0])
    return {"coll": f.coll or root.name, "src": src, "tgt": tgt, "feat": f.feature, "split": split}


def _from_folder(cfg, root: Path, split: str, langs) -> CCRData:
    layout = cfg.files.layout
    if layout == "auto":
        layout = "nrccr" if (root / "TextData").is_dir() else "jsonl"
    kw = _names(cfg, root, split)
    f = cfg.files
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if layout == "nrccr":
        if split == "train":
            caps = [_fmt(n, **kw) for n in f.train_captions]
        else:
            names = f.val_captions if split == "val" else f.test_captions
            caps = []
            for lang in (list(langs) if langs else list(cfg.languages)):
                caps += [_fmt(n, **kw, lang=lang) for n in names]
        caps = _caption_paths(root, caps, optional_mt=split != "train", split=split)
        if cfg.visual_encoder:  # raw media: an image / frame folder replaces FeatureData/
            from .media_data import nrccr_media_features
            from .readers import load_nrccr_collection

            folder = _feature_path(root, f.image_folder)
            if not folder.is_dir():
                raise DataFormatError(f"files.image_folder: {folder} does not exist (the images or frame folders "
                                      f"that replace FeatureData/ when visual_encoder is set)")
            return load_nrccr_collection(root, caps, nrccr_media_features(cfg, folder), name=f"{root.name}/{split}")
        feat_dir = root / "FeatureData" / kw["feat"]
        if not feat_dir.exists():
            raise DataFormatError(f"files.feature: {feat_dir} does not exist (a BigFile folder or a folder of "
                                  f"<split>-{kw['feat']}-avgpool.npy files)")
        if (feat_dir / "feature.bin").is_file():
            features, ids = feat_dir, None
        else:
            features = feat_dir / _fmt(f.feature_files[split], **kw)
            ids = root / "FeatureData" / _fmt(f.id_files[split], **kw)
            for p in (features, ids):
                if not p.is_file():
                    raise DataFormatError(f"{p}: not found (set files.feature_files / files.id_files)")
        return _nrccr(root, caps, features, ids, cfg, split, optional_mt=split != "train")
    use = list(cfg.languages) if split == "train" or not langs else list(langs)
    src = list(cfg.languages)[0]
    files = {lang: root / _fmt(f.jsonl_captions[split], **kw, lang=lang) for lang in use}
    mt = {}
    if split in f.jsonl_mt:  # MT of each language into the source (translate-test); optional per language
        mt = {lang: root / _fmt(f.jsonl_mt[split], **kw, lang=lang) for lang in use if lang != src}
        mt = {lang: p for lang, p in mt.items() if p.is_file()}
    if cfg.visual_encoder:  # raw media: img_path under files.image_root
        from .media_data import media_jsonl_data

        return media_jsonl_data(cfg, files, mt, f.image_root or root, f"{root.name}/{split}")
    return _jsonl(files, _feature_path(root, _fmt(f.features, **kw)), None, mt, f"{root.name}/{split}", cfg, split)


def _feature_path(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def _nrccr(root: Path, caption_files: Sequence, features, ids, cfg, split: str, optional_mt: bool) -> CCRData:
    """NRCCR caption files + features. The training split of pooled features (``.npy`` or BigFile) is read into
    compact caption tables over the memory-mapped rows (:mod:`.compact`: scales to millions of captions); evaluation
    splits and frame features (``video2frames.txt``) go through :func:`load_nrccr_collection`."""
    from .compact import is_pooled_bigfile_or_npy, load_nrccr_compact
    from .readers import _resolve, load_nrccr_collection

    paths = _caption_paths(root, caption_files, optional_mt, split)
    if split == "train":
        feat = _resolve(root, "FeatureData", features)
        if is_pooled_bigfile_or_npy(feat):
            id_file = _resolve(root, "FeatureData", ids, ("", ".txt")) if ids is not None else None
            return load_nrccr_compact(root, paths, feat, id_file, name=f"{root.name}/{split}")
    return load_nrccr_collection(root, paths, features, id_file=ids, name=f"{root.name}/{split}",
                                 max_frames=cfg.files.max_frames)


def _caption_paths(root: Path, caption_files: Sequence, optional_mt: bool, split: str) -> list:
    """Resolved caption files; a missing file is an error naming it (an evaluation split's MT file is optional)."""
    paths = []
    for name in caption_files:
        p = _caption_path(root, name)
        if p is None:
            # an MT of the queries (translate-test) is optional at evaluation; human captions and training files
            # are not
            tag = str(name)
            if optional_mt and "google" in tag:
                continue
            raise DataFormatError(f"{root / 'TextData' / (str(name) + '.caption.txt')}: caption file not found "
                                  f"(set the file names in the config section 'files')")
        paths.append(p)
    if not paths:
        raise DataFormatError(f"{root}: no caption files for split {split!r}")
    return paths


def _caption_path(root: Path, name) -> Path:
    p = Path(str(name))
    if p.is_absolute():
        return p if p.is_file() else None
    for suffix in ("", ".caption.txt", ".caption.txt.gz", ".gz"):
        q = root / "TextData" / (str(name) + suffix)
        if q.is_file():
            return q
    return None


def _jsonl(files: dict, features, ids, mt: dict, name: str, cfg, split: str) -> CCRData:
    """IGLUE / CCLM caption files + features; the training split of pooled features is compact (:mod:`.compact`)."""
    from .compact import is_pooled_bigfile_or_npy, load_jsonl_compact
    from .readers import BigFile, load_jsonl_collection

    for lang, p in list(files.items()) + list(mt.items()):
        if not Path(p).is_file():
            raise DataFormatError(f"{p}: caption file for {lang!r} not found (set files.jsonl_captions)")
    src = list(cfg.languages)[0]
    if split == "train" and is_pooled_bigfile_or_npy(features):
        return load_jsonl_compact(files, features, ids, mt_files=mt or None, mt_target=src, name=name)
    if Path(features).is_dir():
        bf = BigFile(features)
        arr, fids = bf.features, bf.names
    else:
        arr, fids = Path(features), ids
    return load_jsonl_collection(files, arr, fids, mt_files=mt or None, mt_target=src, name=name)


def _from_mapping(cfg, m: dict, split: str, langs=None) -> CCRData:
    root = Path(str(m.pop("root", "."))).expanduser()
    if split not in m:
        raise DataFormatError(f"data[{split!r}]: the data mapping names no files for this split (has {sorted(m)})")
    spec = dict(m[split])
    if "csv" in spec and "features" in spec:  # captions CSV over precomputed (e.g. extracted) features
        from .media_data import media_csv_data

        return media_csv_data(cfg, spec["csv"], root, split, langs, features=spec["features"], ids=spec.get("ids"))
    if "csv" in spec or (cfg.visual_encoder and "jsonl" in spec and "features" not in spec):
        if not cfg.visual_encoder:
            raise DataFormatError(f"data[{split!r}].csv: raw media need a vision tower; set visual_encoder (a Hugging "
                                  f"Face folder or a hub id in the local cache)")
        from .media_data import media_csv_data, media_jsonl_data

        if "csv" in spec:
            return media_csv_data(cfg, spec["csv"], root, split, langs)
        files = {lang: _feature_path(root, str(p)) for lang, p in spec["jsonl"].items()}
        mt = {lang: _feature_path(root, str(p)) for lang, p in (spec.get("mt") or {}).items()}
        return media_jsonl_data(cfg, files, mt, cfg.files.image_root or root, f"{root.name}/{split}")
    feats = spec.get("features")
    if feats is None:
        raise DataFormatError(f"data[{split!r}].features: missing")
    feats = _feature_path(root, str(feats))
    ids = spec.get("ids")
    ids = _feature_path(root, str(ids)) if ids is not None else None
    if "jsonl" in spec:
        files = {lang: _feature_path(root, str(p)) for lang, p in spec["jsonl"].items()}
        mt = {lang: _feature_path(root, str(p)) for lang, p in (spec.get("mt") or {}).items()}
        return _jsonl(files, feats, ids, mt, f"{root.name}/{split}", cfg, split)
    caps = spec.get("captions")
    if not caps:
        raise DataFormatError(f"data[{split!r}]: expected 'captions' (NRCCR caption files) or 'jsonl'")
    caps = [_feature_path(root, str(c)) if not Path(str(c)).is_absolute() and (root / str(c)).exists() else c
            for c in caps]
    return _nrccr(root, caps, feats, ids, cfg, split, optional_mt=False)
