"""The small real data set shipped in the repository's ``data/`` folder (not in the wheel).

1000 Flickr30K images of Multi30K ``test_2016_flickr`` with real ImageNet ResNet-50 average-pool features
(2048-d, stored float16, returned float32) and one human caption per image in 10 languages:

======  ============================================================================================
lang    caption of item i
======  ============================================================================================
en      Multi30K task 1 English caption (line i of ``test_2016_flickr.en.gz``)
de      Multi30K task 1 German, a professional translation of the en caption (default ``de_source="task1"``);
        with ``de_source="xflickrco"`` the xFlickr&CO German caption, an independently written one
fr, cs  Multi30K task 1 French / Czech translations of the en caption
es id   xFlickr&CO (IGLUE) test captions, lines 0-999 (same images, same order as test_2016_flickr); the
        one empty upstream caption (id, line 900) is left out, so that item has no id caption
ja ru
tr zh
======  ============================================================================================

There is no machine translation of the English captions in the shipped data. ``translations`` holds stand-ins:

* ``en2de``, ``en2fr``, ``en2cs`` — the Multi30K task 1 human translation of the en caption (a clean
  pseudo-parallel target caption in place of Google MT). Same text as ``captions[xx]`` for task 1 languages.
* ``en2de2en``, ``en2fr2en``, ``en2cs2en`` — in place of the back-translation: the first of the 5 Multi30K task 2
  English captions of the image that differs from the en caption (an independent English paraphrase). The three
  tags hold the same text.
* ``xx2en`` for xx in es, id, ja, ru, tr, zh (and de when ``de_source="xflickrco"``) — the IGLUE ``test_gmt``
  Google MT of that caption into English, for translate-test fusion (aligned with ``captions[xx]``).

Split (``split=``): a fixed permutation ``numpy.random.default_rng(SPLIT_SEED).permutation(1000)`` with
``SPLIT_SEED = 20221010``; its first 700 entries are ``train``, the next 100 ``val``, the last 200 ``test``; each
split keeps the original file order (sorted indices). ``"all"`` is the 1000 images in file order.

Folds (``fold=k``, k in 0..4, :func:`shipped_fold_indices`): test = entries ``200k .. 200k+199`` of the same
permutation (five disjoint test folds covering the 1000 images); the other 800, in permutation order starting after
the test fold and wrapping around, give ``train`` (the first 700) and ``val`` (the last 100). Fold 4 is the fixed
split above.

Location: ``$CCR_FAST_DATA`` if set, else ``data/`` of the source checkout (see :func:`shipped_data_dir`).
See ``data/README.md`` for provenance, licences (non-commercial research use) and citations.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from ..paths import find_folder
from .core import CCRData
from .readers import read_caption_records, read_id_list, read_multi30k, read_npy_features, visual_key

__all__ = ["SHIPPED_LANGUAGES", "SPLIT_SEED", "SPLIT_SIZES", "N_FOLDS", "shipped_data_dir", "shipped_split_indices",
           "shipped_fold_indices", "load_shipped"]

SHIPPED_LANGUAGES = ("en", "de", "fr", "cs", "es", "id", "ja", "ru", "tr", "zh")
TASK1_LANGUAGES = ("en", "de", "fr", "cs")
XFLICKRCO_LANGUAGES = ("es", "id", "ja", "ru", "tr", "zh")
SPLIT_SEED = 20221010
SPLIT_SIZES = {"train": 700, "val": 100, "test": 200}
N_IMAGES = 1000
N_FOLDS = 5
FEATURE_DIM = 2048
_FEATURES = "features/test_2016_flickr-resnet50-avgpool.npy"
_FEATURE_IDS = "features/test_2016_flickr-resnet50-avgpool.ids.txt"
_IMAGE_LIST = "multi30k/task1/image_splits/test_2016_flickr.txt"


def shipped_data_dir() -> Path:
    """The shipped data folder.

    Lookup order (:func:`ccr_fast.paths.find_folder`): ``$CCR_FAST_DATA``, ``data/`` next to the package source,
    the checkout the package was built from, ``./data``.

    Raises:
        FileNotFoundError: no candidate holds the feature file; the message says how to point at the folder.
    """
    env = os.environ.get("CCR_FAST_DATA")
    if env and not (Path(env).expanduser() / _FEATURES).is_file():
        raise FileNotFoundError(f"CCR_FAST_DATA={env}: expected the shipped data folder holding {_FEATURES}")
    try:
        return find_folder("CCR_FAST_DATA", "data", must_contain=_FEATURES)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. The shipped data are not part of the wheel: clone the ccr_fast repository "
                                "and set CCR_FAST_DATA=/path/to/checkout/data") from None


def shipped_split_indices(split: str) -> np.ndarray:
    """Sorted int64 row indices of ``split`` in ``{"train", "val", "test", "all"}`` (sizes 700/100/200/1000)."""
    if split == "all":
        return np.arange(N_IMAGES, dtype=np.int64)
    if split not in SPLIT_SIZES:
        raise ValueError(f"split: expected one of 'train', 'val', 'test', 'all', got {split!r}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(N_IMAGES)
    start = {"train": 0, "val": SPLIT_SIZES["train"], "test": SPLIT_SIZES["train"] + SPLIT_SIZES["val"]}[split]
    return np.sort(perm[start: start + SPLIT_SIZES[split]]).astype(np.int64)


def shipped_fold_indices(fold: int, split: str) -> np.ndarray:
    """Sorted int64 row indices of ``split`` (``"train"``/``"val"``/``"test"``, 700/100/200) of fold ``fold`` in
    ``0 .. N_FOLDS-1`` (the module docstring gives the rule)."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < N_FOLDS:
        raise ValueError(f"fold: expected an int in 0..{N_FOLDS - 1}, got {fold!r}")
    if split not in SPLIT_SIZES:
        raise ValueError(f"split: expected one of 'train', 'val', 'test' with a fold, got {split!r}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(N_IMAGES)
    size = N_IMAGES // N_FOLDS
    k = int(fold)
    test = perm[k * size: (k + 1) * size]
    rest = np.concatenate([perm[(k + 1) * size:], perm[: k * size]])
    part = {"test": test, "train": rest[: SPLIT_SIZES["train"]], "val": rest[SPLIT_SIZES["train"]:]}[split]
    return np.sort(part).astype(np.int64)


def _first_1000(path: Path, image_ids: list) -> list:
    """Lines 0-999 of an xFlickr&CO file, checked against the Multi30K image order; one caption each."""
    recs = read_caption_records(path)[:N_IMAGES]
    keys = [r["key"] for r in recs]
    if keys != image_ids:
        bad = next(i for i, (a, b) in enumerate(zip(keys + [None] * N_IMAGES, image_ids)) if a != b)
        raise ValueError(f"{path}: record {bad} is image {keys[bad] if bad < len(keys) else None!r}, expected "
                         f"{image_ids[bad]!r} (xFlickr&CO lines 0-999 must follow test_2016_flickr)")
    for i, r in enumerate(recs):
        if len(r["captions"]) != 1:
            raise ValueError(f"{path}: record {i} has {len(r['captions'])} sentences, expected 1")
    return [r["captions"][0] for r in recs]


@functools.lru_cache(maxsize=4)
def _load_all(root: str, de_source: str, captions_mode: str = "task1") -> CCRData:
    d = Path(root)
    ids, feats = read_npy_features(d / _FEATURES, d / _FEATURE_IDS, mmap=False)
    if feats.shape != (N_IMAGES, FEATURE_DIM):
        raise ValueError(f"{d / _FEATURES}: expected shape ({N_IMAGES}, {FEATURE_DIM}), got {feats.shape}")
    image_ids = [visual_key(i) for i in ids]
    if image_ids != [visual_key(i) for i in read_id_list(d / _IMAGE_LIST)]:
        raise ValueError(f"{d / _FEATURE_IDS}: rows do not follow {d / _IMAGE_LIST}")
    raw1 = d / "multi30k/task1/raw"
    captions, translations = {}, {}
    for lang in TASK1_LANGUAGES:
        pairs = read_multi30k(raw1, "test_2016_flickr", lang, d / _IMAGE_LIST)
        captions[lang] = [[c] for _, c in pairs]
    task2 = [[c for _, c in read_multi30k(d / "multi30k/task2/raw", f"test_2016.{k}", "en",
                                          d / "multi30k/task2/image_splits/test_2016_images.txt")]
             for k in range(1, 6)]
    paraphrase = []
    for i, (en,) in enumerate(captions["en"]):
        alt = [t2[i] for t2 in task2 if t2[i].strip() != en.strip()]
        paraphrase.append([alt[0] if alt else en])
    for lang in ("de", "fr", "cs"):
        translations[f"en2{lang}"] = [list(c) for c in captions[lang]]
        translations[f"en2{lang}2en"] = [list(p) for p in paraphrase]
    xf = d / "xflickrco"
    mt_langs = (["de"] if de_source == "xflickrco" else []) + list(XFLICKRCO_LANGUAGES)
    for lang in mt_langs:
        # an empty upstream caption (xFlickr&CO id, line 900) is left out: that item has no caption in lang
        src = _first_1000(xf / f"test.{lang}.jsonl.gz", image_ids)
        mt = _first_1000(xf / f"test_gmt.{lang}.jsonl.gz", image_ids)
        captions[lang] = [[c] if c.strip() else [] for c in src]
        translations[f"{lang}2en"] = [[m] if c.strip() else [] for c, m in zip(src, mt)]
    if captions_mode == "all":
        # every human caption of the image: task 1 first, then the task 2 en captions that differ from it and the
        # 5 task 2 de captions; the en->xx stand-ins are aligned with one en caption only, so they are left out
        task2_de = [[c for _, c in read_multi30k(d / "multi30k/task2/raw", f"test_2016.{k}", "de",
                                                 d / "multi30k/task2/image_splits/test_2016_images.txt")]
                    for k in range(1, 6)]
        for i in range(N_IMAGES):
            en = captions["en"][i][0]
            captions["en"][i] = [en] + [t2[i] for t2 in task2 if t2[i].strip() != en.strip()]
            captions["de"][i] = captions["de"][i] + [t2[i] for t2 in task2_de]
        translations = {tag: v for tag, v in translations.items() if not tag.startswith("en2")}
    captions = {lang: captions[lang] for lang in SHIPPED_LANGUAGES}
    return CCRData("shipped", image_ids, np.ascontiguousarray(feats, dtype=np.float32), captions, translations)


def load_shipped(split: str = "train", *, de_source: str = "task1", data_dir=None, captions: str = "task1",
                 fold=None) -> CCRData:
    """Load the shipped real data (see the module docstring for what each language and MT tag holds).

    Args:
        split: ``"train"`` (700 images), ``"val"`` (100), ``"test"`` (200) or ``"all"`` (1000).
        de_source: ``"task1"`` (German translation of the en caption) or ``"xflickrco"`` (independent German
            caption, with ``translations["de2en"]`` for translate-test).
        data_dir: the data folder (default :func:`shipped_data_dir`).
        captions: ``"task1"`` (one caption per language, as above) or ``"all"``: every human en/de caption of the
            image — en: the task 1 caption, then the task 2 captions that differ from it (5 in all for most
            images); de: the task 1 translation, then the 5 task 2 German captions (written independently); fr/cs
            unchanged. ``"all"`` has no ``en2xx``/``en2xx2en`` stand-ins (they align with one en caption) and needs
            ``de_source="task1"``. Training uses it (``data={"name": "shipped", "train_captions": "all"}``);
            evaluation keeps ``"task1"``.
        fold: ``None`` (the fixed split) or ``0 .. 4``: the split of that cross-validation fold
            (:func:`shipped_fold_indices`; ``data={"name": "shipped", "fold": k}``).

    Returns:
        :class:`CCRData` named ``"shipped/<split>"``: features ``[n, 2048]`` float32, one caption per image in each
        of :data:`SHIPPED_LANGUAGES` (except image 900 of ``"all"``, ``6312211170``, in the train split, which has
        no ``id`` caption).
    """
    if de_source not in ("task1", "xflickrco"):
        raise ValueError(f"de_source: expected 'task1' or 'xflickrco', got {de_source!r}")
    if captions not in ("task1", "all"):
        raise ValueError(f"captions: expected 'task1' or 'all', got {captions!r}")
    if captions == "all" and de_source != "task1":
        raise ValueError(f"captions='all' needs de_source='task1', got de_source={de_source!r}")
    idx = shipped_split_indices(split) if fold is None or split == "all" else shipped_fold_indices(fold, split)
    root = Path(data_dir).expanduser().resolve() if data_dir is not None else shipped_data_dir().resolve()
    data = _load_all(str(root), de_source, captions).subset(idx)
    data.name = f"shipped/{split}" if fold is None else f"shipped/fold{int(fold)}/{split}"
    return data


def shipped_manifest() -> dict:
    """Split sizes, seed and languages as a JSON-able dict (for run records)."""
    return json.loads(json.dumps({"split_seed": SPLIT_SEED, "split_sizes": SPLIT_SIZES,
                                  "languages": list(SHIPPED_LANGUAGES)}))
