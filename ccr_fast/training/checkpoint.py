"""Checkpoint I/O: atomic folders, trained weights without the frozen encoder, strict loads, exact resume.

A checkpoint folder holds ``model.safetensors`` (the trained weights), ``trainer_state.pt`` (optimiser, scheduler,
AMP scaler, extra optimiser states, loop counters, RNG states) and ``config.json``. A frozen text encoder that was
loaded from a local folder is *not* stored: the safetensors metadata records its folder and a content hash
(SHA-256 of its config and weight files); loading resolves the folder and fails clearly when the hash differs.
Fine-tuned encoder layers are trained weights and are stored. :func:`export_checkpoint` writes a self-contained
copy (the encoder folder copied into ``text_encoder/``); ``save_encoder=True`` exports every best checkpoint.

Loads are strict: a weight the model expects that the file lacks, or one the file has that the model does not
know, raises a ValueError naming them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch

from ..config import Config, ConfigError, load_config, save_config

ENCODER_DIR = "text_encoder"
FINISHED = "finished.json"


# ------------------------------------------------------------------------------------------ frozen encoder
def _encoder_prefixes(method) -> List[str]:
    """State-dict prefixes of text encoders that were loaded from a local folder (not the tiny test encoder)."""
    from ..models.text import TextBackbone

    if method.cfg.model.tiny_text_encoder:
        return []
    return [f"{name}.encoder." for name, mod in method.named_modules(remove_duplicate=False)
            if isinstance(mod, TextBackbone)]


def excluded_keys(method) -> Set[str]:
    """State-dict keys of the frozen pretrained encoder (frozen parameters and its buffers): not saved."""
    prefixes = tuple(_encoder_prefixes(method))
    if not prefixes:
        return set()
    params = dict(method.named_parameters(remove_duplicate=False))
    return {k for k in method.state_dict() if k.startswith(prefixes) and not (k in params and params[k].requires_grad)}


@functools.lru_cache(maxsize=8)
def _hash_folder(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt") or f.name == "config.json"):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def encoder_hash(path) -> str:
    """SHA-256 of a local encoder folder's ``config.json`` and weight files (cached per size/mtime)."""
    p = Path(path)
    stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file()))
    return _hash_folder(str(p.resolve()), stamp)


