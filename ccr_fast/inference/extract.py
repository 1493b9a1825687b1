"""Feature extraction: run a Hugging Face vision tower over images and write the ``.npy`` + ``.ids.txt`` pair that the
data readers take as features (:func:`extract_features`, CLI ``ccr-fast extract VISUAL_ENCODER IMAGES OUT``).

Resumable: rows go into ``<out>.partial.npy`` (a memory map) batch by batch; after each batch is flushed,
``<out>.progress.json`` records how many rows are done (replaced atomically). A killed run started again with the
same arguments continues at the first unfinished batch, so no row is lost or written twice; the finished file is
renamed into place at the end. Deterministic: fixed order, eval mode, the same batches on every run.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

__all__ = ["extract_features", "list_inputs", "main"]

DTYPES = {"float16": np.float16, "fp16": np.float16, "float32": np.float32, "fp32": np.float32}


def list_inputs(images) -> Tuple[List[str], List[str]]:
    """``(paths, ids)`` for a folder (its image files sorted by name, id = file stem), a list of paths (id = stem)
    or a caption CSV/TSV (its distinct ``image`` column values in order, relative to the CSV's folder)."""
    from ..data.media import list_images
    from ..data.readers import visual_key

    if isinstance(images, (str, os.PathLike)):
        p = Path(os.path.expanduser(str(images)))
        if p.is_dir():
            paths = [str(x) for x in list_images(p)]
            if not paths:
                raise ValueError(f"images: folder {p} holds no image file")
        elif p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
            from ..data.media_data import read_media_csv

            column, rows = read_media_csv(p)
            if column != "image":
                raise ValueError(f"images: {p} lists videos; extract takes images (extract each frame folder)")
            seen = dict.fromkeys(r[0] for r in rows)
            paths = [str(Path(m) if Path(m).is_absolute() else p.parent / m) for m in seen]
        elif p.is_file():
            paths = [str(p)]
        else:
            raise FileNotFoundError(f"images: {p} is not a folder, an image file or a CSV/TSV file")
    elif isinstance(images, (list, tuple)):
        if not images or not all(isinstance(x, (str, os.PathLike)) for x in images):
            raise TypeError("images: expected a folder, a CSV/TSV file or a non-empty list of image paths")
        paths = [str(x) for x in images]
    else:
        raise TypeError(f"images: expected a folder, a CSV/TSV file or a list of paths, got {type(images).__name__}")
    ids = [visual_key(x) for x in paths]
    bad = next((i for i in ids if not i or any(c.isspace() for c in i)), None)
    if bad is not None:
        raise ValueError(f"images: id {bad!r} (from the file name) is empty or has white space; rename the file")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"images: two images share the id {dup!r} (file stem); ids must be unique")
    return paths, ids


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def extract_features(visual_encoder, images, out, *, batch_size: int = 64, dtype: str = "float16",
                     tokens: str = "pooled", device: str = "auto", num_workers: int = 0,
                     progress: bool = True) -> str:
    """Run ``visual_encoder`` (a HF folder or a hub id in the local cache) over ``images`` and write ``out``.

    Args:
        images: a folder (every image file, sorted by name, id = stem), a list of paths, or a caption CSV/TSV.
        out: the ``.npy`` to write (``[N, D]``, or ``[N, T, D]`` for ``tokens="patches"``); ids go to
            ``<out without .npy>.ids.txt``.
        dtype: ``"float16"`` or ``"float32"``. device: ``"auto"``, ``"cpu"``, ``"cuda[:i]"``.
        num_workers: DataLoader workers decoding images (Pillow).
    Returns:
        the ``.npy`` path. Bad images raise :class:`ccr_fast.data.media.BadMediaError` naming the file.
    """
    from ..data.media import media_loader, resolve_device
    from ..data.media_data import get_tower
    from ..models.towers import resolve_hf_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected 'float16' or 'float32', got {dtype!r}")
    if tokens not in ("pooled", "patches"):
        raise ValueError(f"tokens: expected 'pooled' or 'patches', got {tokens!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    out = Path(os.path.expanduser(str(out)))
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    ids_path = out.with_name(out.name[:-4] + ".ids.txt")
    partial = out.with_name(out.name[:-4] + ".partial.npy")
    prog_path = out.with_name(out.name[:-4] + ".progress.json")
    paths, ids = list_inputs(images)
    model_dir = resolve_hf_model(visual_encoder)
    job = {"model": str(model_dir), "tokens": tokens, "dtype": np.dtype(DTYPES[dtype]).name,
           "batch_size": batch_size, "n": len(paths),
           "inputs": hashlib.sha256("\n".join(paths).encode()).hexdigest()}
    done = 0
    if prog_path.is_file() and partial.is_file():
        try:
            saved = json.loads(prog_path.read_text())
        except ValueError:
            saved = {}
        if saved.get("job") == job:
            done = int(saved.get("done", 0))
    if done == 0:
        for p in (partial, prog_path):
            p.unlink(missing_ok=True)
    tower, proc = get_tower(str(model_dir), tokens)
    dev = resolve_device(device)
    tower.eval().to(dev)
    mm = np.lib.format.open_memmap(partial, mode="r+") if done else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), initial=done, desc=f"extract {Path(str(visual_encoder)).name}", unit="img")
    with torch.no_grad():
        for b in media_loader(paths, proc, batch_size, num_workers, skip_bad=False, start=done):
            feats = tower(b["pixel_values"].to(dev)).float().cpu().numpy()
            if mm is None:
                mm = np.lib.format.open_memmap(partial, mode="w+", dtype=DTYPES[dtype],
                                               shape=(len(paths),) + feats.shape[1:])
            mm[done: done + len(feats)] = feats.astype(DTYPES[dtype])
            mm.flush()
            done += len(feats)
            _atomic_write(prog_path, json.dumps({"job": job, "done": done}))
            if bar is not None:
                bar.update(len(feats))
    if bar is not None:
        bar.close()
    del mm
    _atomic_write(ids_path, "\n".join(ids) + "\n")
    os.replace(partial, out)
    prog_path.unlink(missing_ok=True)
    return str(out)


def main(argv: Sequence[str] = None) -> int:
    """``ccr-fast extract VISUAL_ENCODER IMAGES OUT [--batch-size 64] [--dtype float16] [--tokens pooled]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="ccr-fast extract", description="write vision-tower features (.npy + .ids.txt)")
    add_arguments(ap)
    a = ap.parse_args(argv)
    print(run(a))
    return 0


def add_arguments(ap) -> None:
    ap.add_argument("visual_encoder", help="a Hugging Face vision model folder, or a hub id in the local HF cache")
    ap.add_argument("images", help="a folder of images, a caption CSV/TSV, or one image file")
    ap.add_argument("out", help="the .npy to write (ids go to <out>.ids.txt)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--tokens", default="pooled", choices=["pooled", "patches"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    ap.add_argument("--no-progress", action="store_true")


def run(a) -> str:
    return extract_features(a.visual_encoder, a.images, a.out, batch_size=a.batch_size, dtype=a.dtype,
                            tokens=a.tokens, device=a.device, num_workers=a.num_workers,
                            progress=not a.no_progress)

