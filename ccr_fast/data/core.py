"""The in-memory format every data source is turned into: :class:`CCRData`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

__all__ = ["CCRData", "translation_source"]


def translation_source(tag: str) -> str:
    """Language whose captions an MT tag is aligned with: ``"en2de"`` -> ``"en"``, ``"de2en"`` -> ``"de"``.

    Raises:
        ValueError: the tag is not ``<src>2<tgt>`` or ``<src>2<tgt>2<src>``.
    """
    parts = tag.split("2")
    if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and parts[2] != parts[0]):
        raise ValueError(f"translation tag: expected '<src>2<tgt>' or '<src>2<tgt>2<src>', got {tag!r}")
    return parts[0]


@dataclass
class CCRData:
    """A retrieval collection: N visual items, their features and their captions per language.

    Attributes:
        name: a short name (``"multi30k-xflickrco/train"``, ``"synthetic"``, ...).
        visual_ids: N item ids; row i of ``features`` is ``visual_ids[i]``.
        features: ``[N, Dv]`` float32 pooled features, or ``[N, F, Dv]`` frame features (padded with zeros;
            ``n_frames`` gives the valid count). May be a read-only memory map.
        captions: language -> per item, that item's human captions in that language (a list, possibly empty).
        translations: MT tag -> per item, captions aligned 1:1 with ``captions[src][i]`` where ``src`` is the
            tag's first language: ``"en2de"`` MT of the en captions into de, ``"en2de2en"`` its back-translation,
            ``"de2en"`` MT of the human de captions into en. What a tag holds for a given source is documented
            by that source's loader.
        n_frames: ``[N]`` int64 valid frames per item for frame features, else None.
        sources: optional caption key (language or MT tag) -> the file it was read from, for error messages.
    """

    name: str
    visual_ids: list
    features: np.ndarray
    captions: dict
    translations: dict = field(default_factory=dict)
    n_frames: Optional[np.ndarray] = None
    sources: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def __len__(self) -> int:
        return len(self.visual_ids)

    @property
    def languages(self) -> tuple:
        """Languages with at least one caption, in insertion order."""
        return tuple(lang for lang, caps in self.captions.items() if any(caps))

    def validate(self) -> None:
        """Check shapes and alignment; raise ``ValueError`` naming the field on any mismatch."""
        n = len(self.visual_ids)
        feats = self.features
        if not isinstance(feats, np.ndarray):
            raise TypeError(f"features: expected a numpy array, got {type(feats).__name__}")
        if feats.ndim not in (2, 3) or feats.shape[0] != n:
            raise ValueError(f"features: expected shape [N={n}, Dv] or [N={n}, F, Dv], got {tuple(feats.shape)}")
        if len(set(self.visual_ids)) != n:
            raise ValueError("visual_ids: expected unique ids, got duplicates")
        if self.n_frames is not None:
            if feats.ndim != 3 or np.shape(self.n_frames) != (n,):
                raise ValueError(f"n_frames: expected shape [{n}] with 3-d features, got {np.shape(self.n_frames)} "
                                 f"with features {tuple(feats.shape)}")
        for lang, caps in self.captions.items():
            if len(caps) != n:
                raise ValueError(f"captions[{lang!r}]: expected {n} per-item lists, got {len(caps)}")
        for tag, trans in self.translations.items():
            src = translation_source(tag)
            if src not in self.captions:
                raise ValueError(f"translations[{tag!r}]: source language {src!r} has no captions")
            if len(trans) != n:
                raise ValueError(f"translations[{tag!r}]: expected {n} per-item lists, got {len(trans)}")
            if hasattr(trans, "counts") and hasattr(self.captions[src], "counts"):  # compact tables
                bad = np.flatnonzero(trans.counts() != self.captions[src].counts())
                if bad.size:
                    i = int(bad[0])
                    raise ValueError(f"translations[{tag!r}][{i}]: expected {self.captions[src].counts()[i]} "
                                     f"captions aligned with captions[{src!r}][{i}], got {trans.counts()[i]}")
                continue
            for i, (t, c) in enumerate(zip(trans, self.captions[src])):
                if len(t) != len(c):
                    raise ValueError(f"translations[{tag!r}][{i}]: expected {len(c)} captions aligned with "
                                     f"captions[{src!r}][{i}], got {len(t)}")

    def subset(self, idx: Sequence[int]) -> "CCRData":
        """Items ``idx`` (in that order) as a new :class:`CCRData`; features are copied.

        Args:
            idx: int indices into the N items, or a boolean mask of length N.
        """
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"idx: expected a boolean mask of shape [{len(self)}], got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(f"idx: expected a 1-d sequence of ints, got dtype {idx.dtype} shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ValueError(f"idx: expected indices in [0, {len(self)}), got range [{idx.min()}, {idx.max()}]")
        pick = lambda lists: [list(lists[i]) for i in idx]  # noqa: E731
        return CCRData(
            name=self.name,
            visual_ids=[self.visual_ids[i] for i in idx],
            features=np.ascontiguousarray(self.features[idx]),
            captions={lang: pick(c) for lang, c in self.captions.items()},
            translations={tag: pick(t) for tag, t in self.translations.items()},
            n_frames=None if self.n_frames is None else np.asarray(self.n_frames)[idx],
            sources=dict(self.sources),
        )

    def num_captions(self, lang: str) -> int:
        """Total number of ``lang`` captions over all items."""
        return sum(len(c) for c in self.captions.get(lang, []))

    def summary(self) -> str:
        """One line: items, feature shape, captions per language, translation tags."""
        langs = ", ".join(f"{lang}:{self.num_captions(lang)}" for lang in self.captions)
        return (f"{self.name}: {len(self)} items, features {tuple(self.features.shape)} {self.features.dtype}, "
                f"captions {{{langs}}}, translations {sorted(self.translations)}")