# ------------------------------------------------------------------------------------------------- save
def _trained_tensors(method) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The state dict less the frozen encoder, one copy of each shared tensor, and the alias map."""
    skip = excluded_keys(method)
    out, aliases, seen = {}, {}, {}
    for k, v in method.state_dict().items():
        if k in skip:
            continue
        key = (v.data_ptr(), v.dtype, tuple(v.shape), tuple(v.stride())) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        out[k] = v.detach().contiguous().cpu()
    return out, aliases


def save_checkpoint(path: Path, method, cfg: Config, state: dict) -> None:
    """Write the checkpoint folder ``path`` atomically (``path.tmp`` then rename)."""
    from safetensors.torch import save_file

    from ..models.text import resolve_encoder_path

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, aliases = _trained_tensors(method)
    meta = {"aliases": json.dumps(aliases), "excluded_prefixes": json.dumps(_encoder_prefixes(method))}
    if _encoder_prefixes(method):
        enc = resolve_encoder_path(cfg.text_encoder)
        meta.update(encoder_path=str(enc.resolve()), encoder_hash=encoder_hash(enc))
    save_file(tensors, str(tmp / "model.safetensors"), metadata=meta)
    torch.save(state, tmp / "trainer_state.pt")
    save_config(cfg, tmp / "config.json")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(checkpoint, out) -> Path:
    """A self-contained copy of ``checkpoint`` in ``out``: the encoder folder is copied into ``text_encoder/``."""
    src, out = resolve_checkpoint(checkpoint), Path(out)
    if out.exists():
        raise ValueError(f"export: {out} already exists")
    shutil.copytree(src, out)
    meta = _metadata(src / "model.safetensors")
    if "encoder_path" in meta:
        shutil.copytree(meta["encoder_path"], out / ENCODER_DIR)
    return out


# ------------------------------------------------------------------------------------------------- load
def resolve_checkpoint(checkpoint) -> Path:
    """A checkpoint folder from itself or a run folder (its ``best``, else ``last``)."""
    p = Path(checkpoint)
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints" / ("best" if (p / "checkpoints" / "best").is_dir() else "last")
    if not (p / "model.safetensors").is_file():
        raise ValueError(f"checkpoint: expected a folder with model.safetensors (or a run folder), got {str(p)!r}")
    return p


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def load_weights(method, checkpoint) -> None:
    """Load ``checkpoint/model.safetensors`` into ``method`` strictly (see the module docstring).

    Raises:
        ValueError: missing or unexpected weights (named), or a frozen encoder whose content hash changed.
    """
    from safetensors.torch import load_file

    from ..models.text import resolve_encoder_path

    path = Path(checkpoint) / "model.safetensors"
    meta = _metadata(path)
    tensors = load_file(str(path))
    for alias, key in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[key]
    if "encoder_hash" in meta and not (Path(checkpoint) / ENCODER_DIR).is_dir():
        enc = resolve_encoder_path(method.cfg.text_encoder)
        if encoder_hash(enc) != meta["encoder_hash"]:
            raise ValueError(f"checkpoint {checkpoint}: the frozen text encoder at {enc} is not the one it was trained "
                             f"with (was {meta.get('encoder_path')}, content hash differs); point text_encoder at "
                             "that folder or use a self-contained export (ccr_fast.training.export_checkpoint)")
    own = method.state_dict()
    skip = excluded_keys(method) if "encoder_hash" in meta else set()
    missing = sorted(k for k in own if k not in tensors and k not in skip)
    unexpected = sorted(k for k in tensors if k not in own)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: weights do not match the model: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    resizable = set(getattr(method, "resizable_buffers", ()))  # sized by the file (Method._load_from_state_dict)
    bad = [k for k in tensors if k not in resizable and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"checkpoint {path}: shape mismatch for {bad[:8]} (e.g. {bad[0]}: file "
                         f"{tuple(tensors[bad[0]].shape)}, model {tuple(own[bad[0]].shape)})")
    # the frozen encoder (not in the file) keeps the weights it was just loaded with: a strict load of the full dict
    method.load_state_dict({**{k: own[k] for k in own if k not in tensors}, **tensors})


def load_checkpoint_model(checkpoint, **overrides):
    """``(method in eval mode, config)`` from a checkpoint folder or a run folder."""
    from ..methods import build_method
    from .distributed import device_for

    p = resolve_checkpoint(checkpoint)
    saved = json.loads((p / "config.json").read_text())
    if (p / ENCODER_DIR).is_dir():  # a self-contained export
        overrides.setdefault("text_encoder", str(p / ENCODER_DIR))
    cfg = load_config(saved, **overrides)
    cfg.resume = None
    method = build_method(cfg)
    load_weights(method, p)
    method.to(device_for(cfg.device, 0)).eval()
    return method, cfg


def load_trainer_state(path) -> dict:
    return torch.load(Path(path) / "trainer_state.pt", weights_only=False, map_location="cpu")


# ------------------------------------------------------------------------------------------------ resume
def find_resume(cfg: Config) -> Tuple[Optional[Path], str]:
    """The ``last`` checkpoint to resume from and a sentence saying why.

    ``resume="auto"``: the newest unfinished run of ``cfg.method`` in ``output_dir`` (a run folder with
    ``checkpoints/last``, without ``finished.json``, whose config names the same method); ``resume=<path>``: that
    run or checkpoint folder; otherwise none.
    """
    if not cfg.resume:
        return None, "starting a new run"
    if cfg.resume != "auto":
        p = Path(cfg.resume)
        if (p / "checkpoints").is_dir():
            p = p / "checkpoints" / "last"
        if not (p / "trainer_state.pt").is_file():
            raise ConfigError(f"resume: {cfg.resume!r} is not a run folder or checkpoint with trainer_state.pt")
        return p, f"resuming {p}"
    out = Path(cfg.output_dir)
    cands = []
    for run in (out.iterdir() if out.is_dir() else []):
        last = run / "checkpoints" / "last"
        if not (last / "trainer_state.pt").is_file() or (run / FINISHED).exists():
            continue
        try:
            method = json.loads((last / "config.json").read_text()).get("method")
        except (OSError, ValueError):
            continue
        if method == cfg.method:
            cands.append((last.stat().st_mtime, run.name, last))
    if not cands:
        return None, f"resume=auto: no unfinished {cfg.method} run in {out}; starting a new run"
    last = max(cands)[2]
    return last, f"resume=auto: resuming the newest unfinished {cfg.method} run {last.parent.parent}"


def new_run_dir(cfg: Config) -> Path:
    """A fresh, not yet existing ``<output_dir>/<method>-<YYYYmmdd-HHMMSS>[-n]`` (created)."""
    base = Path(cfg.output_dir) / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    p, n = base, 1
    while True:
        try:
            p.mkdir(parents=True)
            return p
        except FileExistsError:
            n += 1
            p = base.with_name(f"{base.name}-{n}")


# ------------------------------------------------------------------------------------------------- RNG
def rng_state(method) -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(method, "rng"):
        st["method_rng"] = method.rng.getstate()
    if hasattr(method, "gen"):
        st["method_gen"] = method.gen.get_state()
    return st


def set_rng_state(method, st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    if "method_rng" in st:
        method.rng.setstate(st["method_rng"])
    if "method_gen" in st:
        method.gen.set_state(st["method_gen"])
