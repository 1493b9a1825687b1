"""Raw media: decode images and video frames with Pillow in DataLoader workers, run a vision tower over them, and the
bad-media policy.

A media item is an image path, or a list of frame paths (a video). :func:`tower_features` runs a
:class:`ccr_fast.models.towers.VisionTower` over items in batches (decoding and the image processor run in
``DataLoader`` workers) and returns the features the rest of the package takes: ``[N, D]`` pooled, ``[N, T, D]``
patch tokens, or ``[N, F, D]`` per-frame features with their frame counts.

Bad media: a missing or undecodable file raises :class:`BadMediaError` (a ``ValueError``) naming the file. With
``skip_bad=True`` such items are left out; :class:`MediaReport` counts and names them, and the caller reports them —
never a blank stand-in image.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

log = logging.getLogger("ccr_fast.data")

__all__ = ["IMAGE_EXTS", "BadMediaError", "MediaReport", "decode_image", "list_images", "video_frames",
           "MediaDataset", "image_inputs", "tower_features", "encode_images"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Media = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


class BadMediaError(ValueError):
    """A missing or undecodable image or frame; the message names the file."""


@dataclass
class MediaReport:
    """Items left out under ``files.skip_bad_media``: their positions and one reason (naming the file) each."""

    skipped: List[int] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, what: str = "media") -> str:
        if not self.skipped:
            return f"{what}: no bad media"
        more = f" (+{len(self.reasons) - 3} more)" if len(self.reasons) > 3 else ""
        return f"{what}: skipped {len(self.skipped)} bad item(s): " + "; ".join(self.reasons[:3]) + more


def decode_image(path: Union[str, os.PathLike]):
    """The image at ``path`` as an RGB ``PIL.Image`` (grayscale, palette and RGBA converted).

    Raises:
        BadMediaError: the file is missing or Pillow cannot decode it (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise BadMediaError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadMediaError(f"cannot decode image {p}: {' '.join(str(e).split()) or type(e).__name__}") from None


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Every image file directly in ``folder``, sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder not found: {d}")
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def video_frames(folder: Union[str, os.PathLike], n: Optional[int]) -> List[Path]:
    """``n`` frames of a video folder sampled uniformly over its frames sorted by name (all when ``n`` is None or
    the video is shorter). Raises BadMediaError naming the folder when it is missing or holds no image."""
    d = Path(folder)
    if not d.is_dir():
        raise BadMediaError(f"video frame folder not found: {d}")
    frames = list_images(d)
    if not frames:
        raise BadMediaError(f"video frame folder holds no image file: {d}")
    if n is None or len(frames) <= n:
        return frames
    pick = np.linspace(0, len(frames) - 1, int(n)).round().astype(np.int64)
    return [frames[i] for i in pick]


def image_inputs(processor, images) -> torch.Tensor:
    """``pixel_values [N, 3, H, W]`` (float32) for image paths or PIL images, through the tower's image processor."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    pil = [im.convert("RGB") if isinstance(im, Image.Image) else decode_image(im) for im in images]
    if not pil:
        raise ValueError("images: expected at least one image, got none")
    return processor(images=pil, return_tensors="pt")["pixel_values"].float()


class MediaDataset(torch.utils.data.Dataset):
    """Item ``i`` → ``{"index": i, "pixel_values": [3, H, W] or [F, 3, H, W]}`` decoded in the worker, or
    ``{"index": i, "bad": reason}`` for a bad file when ``skip_bad`` (else the BadMediaError propagates)."""

    def __init__(self, items: Sequence[Media], processor, skip_bad: bool = False):
        self.items, self.processor, self.skip_bad = list(items), processor, skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            if isinstance(item, (str, os.PathLike)):
                return {"index": i, "pixel_values": image_inputs(self.processor, [item])[0]}
            if not item:
                raise BadMediaError(f"video item {i} has no frames")
            return {"index": i, "pixel_values": image_inputs(self.processor, list(item))}
        except BadMediaError as e:
            if not self.skip_bad:
                raise
            return {"index": i, "bad": str(e)}


def _collate(items: List[dict]) -> dict:
    good = [it for it in items if "bad" not in it]
    out = {"index": [it["index"] for it in good], "bad": [(it["index"], it["bad"]) for it in items if "bad" in it]}
    if good:
        pv = [it["pixel_values"] for it in good]
        if pv[0].dim() == 4:  # videos: frames of all items concatenated
            out["frames"] = [p.shape[0] for p in pv]
            out["pixel_values"] = torch.cat(pv)
        else:
            out["pixel_values"] = torch.stack(pv)
    return out


def media_loader(items: Sequence[Media], processor, batch_size: int, num_workers: int = 0, skip_bad: bool = False,
                 start: int = 0):
    """Batches of decoded items ``start..`` in order (decoding in ``num_workers`` DataLoader workers)."""
    ds = MediaDataset(items, processor, skip_bad)
    sub = torch.utils.data.Subset(ds, range(start, len(ds))) if start else ds
    return torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=_collate, prefetch_factor=2 if num_workers else None)


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def tower_features(tower, processor, items: Sequence[Media], *, batch_size: int = 64, num_workers: int = 0,
                   skip_bad: bool = False, device="auto", frames: str = "mean", progress: bool = False,
                   desc: str = "encode media"):
    """Run a frozen tower (eval mode) over ``items``.

    Args:
        items: image paths, or lists of frame paths (videos).
        frames: for videos, ``"mean"`` (mean of the per-frame outputs) or ``"keep"`` (``[N, F, D]`` zero-padded).
    Returns:
        ``(features float32, n_frames int64 [N] or None, kept int64 [N'], report)``: rows follow ``kept`` (all
        items unless ``skip_bad`` dropped some); ``report`` is a :class:`MediaReport`.
    """
    if frames not in ("mean", "keep"):
        raise ValueError(f"frames: expected 'mean' or 'keep', got {frames!r}")
    dev = resolve_device(device)
    was = tower.training
    tower.eval().to(dev)
    rows, counts, kept, report = [], [], [], MediaReport()
    loader = media_loader(items, processor, batch_size, num_workers, skip_bad)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="item")
    for b in loader:
        for i, reason in b["bad"]:
            report.skipped.append(i)
            report.reasons.append(reason)
        if b["index"]:
            out = tower(b["pixel_values"].to(dev)).float().cpu()
            if "frames" in b:
                if out.dim() == 3:
                    raise ValueError("model.visual_tokens='patches' is not supported for video items (frames are "
                                     "encoded pooled)")
                for part in torch.split(out, b["frames"]):
                    rows.append(part.mean(0) if frames == "mean" else part)
                    counts.append(part.shape[0])
            else:
                rows.extend(out.unbind(0))
            kept.extend(b["index"])
        if bar is not None:
            bar.update(len(b["index"]) + len(b["bad"]))
    if bar is not None:
        bar.close()
    tower.train(was)
    if report.skipped:
        log.warning(report.summary(desc))
    if not rows:
        raise BadMediaError(f"{desc}: no item could be decoded ({report.summary(desc)})")
    n_frames = None
    if rows[0].dim() == 2 and counts:  # kept frames: pad to the longest video
        fmax = max(counts)
        feats = torch.zeros(len(rows), fmax, rows[0].shape[-1])
        for j, r in enumerate(rows):
            feats[j, : r.shape[0]] = r
        n_frames = np.asarray(counts, dtype=np.int64)
    else:
        feats = torch.stack(rows)
    return feats.numpy(), n_frames, np.asarray(kept, dtype=np.int64), report


@torch.no_grad()
def encode_images(tower, processor, images, batch_size: int = 64, device=None) -> torch.Tensor:
    """Tower outputs (``[N, D]`` or ``[N, T, D]``, float32, on the tower's device) for image paths or PIL images,
    in eval mode, in batches. Bad files raise :class:`BadMediaError` naming them."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    images = list(images)
    dev = device or next(tower.parameters()).device
    was = tower.training
    tower.eval()
    out = [tower(image_inputs(processor, images[i:i + batch_size]).to(dev)).float()
           for i in range(0, len(images), batch_size)]
    tower.train(was)
    return torch.cat(out)
