"""Write a :class:`CCRData` per split to disk in a paper release layout, with the file names of a config's
``files`` section: the NRCCR layout (``TextData/*.caption.txt``, ``FeatureData/`` with ``.npy`` + id files, or a
BigFile folder with ``video2frames.txt`` for frame features) or the IGLUE / CCR^k JSON-lines layout.

Used for test fixtures (miniature collections from :func:`ccr_fast.data.make_synthetic`), to export the shipped
data to the NRCCR layout, and by the scale benchmark. :func:`ccr_fast.data.load_data` reads what these write.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .collections import _fmt
from .core import CCRData

__all__ = ["write_nrccr_layout", "write_jsonl_layout", "write_collection", "fixture_collection"]


def _tag(lang: str) -> str:
    return "enc" if lang == "en" else lang


def _mt_tag(key: str) -> str:
    return "2".join(_tag(p) for p in key.split("2"))


def _write_captions(path: Path, data: CCRData, key: str, tag: str, table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for vid, caps in zip(data.visual_ids, table):
            for k, text in enumerate(caps):
                f.write(f"{vid}#{tag}#{k} {text}\n")


def _names(files, coll: str, langs, split: str) -> dict:
    src, tgt = langs[0], (langs[1] if len(langs) > 1 else langs[0])
    return {"coll": files.coll or coll, "src": src, "tgt": tgt, "feat": files.feature, "split": split}


def write_nrccr_layout(root, splits: Dict[str, CCRData], cfg) -> Path:
    """Write ``splits`` (``{"train": CCRData, "val": ..., "test": ...}``) under ``root`` in the NRCCR layout.

    The training split gets the source captions, the MT into each target language and its back-translation
    (``files.train_captions`` per target); val/test get each language's human captions and, where the data has
    them, their MT into the source language (``files.val_captions`` / ``files.test_captions``). Pooled features go to
    ``FeatureData/<feature>/`` ``.npy`` files named by ``files.feature_files`` with ``files.id_files``; frame
    features ``[N, F, D]`` to one BigFile folder ``FeatureData/<feature>/`` shared by all splits.
    """
    root = Path(root)
    f, langs = cfg.files, list(cfg.languages)
    src, tgts = langs[0], (langs[1:] or langs[:1])
    bigfile = {}
    for split, data in splits.items():
        kw = _names(f, root.name, langs, split)
        if split == "train":
            for tgt in tgts:
                names = [_fmt(n, **{**kw, "tgt": tgt}) for n in f.train_captions]
                keys = [src, f"{src}2{tgt}", f"{src}2{tgt}2{src}"]
                for name, key in zip(names, keys):
                    table = data.captions[key] if key == src else data.translations[key]
                    _write_captions(root / "TextData" / f"{name}.caption.txt", data, key,
                                    _tag(key) if key == src else _mt_tag(key), table)
        else:
            names = f.val_captions if split == "val" else f.test_captions
            for lang in langs:
                if lang not in data.captions or not any(data.captions[lang]):
                    continue
                human = _fmt(names[0], **kw, lang=lang)
                _write_captions(root / "TextData" / f"{human}.caption.txt", data, lang, _tag(lang), data.captions[lang])
                mt_key = f"{lang}2{src}"
                if len(names) > 1 and mt_key in data.translations and lang != src:
                    mt = _fmt(names[1], **kw, lang=lang)
                    _write_captions(root / "TextData" / f"{mt}.caption.txt", data, mt_key, _mt_tag(mt_key),
                                    data.translations[mt_key])
        feat_dir = root / "FeatureData" / kw["feat"]
        feat_dir.mkdir(parents=True, exist_ok=True)
        if data.features.ndim == 3:
            for i, vid in enumerate(data.visual_ids):
                n = int(data.n_frames[i]) if data.n_frames is not None else data.features.shape[1]
                bigfile[vid] = np.asarray(data.features[i, :n], dtype=np.float32)
            continue
        (root / "FeatureData" / _fmt(f.id_files[split], **kw)).write_text(" ".join(map(str, data.visual_ids)) + "\n")
        np.save(feat_dir / _fmt(f.feature_files[split], **kw), np.asarray(data.features))
    if bigfile:
        feat_dir = root / "FeatureData" / f.feature
        v2f, rows, ids = {}, [], []
        for vid, frames in bigfile.items():
            v2f[vid] = [f"{vid}_{j}" for j in range(len(frames))]
            ids += v2f[vid]
            rows.append(frames)
        arr = np.concatenate(rows).astype(np.float32)
        (feat_dir / "shape.txt").write_text(f"{arr.shape[0]} {arr.shape[1]}\n")
        (feat_dir / "id.txt").write_text(" ".join(ids) + "\n")
        arr.tofile(feat_dir / "feature.bin")
        (feat_dir / "video2frames.txt").write_text(repr(v2f) + "\n")
    return root


def _write_records(path: Path, ids, human, texts) -> None:
    """IGLUE ``.jsonl`` (``{"id", "sentences"}`` per line) or CCLM ``.json`` (a list of ``{"image_id", "caption"}``)
    for the items that have a human caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [(str(v), list(t)) for v, h, t in zip(ids, human, texts) if h]
    with open(path, "w", encoding="utf-8") as fh:
        if path.name.endswith(".jsonl"):
            for v, t in recs:
                fh.write(json.dumps({"id": v, "sentences": t}, ensure_ascii=False) + "\n")
        else:
            json.dump([{"image_id": v, "caption": t} for v, t in recs], fh, ensure_ascii=False)


