"""The one training loop for every method: build → fit (epochs of steps, validation, checkpoints) → test.

``train(config=None, **overrides) -> TrainResult`` builds the method (:mod:`ccr_fast.methods`), its training
dataset (``Method.train_dataset`` over :func:`ccr_fast.data.load_data`) and the validation/test sets (languages
from ``Method.eval_languages``), then runs AdamW/Adam steps with warm-up + linear/cosine decay or the NRCCR
plateau rule, gradient clipping, AMP on CUDA and gradient accumulation, the method's extra optimiser steps
(``Method.extra_step``), validation every epoch on ``eval.metric`` with early stopping, and checkpoints
(:mod:`.checkpoint`: ``best`` on improvement, ``last`` at each epoch end and every ``save_every_steps`` steps,
with exact resume from the middle of an epoch). A run that ends before its first validation validates at the
end and saves ``best``, so ``best_checkpoint`` is always set. Logs: a tqdm bar and ``<run_dir>/metrics.jsonl``.

Under ``torchrun`` (``WORLD_SIZE > 1``) the sampler shards the data, the contrastive losses gather across ranks,
rank 0 names the run folder and broadcasts it, and only rank 0 writes files and prints. A process group that
``train`` created itself (under ``torchrun``) is destroyed when it returns, after a barrier (no rank leaves while
another still uses the connection); a group the caller created stays the caller's.

The loop never names a method: everything method-specific is a hook of :class:`ccr_fast.methods.Method`.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import Config, ConfigError, load_config, save_config
from ..data.collate import to_device
from ..eval.scoring import evaluate_method, format_metrics
from . import checkpoint as ckpt
from . import distributed as dist
from .state_cache import install_state_cache

log = logging.getLogger("ccr_fast.training")

DEFAULT_RUN = {
    # The built-in default: the recipe the frozen selection rule (ccr_fast/experiments/select.py) picked on
    # validation alone over five folds (`ccr-fast compare --folds 5`, row `ccrk_mix`; docs/results.md). CCR^k 1-to-K
    # ITC in the frozen e5 space, centred (ccrk.text_center: the mean caption embedding is subtracted), identity
    # text projection; on the visual side standardised features (BatchNorm without affine), dropout 0.1 and one
    # linear map 2048->384; every human caption of the 700 shipped training images (train_captions="all",
    # caption_groups="max", id-aware positives), batch 350, lr 2e-3, fixed temperature 0.05, 6 epochs (72 steps).
    # Ranking: query-bank normalisation over the training captions and images, and a score mix with a closed-form
    # ridge map, (1-w)*cos(learned) + w*cos(ridge); beta, w and the ridge lambda are picked on validation at each
    # epoch (ccrk.querybank_betas, ccrk.ridge_mix, ccrk.ridge_mix_lambdas). No ITM/MLM. The encoder stays frozen
    # with cached token states, so a run is one encoder pass over the captions plus 72 cheap steps.
    # Same values: ccr_fast/configs/default.yaml.
    "method": "ccrk",
    "data": {"name": "shipped", "train_captions": "all"},
    "languages": ["en", "de", "fr", "cs"],
    "epochs": 6,
    "batch_size": 350,
    "lr": 2e-3,
    "model.trainable_layers": [],
    "model.cache_text_states": True,
    "model.visual_encoder": "norm_linear",
    "model.dropout": 0.1,
    "model.visual_hidden": 384,
    "model.embed_dim": 384,
    "model.text_prefix": "query: ",
    "optim.schedule": "cosine",
    "optim.warmup": 0.05,
    "eval.metric": "mr",
    "ccrk.text_proj": "identity",
    "ccrk.vision_proj": "identity",
    "ccrk.caption_groups": "max",
    "ccrk.id_aware": True,
    "ccrk.text_center": True,
    "ccrk.querybank": True,
    "ccrk.querybank_beta": 20.0,
    "ccrk.querybank_betas": [5.0, 10.0, 20.0, 30.0],
    "ccrk.ridge_mix": [0.0, 0.25, 0.5, 0.75],
    "ccrk.ridge_mix_lambdas": [3.0, 10.0],
    "ccrk.temp_init": 0.05,
    "ccrk.temp_min": 0.05,
    "ccrk.temp_max": 0.05,
    "ccrk.w_itm": 0.0,
    "ccrk.w_mlm": 0.0,
    "ccrk.fusion_layers": 1,  # built but unused without ITM/MLM; kept small
    "ccrk.fusion_width": 128,
    "ccrk.k_test": 0,
    "ccrk.pool": "mean",
}


@dataclass
class TrainResult:
    """``metrics``: final test metrics (per language nested, means at top level, MRV); ``best_checkpoint``: the
    best checkpoint folder (always set); ``run_dir``: the run folder; ``history``: per-epoch validation records."""

    metrics: Dict[str, object]
    best_checkpoint: str
    run_dir: str
    history: List[dict] = field(default_factory=list)


class EpochSampler(torch.utils.data.Sampler):
    """Seeded per-epoch permutation (same on every rank), sharded by rank; ``skip`` drops already-seen samples."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.skip = 0, 0

    def indices(self) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).numpy()
        per = self.n // self.world
        return perm[: per * self.world][self.rank::self.world]

    def __iter__(self):
        return iter(self.indices()[self.skip:].tolist())

    def __len__(self) -> int:
        return max(0, self.n // self.world - self.skip)


@dataclass
class Run:
    """Everything a training run holds between the steps of :func:`fit`."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    method: torch.nn.Module
    model: torch.nn.Module  # the method, or its DDP wrapper
    train_set: object
    val_sets: Optional[list]
    test_sets: Optional[list]
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    sampler: EpochSampler
    steps_per_epoch: int
    total_steps: int
    run_dir: Path
    state: dict
    t_start: float
    pbar: object = None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def trainer_state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(), "extra": self.method.extra_state(), "loop": dict(self.state),
                "rng": ckpt.rng_state(self.method)}

    def save(self, name: str) -> None:
        if self.main:
            ckpt.save_checkpoint(self.ckpt_dir / name, self.method, self.cfg, self.trainer_state())

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def say(self, text: str) -> None:
        log.info(text)
        if self.main and self.cfg.progress:
            (self.pbar.write if self.pbar is not None else print)(text)


# ------------------------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg: Config, total_steps: int):
    o = cfg.optim
    warm = int(round(o.warmup * total_steps)) if o.schedule != "plateau" else 0

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if o.schedule in ("constant", "plateau"):
            return 1.0
        frac = min(max((step - warm) / max(1, total_steps - warm), 0.0), 1.0)
        return 1.0 - frac if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def share_text_state_cache(method, cfg: Config) -> None:
    """Give the method's frozen, cached text encoders a bounded token-state cache shared by every run of this process
    with the same pretrained encoder (:mod:`.state_cache`; e.g. ``tools/run_claims.py``)."""
    install_state_cache(method, cfg)


def resolve_config(config=None, overrides: Optional[dict] = None) -> Config:
    """The run's config: the built-in default when neither a config nor overrides are given."""
    overrides = dict(overrides or {})
    if config is None:
        overrides = {**DEFAULT_RUN, **overrides}
    return load_config(config, **overrides)


def _visual_width(dataset) -> int:
    item = dataset[0]
    return int(np.shape(item["visual"])[-1])


def check_visual_dim(cfg: Config, width: int, where: str) -> None:
    """Set ``model.visual_dim`` from the data, or raise when a configured value contradicts it."""
    if getattr(cfg, "visual_encoder", None):
        from ..data.media_data import tower_out_dim, tower_trains

        if tower_trains(cfg):  # the features are the frozen bottom's states; the head takes the tower's output
            width = tower_out_dim(cfg)
    if cfg.model.visual_dim is None:
        cfg.model.visual_dim = width
    elif int(cfg.model.visual_dim) != width:
        raise ConfigError(f"model.visual_dim: configured {cfg.model.visual_dim}, but the features of {where} are "
                          f"{width}-d (leave model.visual_dim unset to read it from the data)")


def build_eval_sets(cfg: Config, method, split: str) -> list:
    """Per-language evaluation sets of ``split`` for the method's evaluation languages."""
    from ..data import make_eval_sets
    from ..data.collections import load_data

    langs = method.eval_languages()
    return make_eval_sets(load_data(cfg, split, langs), langs)


# ---------------------------------------------------------------------------------------------------- build
def build(cfg: Config, datasets: Optional[dict] = None) -> Run:
    """Method, data, optimiser, run folder and (when resuming) the restored state."""
    from ..data.collections import load_data
    from ..methods import build_method

    rank, world = dist.setup(cfg.device)
    device = dist.device_for(cfg.device, rank)
    seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    t_start = time.time()

    if datasets is None:
        train_data = load_data(cfg, "train")
        check_visual_dim(cfg, int(train_data.features.shape[-1]), f"data={cfg.data!r} (train)")
        method = build_method(cfg)
        train_set = method.train_dataset(train_data)
        val_sets = build_eval_sets(cfg, method, cfg.eval.val_split)
        test_sets = build_eval_sets(cfg, method, cfg.eval.test_split)
    else:
        from ..data import CCRData

        train_set, val_sets, test_sets = datasets["train"], datasets.get("val"), datasets.get("test")
        check_visual_dim(cfg, _visual_width(train_set) if not isinstance(train_set, CCRData)
                         else int(train_set.features.shape[-1]), "the given train dataset")
        method = build_method(cfg)
        if isinstance(train_set, CCRData):
            train_set = method.train_dataset(train_set)
    method.to(device)
    _, cache_note = install_state_cache(method, cfg, train_set)
    n = len(train_set)
    if n < world * 2:
        raise ValueError(f"train data: {n} samples is too few for {world} process(es)")

    sampler = EpochSampler(n, cfg.seed, rank, world)
    per_rank = n // world
    batches = per_rank // cfg.batch_size if per_rank >= cfg.batch_size else 1
    steps_per_epoch = max(1, batches // cfg.optim.grad_accum)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, int(cfg.max_steps))

    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    o = cfg.optim
    groups = method.param_groups(cfg.lr, o.head_lr_mult)
    if o.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(o.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    scaler = torch.amp.GradScaler("cuda", enabled=bool(o.amp and device.type == "cuda"))

    resume_path, why = ckpt.find_resume(cfg) if rank == 0 else (None, "")
    resume_path = dist.broadcast_object(resume_path)
    if resume_path is not None:
        run_dir = Path(resume_path).parent.parent
    else:
        run_dir = dist.broadcast_object(ckpt.new_run_dir(cfg) if rank == 0 else None)
    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": -math.inf, "bad_epochs": 0, "last_halving": 0,
             "history": []}
    run = Run(cfg, rank, world, device, method, model, train_set, val_sets, test_sets, opt, sched, scaler, sampler,
              steps_per_epoch, total, run_dir, state, t_start)
    if rank == 0:
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
        if cfg.resume:
            run.say(why)
        log.info(cache_note)
    if resume_path is not None:
        ckpt.load_weights(method, resume_path)
        saved = ckpt.load_trainer_state(resume_path)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        method.load_extra_state(saved.get("extra", {}))
        run.state = saved["loop"]
        ckpt.set_rng_state(method, saved["rng"])
    return run


# ------------------------------------------------------------------------------------------------------ fit
def train_one_epoch(run: Run) -> bool:
    """Steps of the current epoch (from ``batch_in_epoch`` on); True when the epoch ran to its end."""
    cfg, st, o = run.cfg, run.state, run.cfg.optim
    run.sampler.epoch, run.sampler.skip = st["epoch"], st["batch_in_epoch"] * cfg.batch_size
    per_rank = len(run.sampler.indices())
    drop_last = per_rank >= cfg.batch_size
    # its own generator: creating the iterator must not draw from the global RNG (exact resume mid-epoch)
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_size=cfg.batch_size, sampler=run.sampler, collate_fn=run.method.collate,
        drop_last=drop_last, num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False, prefetch_factor=2 if cfg.num_workers else None)
    run.method.train()
    use_amp = run.scaler.is_enabled()
    main_params = [p for g in run.opt.param_groups for p in g["params"]]
    t0, n_seen, micro = time.time(), 0, 0
    for batch in loader:
        batch = to_device(batch, run.device)
        with torch.autocast(run.device.type, enabled=use_amp):
            losses = run.model(batch) if run.world > 1 else run.method.loss_dict(batch)
        run.scaler.scale(losses["total"] / o.grad_accum).backward()
        micro += 1
        st["batch_in_epoch"] += 1
        n_seen += batch["visual"].shape[0] * run.world
        if micro % o.grad_accum:
            continue
        run.scaler.unscale_(run.opt)
        if o.grad_clip and o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(main_params, o.grad_clip)
        run.scaler.step(run.opt)
        run.scaler.update()
        run.opt.zero_grad(set_to_none=True)
        run.sched.step()
        run.method.extra_step()
        st["step"] += 1
        rec = {"step": st["step"], "epoch": st["epoch"], "lr": run.opt.param_groups[0]["lr"],
               **{k: float(v.detach()) for k, v in losses.items() if v is not None},
               "samples_per_s": n_seen / max(1e-9, time.time() - t0), "time": time.time()}
        run.log(rec)
        if run.pbar is not None:
            run.pbar.set_postfix(loss=f"{rec['total']:.4f}", lr=f"{rec['lr']:.2e}", sps=f"{rec['samples_per_s']:.0f}")
            run.pbar.update(1)
        if cfg.save_every_steps and st["step"] % cfg.save_every_steps == 0 and st["step"] < run.total_steps:
            run.save("last")
        if st["step"] >= run.total_steps:
            return st["batch_in_epoch"] >= (per_rank // cfg.batch_size if drop_last else 1)
    return True


def validate(run: Run) -> float:
    """Validation score (``eval.metric``, higher is better) decided on rank 0 and broadcast; logged."""
    cfg = run.cfg
    score = None
    if run.main:
        m = run.method
        test_weight = m.translate_test_weight
        if m.val_translate_test_weight is not None:  # validation may use its own translate-test weight
            m.translate_test_weight = m.val_translate_test_weight
        try:
            chosen = m.choose_on_validation(run.val_sets, cfg.eval.batch_size, cfg.eval.metric)
            val = evaluate_method(m, run.val_sets, cfg.eval.batch_size)
        finally:
            m.translate_test_weight = test_weight
        if cfg.eval.metric not in val:
            raise ConfigError(f"eval.metric: {cfg.eval.metric!r} is not a metric (have "
                              f"{sorted(k for k, v in val.items() if isinstance(v, float))})")
        score = float(val[cfg.eval.metric])
        rec = {"epoch": run.state["epoch"], "step": run.state["step"], "val_" + cfg.eval.metric: score,
               **({"val_mrv": val["mrv"]} if "mrv" in val else {}), **chosen}
        run.state["history"].append(rec)
        run.log(rec)
        run.say(f"epoch {run.state['epoch']} step {run.state['step']}: val {cfg.eval.metric} {score:.2f}")
    return float(dist.broadcast_object(score))


def _select(run: Run, score: float) -> bool:
    st = run.state
    improved = score > st["best"]
    if improved:
        st["best"], st["bad_epochs"] = score, 0
        run.save("best")
    else:
        st["bad_epochs"] += 1
    return improved


def _plateau(run: Run, improved: bool) -> None:
    """NRCCR's rule: ×decay every epoch, ×0.5 more after a non-improving epoch > 2 epochs after the last halving."""
    o, st = run.cfg.optim, run.state
    factor = o.decay
    if not improved and st["epoch"] - st["last_halving"] > 2:
        factor *= 0.5
        st["last_halving"] = st["epoch"]
    run.sched.base_lrs = [b * factor for b in run.sched.base_lrs]
    for g, b in zip(run.opt.param_groups, run.sched.base_lrs):
        g["initial_lr"] = b
        g["lr"] = b


def fit(run: Run) -> None:
    """Epochs until ``epochs``, ``max_steps`` or early stopping; always leaves ``best`` and ``last``."""
    from tqdm.auto import tqdm

    cfg, st = run.cfg, run.state
    run.pbar = tqdm(total=run.total_steps, initial=st["step"], disable=not (cfg.progress and run.main),
                    desc=f"train {cfg.method}", dynamic_ncols=True)
    validate_now = bool(run.val_sets) and cfg.eval.every_epoch
    if run.method.closed_form:  # solved in one call (e.g. a ridge map), selected on validation by the method
        rec = run.method.fit(run.train_set, run.val_sets, cfg.eval.metric)
        st["history"].append(rec)
        run.log(rec)
        st["epoch"], st["best"] = cfg.epochs, rec.get(f"val_{cfg.eval.metric}", -math.inf)
        run.save("best")
        run.total_steps = st["step"]
    while st["step"] < run.total_steps and st["epoch"] < cfg.epochs:
        if not train_one_epoch(run):  # stopped mid-epoch at max_steps
            run.save("last")
            break
        st["epoch"] += 1
        st["batch_in_epoch"] = 0
        improved = _select(run, validate(run)) if validate_now else True
        if cfg.optim.schedule == "plateau":
            _plateau(run, improved)
        run.save("last")
        if cfg.eval.patience and st["bad_epochs"] > cfg.eval.patience:
            break
    run.pbar.close()
    run.pbar = None
    if dist.broadcast_object(not (run.ckpt_dir / "best").is_dir() if run.main else None):
        # ended before its first validation: validate now (when there are val sets) and keep these weights
        if run.val_sets:
            st["best"] = validate(run)
        run.save("best")
    dist.barrier()


def test(run: Run) -> Dict[str, object]:
    """Test metrics of the best checkpoint (rank 0; ``{}`` on other ranks and without test sets)."""
    cfg = run.cfg
    metrics: Dict[str, object] = {}
    if run.main and run.test_sets:
        ckpt.load_weights(run.method, run.ckpt_dir / "best")
        metrics = evaluate_method(run.method, run.test_sets, cfg.eval.batch_size)
        metrics["train_seconds"] = time.time() - run.t_start
        (run.run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
        if cfg.progress:
            print(f"test metrics ({cfg.method}, {time.time() - run.t_start:.0f} s):\n" + format_metrics(metrics))
    return metrics


TIMING = "timing.json"  # the run's wall time and the machine it ran on (timing_record), written when it completes


def _load_average() -> Optional[List[float]]:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def timing_record(run: Run, metrics: dict, started: float, load_start) -> dict:
    """Wall time of a finished :func:`train` call (from the call to the end of testing: loading the encoder and
    the data, training, validation, test) and what it ran on: load average at the start and the end, CPU count,
    torch threads, device, world size, versions, ``OPENBLAS_CORETYPE``."""
    import datetime
    import os
    import platform

    from .. import __version__

    def utc(t):
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")

    now = time.time()
    train_s = metrics.get("train_seconds")
    return {"wall_seconds": round(now - started, 2),
            "train_seconds": None if train_s is None else min(round(train_s, 2), round(now - started, 2)),
            "started_utc": utc(started), "finished_utc": utc(now), "load_average_start": load_start,
            "load_average_end": _load_average(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(run.device), "world_size": run.world,
            "steps": run.state["step"], "python": platform.python_version(), "torch": torch.__version__,
            "ccr_fast": __version__, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def train(config=None, *, datasets: Optional[dict] = None, **overrides) -> TrainResult:
    """Train the configured method; see the module docstring.

    Args:
        config: None (the built-in default when there are also no overrides), a YAML/JSON path, a dict or a Config.
        datasets: optional ``{"train": CCRData (the method builds its dataset) or a Dataset / list of items,
            "val": [EvalSet], "test": [EvalSet]}`` instead of ``cfg.data``.
        overrides: dotted or top-level config keys.
    """
    cfg = resolve_config(config, overrides)
    started = (time.time(), _load_average())
    ok = False
    try:
        run = build(cfg, datasets)
        fit(run)
        metrics = test(run)
        if run.main:
            if cfg.save_encoder:
                exported = run.ckpt_dir / "best-export"
                import shutil

                shutil.rmtree(exported, ignore_errors=True)
                ckpt.export_checkpoint(run.ckpt_dir / "best", exported)
            (run.run_dir / ckpt.FINISHED).write_text(json.dumps({"step": run.state["step"],
                                                                 "epoch": run.state["epoch"]}))
            (run.run_dir / TIMING).write_text(json.dumps(timing_record(run, metrics, *started), indent=2))
        ok = True
    finally:
        dist.teardown(ok)  # a process group that build() created (torchrun) ends with the run, cleanly
    return TrainResult(metrics, str(run.ckpt_dir / "best"), str(run.run_dir), run.state["history"])


def evaluate(checkpoint, data=None, **overrides) -> dict:
    """Load a checkpoint folder written by :func:`train` and return its test metrics.

    Args:
        checkpoint: a checkpoint folder (``.../checkpoints/best``) or a run folder (its best, else last, is used).
        data: None (the configured data, test split), a :class:`ccr_fast.data.CCRData`, or a list of EvalSet.
        overrides: config overrides (e.g. ``languages=["de"]``, ``device="cpu"``, ``ccrk.k_test=0``).
    """
    from ..data import CCRData, make_eval_sets

    method, cfg = ckpt.load_checkpoint_model(checkpoint, **overrides)
    if data is None:
        sets = build_eval_sets(cfg, method, cfg.eval.test_split)
    elif isinstance(data, (list, tuple)):
        sets = list(data)
    elif isinstance(data, CCRData):
        sets = make_eval_sets(data, method.eval_languages())
    else:
        raise ValueError(f"data: expected None, a CCRData or a list of EvalSet, got {type(data).__name__}")
    return evaluate_method(method, sets, cfg.eval.batch_size)
