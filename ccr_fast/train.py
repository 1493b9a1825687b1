"""The one training loop for every method.

``train(config=None, **overrides) -> TrainResult``: builds the method (:mod:`ccr_fast.methods`) and the data
(the shipped real data by default), then runs epochs of AdamW/Adam steps with warm-up + linear/cosine decay or the
NRCCR plateau rule, gradient clipping, AMP on CUDA, gradient accumulation, validation every epoch on the selection
metric, early stopping, best/last checkpoints (safetensors weights + optimiser/scheduler/RNG/step state, written
atomically) and exact resume (``resume="auto"`` or a checkpoint path). Logs go to a tqdm bar and
``<run_dir>/metrics.jsonl`` (and TensorBoard when installed). Under ``torchrun`` (``WORLD_SIZE > 1``) it runs DDP:
the sampler shards the data, the contrastive losses gather features across ranks (``gather_with_grad``), rank 0
logs, evaluates and writes checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .config import Config, load_config, save_config
from .data.collate import to_device
from .data import EvalSet, make_eval_sets
from .evaluate import evaluate_method, format_metrics

DEFAULT_RUN = {
    # The built-in default: CCR^k 1-to-K ITC + MITM on the shipped data (700 train images, 4 languages), frozen e5
    # with cached token states, a 1-layer fusion encoder trained by MITM. CMLM is off here (ccrk.w_mlm=0): masked
    # captions cannot come from the cache, so it costs a full encoder pass per step; turn it on with ccrk.w_mlm=1.
    # Ranking is ITC-only (ccrk.k_test=0): on the shipped data the ITM re-rank of the ITC top-8 lowers test SumR
    # from 207.3 to 175.8 and R@1 from ~15 % to ~6 % (same checkpoint, docs/results.md), and costs a fusion pass
    # per candidate at every validation.
    "method": "ccrk",
    "data": "shipped",
    "languages": ["en", "de", "fr", "cs"],
    "epochs": 6,
    "batch_size": 64,
    "lr": 5e-4,
    "model.trainable_layers": [],
    "model.cache_text_states": True,
    "model.visual_hidden": 512,
    "model.embed_dim": 256,
    "model.text_prefix": "query: ",
    "optim.schedule": "cosine",
    "optim.warmup": 0.05,
    "eval.metric": "mr",
    "ccrk.fusion_layers": 1,
    "ccrk.fusion_width": 128,
    "ccrk.k_test": 0,
    "ccrk.pool": "mean",
    "ccrk.w_mlm": 0.0,
}


@dataclass
class TrainResult:
    """``metrics``: final test metrics (per language nested, means at top level, MRV); ``best_checkpoint``: folder;
    ``run_dir``: the run folder; ``history``: per-epoch validation records."""

    metrics: Dict[str, object]
    best_checkpoint: Optional[str]
    run_dir: str
    history: List[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------ data
SYNTHETIC_DEFAULTS = {"n_items": 400, "n_concepts": 48, "feature_dim": 64, "seed": 0}
_SPLITS = ("train", "val", "test")


def _load_data(cfg: Config, split: str):
    """The :class:`ccr_fast.data.CCRData` of ``split`` for ``cfg.data``.

    ``cfg.data``: ``"shipped"`` (also ``"multi30k"``/``"default"``: the repository's real data), ``"synthetic"``
    (:func:`ccr_fast.data.make_synthetic` over ``cfg.languages``, split 60/20/20 %), or a dict
    ``{"name": "synthetic", **make_synthetic kwargs}``.
    """
    from .data import load_shipped, make_synthetic

    name, kw = cfg.data, {}
    if isinstance(cfg.data, dict):
        kw = dict(cfg.data)
        name = kw.pop("name", None)
    if name in ("shipped", "multi30k", "default") and not kw:
        return load_shipped(split)
    if name == "synthetic":
        if split not in _SPLITS:
            raise ValueError(f"split: expected one of {_SPLITS} for synthetic data, got {split!r}")
        opts = {**SYNTHETIC_DEFAULTS, **kw}
        langs = list(cfg.languages)
        data = make_synthetic(langs=langs, source=langs[0], **opts)
        n = len(data)
        cut = [0, int(0.6 * n), int(0.8 * n), n]
        i = _SPLITS.index(split)
        return data.subset(np.arange(cut[i], cut[i + 1]))
    raise ValueError(f"data: expected 'shipped' (the repository's real data), 'synthetic' or "
                     f"{{'name': 'synthetic', ...}}, got {cfg.data!r}")


def build_train_items(cfg: Config, data) -> List[dict]:
    """Dataset items (dicts of raw strings + numpy) for the configured method from a CCRData."""
    langs = list(cfg.languages)
    feats = data.features
    items = []
    if cfg.method == "ccrk":
        for i in range(len(data)):
            if all(data.captions[l][i] for l in langs):
                items.append({"visual": feats[i], "index": i, "texts": [data.captions[l][i][0] for l in langs]})
        return items
    src, targets = langs[0], langs[1:] or langs[:1]
    for tgt in targets:
        t_key, b_key = f"{src}2{tgt}", f"{src}2{tgt}2{src}"
        for i in range(len(data)):
            for j, s in enumerate(data.captions[src][i]):
                tr = data.translations.get(t_key, data.captions.get(tgt))
                it = {"visual": feats[i], "index": i, "src": s, "tgt": tr[i][j]}
                if cfg.method == "nrccr":
                    it["back"] = data.translations[b_key][i][j] if b_key in data.translations else s
                items.append(it)
    return items


def build_eval_data(cfg: Config, split: str) -> List[EvalSet]:
    """Per-language evaluation sets of ``split`` (NRCCR/CL2CM/baseline evaluate the target languages)."""
    langs = list(cfg.languages)
    if cfg.method != "ccrk" and len(langs) > 1:
        langs = langs[1:]
    return make_eval_sets(_load_data(cfg, split), langs)


class EpochSampler(torch.utils.data.Sampler):
    """Seeded per-epoch permutation (same on every rank), sharded by rank; ``skip`` drops already-seen samples."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.skip = 0, 0

    def indices(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.n // self.world
        return perm[: per * self.world][self.rank::self.world]

    def __iter__(self):
        return iter(self.indices()[self.skip:])

    def __len__(self):
        return max(0, self.n // self.world - self.skip)


# ------------------------------------------------------------------------------------------------------- helpers
def _setup_distributed(device: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _device(cfg: Config, rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={cfg.device!r} but no CUDA device is visible")
    return torch.device(cfg.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(cfg: Config, total_steps: int):
    o = cfg.optim
    warm = int(round(o.warmup * total_steps)) if o.schedule != "plateau" else 0

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if o.schedule in ("constant", "plateau"):
            return 1.0
        frac = (step - warm) / max(1, total_steps - warm)
        frac = min(max(frac, 0.0), 1.0)
        return 1.0 - frac if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def _rng_state(method) -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(method, "rng"):
        st["method_rng"] = method.rng.getstate()
    if hasattr(method, "gen"):
        st["method_gen"] = method.gen.get_state()
    return st


def _set_rng_state(method, st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    if "method_rng" in st:
        method.rng.setstate(st["method_rng"])
    if "method_gen" in st:
        method.gen.set_state(st["method_gen"])


def save_checkpoint(path: Path, method, cfg: Config, state: dict) -> None:
    """Write ``path/`` atomically: ``model.safetensors``, ``trainer_state.pt``, ``config.json``."""
    from safetensors.torch import save_model

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(method, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "trainer_state.pt")
    save_config(cfg, tmp / "config.json")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint_model(checkpoint, **overrides):
    """(method in eval mode, config) from a checkpoint folder or a run folder."""
    from safetensors.torch import load_model

    from .methods import build_method

    p = Path(checkpoint)
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints" / ("best" if (p / "checkpoints" / "best").is_dir() else "last")
    if not (p / "model.safetensors").is_file():
        raise FileNotFoundError(f"checkpoint must be a folder with model.safetensors (or a run folder), got {str(p)!r}")
    cfg = load_config(json.loads((p / "config.json").read_text()), **overrides)
    cfg.resume = None
    method = build_method(cfg)
    load_model(method, str(p / "model.safetensors"), strict=False)
    method.to(_device(cfg, 0)).eval()
    return method, cfg


_STATE_CACHES: Dict[tuple, dict] = {}


def share_text_state_cache(method, cfg: Config) -> None:
    """Let every run of this process with the same frozen pretrained text encoder share one token-state cache.

    A frozen encoder gives the same states for the same token ids, so a second run (another method, seed or an
    ablation, e.g. ``tools/run_comparison.py``) skips the encoder pass for captions already seen. Random-init test
    encoders (``model.tiny_text_encoder``) and trainable encoders are left alone.
    """
    from .models.text import TextBackbone

    if cfg.model.tiny_text_encoder or not cfg.model.cache_text_states:
        return
    for mod in method.modules():
        if isinstance(mod, TextBackbone) and mod.use_cache and mod.frozen():
            mod._cache = _STATE_CACHES.setdefault((str(cfg.text_encoder), cfg.model.max_tokens), {})


def _log_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------------------- train
def train(config=None, *, datasets: Optional[dict] = None, **overrides) -> TrainResult:
    """Train the configured method; see the module docstring.

    Args:
        config: None (the built-in default when there are also no overrides), a YAML/JSON path, a dict or a Config.
        datasets: optional ``{"train": [items], "val": [EvalSet], "test": [EvalSet]}`` instead of ``cfg.data``.
        overrides: dotted or top-level config keys.
    Returns:
        :class:`TrainResult`.
    """
    from .methods import build_method

    if config is None:
        merged = dict(DEFAULT_RUN)
        merged.update(overrides)
        overrides = merged
    cfg = load_config(config, **overrides)
    rank, world = _setup_distributed(cfg.device)
    device = _device(cfg, rank)
    seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    t_start = time.time()

    if datasets is None:
        train_data = _load_data(cfg, "train")
        cfg.model.visual_dim = int(train_data.features.shape[-1])  # the visual input width is the data's
        train_items = build_train_items(cfg, train_data)
        val_sets = build_eval_data(cfg, cfg.eval.val_split)
        test_sets = build_eval_data(cfg, cfg.eval.test_split)
    else:
        train_items, val_sets, test_sets = datasets["train"], datasets.get("val"), datasets.get("test")
    method = build_method(cfg).to(device)
    share_text_state_cache(method, cfg)
    if len(train_items) < world * cfg.batch_size and len(train_items) < world * 2:
        raise ValueError(f"train data: {len(train_items)} items is too few for batch_size={cfg.batch_size}")

    sampler = EpochSampler(len(train_items), cfg.seed, rank, world)
    drop_last = len(train_items) // world >= cfg.batch_size
    loader_kw = dict(batch_size=cfg.batch_size, sampler=sampler, collate_fn=method.collate, drop_last=drop_last,
                     num_workers=cfg.num_workers)
    steps_per_epoch = max(1, (len(train_items) // world) // cfg.batch_size if drop_last else
                          math.ceil(len(train_items) / world / cfg.batch_size)) // cfg.optim.grad_accum
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, int(cfg.max_steps))

    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    params = method.main_parameters()
    o = cfg.optim
    if o.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(o.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    use_amp = bool(o.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    # run folder / resume
    resume_path = None
    if cfg.resume == "auto":
        run_dir = Path(cfg.output_dir) / f"{cfg.method}-seed{cfg.seed}"
        if (run_dir / "checkpoints" / "last").is_dir():
            resume_path = run_dir / "checkpoints" / "last"
    elif cfg.resume:
        resume_path = Path(cfg.resume)
        if (resume_path / "checkpoints").is_dir():
            resume_path = resume_path / "checkpoints" / "last"
        run_dir = resume_path.parent.parent
    else:
        run_dir = Path(cfg.output_dir) / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")

    st = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": -math.inf, "bad_epochs": 0, "last_halving": 0,
          "history": []}
    if resume_path is not None:
        from safetensors.torch import load_model

        load_model(method, str(resume_path / "model.safetensors"), strict=False)
        saved = torch.load(resume_path / "trainer_state.pt", weights_only=False, map_location="cpu")
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        method.load_extra_state(saved.get("extra", {}))
        st = saved["loop"]
        _set_rng_state(method, saved["rng"])

    def state_dict():
        return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "extra": method.extra_state(), "loop": dict(st), "rng": _rng_state(method)}

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # TensorBoard is optional
            writer = None
    log_path = run_dir / "metrics.jsonl"
    show = cfg.progress and rank == 0
    from tqdm.auto import tqdm

    pbar = tqdm(total=total, initial=st["step"], disable=not show, desc=f"train {cfg.method}", dynamic_ncols=True)
    main_params = [p for g in opt.param_groups for p in g["params"]]
    done = st["step"] >= total
    while not done and st["epoch"] < cfg.epochs:
        sampler.epoch, sampler.skip = st["epoch"], st["batch_in_epoch"] * cfg.batch_size
        # its own generator: creating the iterator must not draw from the global RNG (exact resume mid-epoch)
        loader = torch.utils.data.DataLoader(train_items, generator=torch.Generator().manual_seed(cfg.seed),
                                             **loader_kw)
        method.train()
        t_epoch, n_seen = time.time(), 0
        micro = 0
        for batch in loader:
            batch = to_device(batch, device)
            with torch.autocast(device.type, enabled=use_amp):
                losses = model(batch) if world > 1 else method.loss_dict(batch)
            scaler.scale(losses["total"] / o.grad_accum).backward()
            micro += 1
            st["batch_in_epoch"] += 1
            n_seen += batch["visual"].shape[0] * world
            if micro % o.grad_accum:
                continue
            scaler.unscale_(opt)
            if o.grad_clip and o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(main_params, o.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            method.extra_step()
            st["step"] += 1
            rec = {"step": st["step"], "epoch": st["epoch"], "lr": opt.param_groups[0]["lr"],
                   **{k: float(v.detach()) for k, v in losses.items() if v is not None}}
            rec["samples_per_s"] = n_seen / max(1e-9, time.time() - t_epoch)
            if rank == 0:
                _log_jsonl(log_path, rec)
                if writer is not None:
                    for k, v in rec.items():
                        writer.add_scalar(f"train/{k}", v, st["step"])
                pbar.set_postfix(loss=f"{rec['total']:.4f}", lr=f"{rec['lr']:.2e}", sps=f"{rec['samples_per_s']:.0f}")
                pbar.update(1)
            if st["step"] >= total:
                done = True
                break
        epoch_finished = not done or st["batch_in_epoch"] >= len(sampler.indices()) // cfg.batch_size
        if not epoch_finished:
            if rank == 0:
                save_checkpoint(ckpt_dir / "last", method, cfg, state_dict())
            break
        st["epoch"] += 1
        st["batch_in_epoch"] = 0
        # validation, selection, early stopping, plateau rule (rank 0 decides, everyone follows)
        improved = True
        if val_sets and cfg.eval.every_epoch:
            score = torch.zeros(1)
            if rank == 0:
                val = evaluate_method(method, val_sets, cfg.eval.batch_size)
                score[0] = float(val[cfg.eval.metric])
                rec = {"epoch": st["epoch"], "val_" + cfg.eval.metric: float(score[0]),
                       **({"val_mrv": val["mrv"]} if "mrv" in val else {})}
                st["history"].append(rec)
                _log_jsonl(log_path, rec)
                if writer is not None:
                    writer.add_scalar(f"val/{cfg.eval.metric}", float(score[0]), st["epoch"])
                if show:
                    pbar.write(f"epoch {st['epoch']}: val {cfg.eval.metric} {float(score[0]):.2f}")
            if world > 1:
                torch.distributed.broadcast(score, 0)
            improved = float(score[0]) > st["best"]
            if improved:
                st["best"], st["bad_epochs"] = float(score[0]), 0
                if rank == 0:
                    save_checkpoint(ckpt_dir / "best", method, cfg, state_dict())
            else:
                st["bad_epochs"] += 1
        if o.schedule == "plateau":
            factor = o.decay
            if not improved and st["epoch"] - st["last_halving"] > 2:
                factor *= 0.5
                st["last_halving"] = st["epoch"]
            for g in opt.param_groups:
                g["initial_lr"] = g.get("initial_lr", g["lr"]) * factor
            sched.base_lrs = [b * factor for b in sched.base_lrs]
            for g, b in zip(opt.param_groups, sched.base_lrs):
                g["lr"] = b
        if rank == 0:
            save_checkpoint(ckpt_dir / "last", method, cfg, state_dict())
        if cfg.eval.patience and st["bad_epochs"] > cfg.eval.patience:
            break
    pbar.close()

    best = ckpt_dir / "best"
    metrics: Dict[str, object] = {}
    if rank == 0 and test_sets:
        if best.is_dir():
            from safetensors.torch import load_model

            load_model(method, str(best / "model.safetensors"), strict=False)
        metrics = evaluate_method(method, test_sets, cfg.eval.batch_size)
        metrics["train_seconds"] = time.time() - t_start
        (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
        if cfg.progress:
            print(f"test metrics ({cfg.method}, {time.time() - t_start:.0f} s):\n" + format_metrics(metrics))
    if writer is not None:
        writer.close()
    return TrainResult(metrics, str(best) if best.is_dir() else None, str(run_dir), st["history"])