def write_jsonl_layout(root, splits: Dict[str, CCRData], cfg) -> Path:
    """Write ``splits`` as IGLUE JSON lines (``{"id", "sentences"}`` per item, file names ``files.jsonl_captions``,
    MT of each language into the source in ``files.jsonl_mt`` when configured) and one feature file
    ``files.features`` (``.npy`` + ``.ids.txt``) holding every split's items."""
    root = Path(root)
    f, langs = cfg.files, list(cfg.languages)
    src = langs[0]
    feats, ids = [], []
    for split, data in splits.items():
        kw = _names(f, root.name, langs, split)
        for lang in langs:
            if lang not in data.captions:
                continue
            _write_records(root / _fmt(f.jsonl_captions[split], **kw, lang=lang), data.visual_ids,
                           data.captions[lang], data.captions[lang])
            if split in f.jsonl_mt and f"{lang}2{src}" in data.translations and lang != src:
                _write_records(root / _fmt(f.jsonl_mt[split], **kw, lang=lang), data.visual_ids,
                               data.captions[lang], data.translations[f"{lang}2{src}"])
        feats.append(np.asarray(data.features))
        ids += [str(v) for v in data.visual_ids]
    p = root / _fmt(f.features, **_names(f, root.name, langs, "all"))
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.concatenate(feats))
    p.with_name(p.name[:-4] + ".ids.txt").write_text("\n".join(ids) + "\n")
    return root


def write_collection(root, splits: Dict[str, CCRData], cfg, layout: Optional[str] = None) -> Path:
    """Write in ``layout`` (default: ``cfg.files.layout``, "auto" meaning NRCCR)."""
    layout = layout or cfg.files.layout
    return (write_jsonl_layout if layout == "jsonl" else write_nrccr_layout)(root, splits, cfg)


def fixture_collection(root, cfg, n_items: int = 24, feature_dim: int = 16, frames: Optional[int] = None,
                       seed: int = 0) -> Path:
    """A miniature synthetic collection for ``cfg`` (its languages and file names) under ``root``.

    Items are split 50/25/25 % into train/val/test, with distinct visual ids. ``frames`` writes frame features
    (BigFile + ``video2frames.txt``, NRCCR layout only).
    """
    from .synthetic import make_synthetic

    langs = list(cfg.languages)
    data = make_synthetic(n_items, langs=langs, source=langs[0], feature_dim=feature_dim, frames=frames, seed=seed,
                          n_concepts=12)
    if frames:
        data.n_frames = np.full(len(data), frames, dtype=np.int64)
    cut = [0, n_items // 2, 3 * n_items // 4, n_items]
    splits = {s: data.subset(np.arange(cut[i], cut[i + 1])) for i, s in enumerate(("train", "val", "test"))}
    return write_collection(root, splits, cfg)
