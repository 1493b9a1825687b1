"""Training-throughput benchmark: time (steps/s) and peak memory of one method step, fused vs reference losses.

One step = ``loss_dict(batch)`` + ``backward`` + optimiser step + ``extra_step()`` of a method from
``ccr_fast.methods`` (NRCCR: triplet + distillation losses; CCR^k: 1-to-K contrastive + ITM + MLM), built with the
tiny random text encoder of ``ccr_fast.methods._tiny`` and synthetic items (visual features and captions); the
batch is collated (tokenised) once, outside the timing. The methods call the public losses with
``backend="auto"``, so the providers differ only by ``CCR_FAST_BACKEND``:

* ``ccr_fast[<backend>]`` — the fused kernels of that backend (``cpu`` on CPU, ``cuda``/``triton`` on GPU);
* ``ccr_fast[torch]`` — the plain-PyTorch reference losses: the baseline of the ratios.

Both providers start from the same initial weights (a deep copy); their steps interleave, so each trains its own
copy. ``steps_per_s`` = 1000 / median step time in ms.
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Dict, List

import torch

from . import harness


def unavailable_reason() -> str | None:
    """Why the training suite cannot run here, or None when it can."""
    try:
        from ccr_fast.config import load_config  # noqa: F401
        from ccr_fast.methods import build_method  # noqa: F401
        from ccr_fast.methods._tiny import TINY, tiny_items  # noqa: F401
    except Exception as exc:
        return f"ccr_fast.methods is not available ({type(exc).__name__}: {exc})"
    return None


def _step_fn(method, batch, backend: str) -> Callable[[], None]:
    opt = torch.optim.Adam(method.main_parameters(), lr=1e-4)

    def step():
        old = os.environ.get("CCR_FAST_BACKEND")
        os.environ["CCR_FAST_BACKEND"] = backend
        try:
            ld = method.loss_dict(batch)
            opt.zero_grad(set_to_none=True)
            ld["total"].backward()
            opt.step()
            method.extra_step()
        finally:
            if old is None:
                os.environ.pop("CCR_FAST_BACKEND", None)
            else:
                os.environ["CCR_FAST_BACKEND"] = old

    return step


def sweep_configs(device: torch.device, quick: bool) -> List[dict]:
    if quick:
        batches = [16]
    elif device.type == "cuda":
        batches = [256, 1024, 4096]
    else:
        batches = [64, 256]
    return [{"method": m, "batch": b, "d": 256} for m in ("nrccr", "ccrk") for b in batches]


def run(device: torch.device, *, quick: bool, backends: List[str], reps: int = 5, max_seconds: float = 8.0,
        log=print, **_) -> dict:
    """Run the training sweep (or record why it is skipped); returns the suite's JSON payload."""
    why = unavailable_reason()
    payload = {"suite": "training", "mode": "one optimiser step (loss_dict + backward + step)", "records": [],
               "skipped": {}}
    if why is not None:
        log(f"  [training] skip: {why}")
        payload["skipped"]["training"] = why
        return payload
    from ccr_fast.config import load_config
    from ccr_fast.methods import build_method
    from ccr_fast.methods._tiny import TINY, tiny_items

    fused = [b for b in backends if b != "torch"]
    records = []
    for cfg in sweep_configs(device, quick):
        torch.manual_seed(0)
        conf = load_config(None, method=cfg["method"], **{**TINY, "device": device.type,
                                                           "model.embed_dim": cfg["d"]})
        base = build_method(conf).to(device)
        items = tiny_items(cfg["batch"], dim=TINY["model.visual_dim"])
        batch = _to(base.collate(items), device)
        providers: Dict[str, Callable] = {}
        for be in fused + ["torch"]:
            providers[f"ccr_fast[{be}]"] = _step_fn(copy.deepcopy(base), batch, be)
        res = harness.measure(providers, device, warmup=1, reps=2 if quick else reps, min_reps=2 if quick else 3,
                              max_seconds=max_seconds, mem_reps=1 if quick else 3)
        for name, r in res.items():
            rec = {"op": "train", **cfg, "provider": name, **r}
            if r.get("time_ms"):
                rec["steps_per_s"] = 1e3 / r["time_ms"]["median"]
            records.append(rec)
        parts = [f"{n}={1e3 / r['time_ms']['median']:.2f} steps/s" if r["time_ms"] else f"{n}={r['status']}"
                 for n, r in res.items()]
        log(f"  [training] {cfg['method']} batch={cfg['batch']} d={cfg['d']}: " + " ".join(parts))
    base_of = {(r["method"], r["batch"]): r for r in records if r["provider"] == "ccr_fast[torch]" and r.get("time_ms")}
    for r in records:
        b = base_of.get((r["method"], r["batch"]))
        if b is not None and r.get("time_ms"):
            r["speedup_vs_reference"] = b["time_ms"]["median"] / r["time_ms"]["median"]
            if r.get("mem_bytes") and b.get("mem_bytes") and b["mem_bytes"]["median"] > 0:
                r["mem_ratio_vs_reference"] = r["mem_bytes"]["median"] / b["mem_bytes"]["median"]
    payload["records"] = records
    return payload


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
