"""Loss-kernel benchmark: forward + backward time and peak extra memory of CLIP (K=1) and 1-to-K (K>1) losses.

Providers (every one computes the same math: both directions, mean reduction, gradients for the image features,
the text features **and** the scale, same input dtype, loss accumulated in fp32):

* ``ccr_fast[<backend>]`` — ``ccr_fast.losses.clip_loss`` / ``one_to_k_loss`` with ``backend=`` each usable
  backend of the device (``blas``/``cpu``/``torch`` on CPU; ``blas``/``cuda``/``triton``/``torch`` on GPU);
* ``torch_eager`` — the materialised-logits reference below (GEMM in the input dtype, softmax in fp32): the
  baseline of every ratio;
* ``torch_compile`` / ``torch_compile_max_autotune`` — ``torch.compile(dynamic=False)`` of the same eager
  function, compiled **per shape** (as a training loop with a fixed batch does), in the default mode and in
  ``mode="max-autotune-no-cudagraphs"``; compile and autotuning happen in the warm-up, outside the timing. The
  faster of the two is the fair baseline;
* ``open_clip`` — ``open_clip.loss.ClipLoss`` (K=1 only), imported, or loaded from its file when ``import
  open_clip`` fails for want of its other dependencies;
* ``inf_cl`` — Inf-CL's ``cal_inf_loss`` called once per direction (CUDA, ``d % 256 == 0``, K=1) when importable;
  it computes in fp32/TF32 whatever the input dtype;
* ``gemm_floor`` — the three GEMMs of forward + backward (``I Tᵀ``, ``dZ T``, ``dZᵀ I``) and nothing else, through
  the fastest GEMM present: the blas backend's chosen BLAS on CPU (``ccr_fast.backends.blas._gemm.mm``), torch's
  (cuBLAS) on GPU. No implementation that does these GEMMs can beat it by more than noise.

FLOP convention: 3 similarity GEMMs of ``2·B·N·d`` each (N = B·K texts), i.e. ``6·B·N·d`` per forward + backward.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import harness

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
LOGIT_SCALE = 1.0 / 0.07


# ------------------------------------------------------------------------------------------- references
def eager_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ClipLoss math (world size 1) with materialised logits.

    Args:
        image: ``[B, d]`` features.
        text: ``[B, d]`` features.
        scale: 0-dim logit scale (1/τ).

    Returns:
        0-dim fp32 loss ``(CE(Z) + CE(Zᵀ)) / 2`` with ``Z = scale · image textᵀ`` and labels on the diagonal.
    """
    logits = (scale * (image @ text.T)).float()
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def eager_one_to_k_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CCR^k 1-to-K loss (``t2i_divisor="K"``) with materialised logits.

    Args:
        image: ``[B, d]`` features.
        text: ``[B, K, d]`` features, text ``(i, k)`` belongs to image ``i``.
        scale: 0-dim logit scale.

    Returns:
        0-dim fp32 loss ``(L_i2t + L_t2i) / (2K)`` (``ccr_fast.losses.one_to_k_loss``).
    """
    b, k, d = text.shape
    logits = (scale * (image @ text.reshape(b * k, d).T)).float()  # [B, B*K]
    idx = torch.arange(b, device=image.device)
    pos = logits.view(b, b, k)[idx, idx]  # [B, K]: Z[i, (i, k)]
    l_i2t = (k * torch.logsumexp(logits, dim=1) - pos.sum(dim=1)).mean()
    l_t2i = (torch.logsumexp(logits, dim=0) - pos.reshape(-1)).mean()
    return (l_i2t + l_t2i) / (2 * k)


def gemm_floor(image: torch.Tensor, text2d: torch.Tensor) -> None:
    """The three GEMMs of a fused forward + backward, nothing else (the speed floor), with torch's GEMM."""
    z = image @ text2d.T
    _ = z @ text2d
    _ = z.T @ image


def blas_gemm_floor(image: torch.Tensor, text2d: torch.Tensor) -> Optional[Callable[[], None]]:
    """The same three GEMMs through the blas backend's chosen CPU BLAS (buffers allocated once), or None."""
    if image.device.type != "cpu" or image.dtype not in (torch.float32, torch.float64):
        return None
    try:
        from ccr_fast.backends.blas import _gemm
        _gemm.ensure()
    except (ImportError, RuntimeError):
        return None
    img, txt = image.contiguous(), text2d.contiguous()
    z = torch.empty(img.shape[0], txt.shape[0], dtype=img.dtype)
    dx, dy = torch.empty_like(img), torch.empty_like(txt)

    def run():
        _gemm.mm(img, txt, trans_b=True, out=z)
        _gemm.mm(z, txt, out=dx)
        _gemm.mm(z, img, trans_a=True, out=dy)

    return run


_COMPILED: Dict[tuple, Callable] = {}


def compiled_loss(k: int, dtype: torch.dtype, shape: Tuple[int, ...] = (), mode: Optional[str] = None) -> Callable:
    """``torch.compile(dynamic=False, mode=mode)`` of the eager loss, one per (loss, dtype, shape, mode)."""
    key = (k == 1, dtype, tuple(shape), mode)
    if key not in _COMPILED:
        fn = eager_clip_loss if k == 1 else eager_one_to_k_loss
        _COMPILED[key] = torch.compile(fn, dynamic=False, **({"mode": mode} if mode else {}))
    return _COMPILED[key]


def open_clip_loss_class():
    """open_clip's ``ClipLoss`` class: imported, else loaded from ``open_clip/loss.py`` by path (its package import
    needs torchvision); raises ImportError when neither works."""
    try:
        from open_clip.loss import ClipLoss  # type: ignore[import-not-found]

        return ClipLoss
    except Exception:
        import importlib.util
        import os

        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("open_clip is not installed") from None
        path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
        mod_spec = importlib.util.spec_from_file_location("_ccr_bench_open_clip_loss", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod.ClipLoss


# ---------------------------------------------------------------------------------------------- providers
def _fwd_bwd(loss_fn: Callable[[], torch.Tensor], leaves: Tuple[torch.Tensor, ...]) -> Callable[[], float]:
    def run():
        for t in leaves:
            t.grad = None
        loss = loss_fn()
        loss.backward()
        return loss

    return run


def build_providers(k: int, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, device: torch.device,
                    *, backends: List[str], with_compile: bool) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    """Providers of one configuration; ``text`` is ``[B, K, d]`` (K=1 runs the CLIP loss on ``text[:, 0]``).

    Returns:
        (name -> callable running forward + backward once, name -> reason for each provider left out).
    """
    b, _, d = text.shape
    text2d = text.reshape(b * k, d) if k > 1 else text[:, 0]
    leaves = (image, text, scale)
    providers: Dict[str, Callable] = {}
    skipped: Dict[str, str] = {}

    from ccr_fast import losses

    fn_name = "clip_loss" if k == 1 else "one_to_k_loss"
    api = getattr(losses, fn_name, None)
    for backend in backends:
        if api is None:
            skipped[f"ccr_fast[{backend}]"] = f"ccr_fast.losses.{fn_name} is not available yet"
            continue
        if k == 1:
            providers[f"ccr_fast[{backend}]"] = _fwd_bwd(
                lambda be=backend: api(image, text[:, 0], scale, backend=be), leaves)
        else:
            providers[f"ccr_fast[{backend}]"] = _fwd_bwd(lambda be=backend: api(image, text, scale, backend=be),
                                                          leaves)

    eager = eager_clip_loss if k == 1 else eager_one_to_k_loss
    eager_args = (lambda: (image, text[:, 0], scale)) if k == 1 else (lambda: (image, text, scale))
    providers["torch_eager"] = _fwd_bwd(lambda: eager(*eager_args()), leaves)

    if with_compile and device.type == "cpu" and image.dtype == torch.float16:
        skipped["torch_compile"] = "CPU: fp32 and bf16 only (each dtype is a new ~40 s compile on a 2-core machine)"
    elif with_compile:
        shape = (tuple(image.shape), tuple(text.shape))
        compiled = compiled_loss(k, image.dtype, shape)
        providers["torch_compile"] = _fwd_bwd(lambda: compiled(*eager_args()), leaves)
        tuned = compiled_loss(k, image.dtype, shape, "max-autotune-no-cudagraphs")
        providers["torch_compile_max_autotune"] = _fwd_bwd(lambda: tuned(*eager_args()), leaves)
    else:
        skipped["torch_compile"] = "left out (--quick or --no-compile: compile time dominates small runs)"

    if k != 1:
        skipped["open_clip"] = "open_clip has no 1-to-K loss"
    else:
        try:
            oc = open_clip_loss_class()()
            providers["open_clip"] = _fwd_bwd(lambda: oc(image, text[:, 0], scale), leaves)
        except Exception as exc:
            skipped["open_clip"] = f"open_clip not importable ({type(exc).__name__}: {exc})"

    reason = None
    if k != 1:
        reason = "Inf-CL has no 1-to-K loss"
    elif device.type != "cuda":
        reason = "Inf-CL runs on CUDA only"
    elif d % 256:
        reason = f"Inf-CL needs d % 256 == 0, got d={d}"
    if reason is None:
        try:
            from inf_cl import cal_inf_loss  # type: ignore[import-not-found]

            def inf_cl_loss():
                t = text[:, 0]
                return (cal_inf_loss(image, t, scale=scale) + cal_inf_loss(t, image, scale=scale)) / 2

            providers["inf_cl"] = _fwd_bwd(inf_cl_loss, leaves)
        except Exception as exc:
            reason = f"inf_cl not importable ({type(exc).__name__}: {exc})"
    if reason is not None:
        skipped["inf_cl"] = reason

    floor = blas_gemm_floor(image.detach(), text2d.detach())
    providers["gemm_floor"] = floor or (lambda: gemm_floor(image.detach(), text2d.detach()))
    return providers, skipped


# ---------------------------------------------------------------------------------------------------- sweeps
def sweep_configs(device: torch.device, quick: bool, dtypes: Optional[List[str]] = None) -> List[dict]:
    """The (B, K, d, dtype) points measured; ``dtypes`` restricts the dtype sweep."""
    cfg = []

    def add(bs, ks, ds, dts):
        for dt in dts:
            if dtypes and dt not in dtypes:
                continue
            for k in ks:
                for d in ds:
                    for b in bs:
                        point = {"B": b, "K": k, "d": d, "dtype": dt}
                        if point not in cfg:
                            cfg.append(point)

    if quick:
        add([128, 256], [1, 4], [256], ["fp32"])
    elif device.type == "cuda":
        add([1024, 4096, 16384, 65536, 262144], [1, 4], [512], ["fp32", "bf16", "fp16"])
        add([16384], [1, 4], [256, 768], ["bf16"])
        add([16384], [2, 6, 10], [512], ["bf16"])
    else:
        add([256, 512, 1024, 2048, 4096, 8192], [1], [256], ["fp32"])
        add([256, 512, 1024, 2048, 4096], [4], [256], ["fp32"])
        add([1024], [1, 4], [512, 768], ["fp32"])
        add([1024], [2, 6, 10], [256], ["fp32"])
        add([1024], [1, 4], [256], ["bf16", "fp16"])
    return cfg


def run(device: torch.device, *, quick: bool, backends: List[str], with_compile: bool, dtypes=None,
        reps: int = 5, max_seconds: float = 8.0, max_call_seconds: float = 10.0, log=print) -> dict:
    """Run the loss sweep; returns the suite's JSON payload (records + skipped providers)."""
    gen = torch.Generator().manual_seed(0)
    records, skipped_all = [], {}
    oom_series = set()  # (provider, K, d, dtype) that ran out of memory at a smaller B
    slow_series = set()  # ... or took longer than max_call_seconds per call (B grows, so would the next)
    for cfg in sweep_configs(device, quick, dtypes):
        b, k, d, dt = cfg["B"], cfg["K"], cfg["d"], cfg["dtype"]
        dtype = DTYPES[dt]
        image = harness.random_unit((b, d), dtype, device, gen).requires_grad_(True)
        text = harness.random_unit((b, k, d), dtype, device, gen).requires_grad_(True)
        scale = torch.tensor(LOGIT_SCALE, dtype=torch.float32, device=device, requires_grad=True)
        providers, skipped = build_providers(k, image, text, scale, device, backends=backends,
                                             with_compile=with_compile)
        for name, why in skipped.items():
            if name not in skipped_all:
                skipped_all[name] = why
                log(f"  [losses] skip {name}: {why}")
        series = lambda name: (name, k, d, dt)  # noqa: E731
        for name in [n for n in providers if series(n) in oom_series or series(n) in slow_series]:
            providers.pop(name)
            why = "oom" if series(name) in oom_series else "skipped"
            records.append({**_base(cfg), "provider": name, "status": why, "time_ms": None, "mem_bytes": None,
                            "note": "OOM at a smaller B" if why == "oom" else
                            f"slower than {max_call_seconds:g} s per call at a smaller B (time budget)"})
        check = _check_values(providers, k, image, text, scale)
        res = harness.measure(providers, device, warmup=1, reps=2 if quick else reps, min_reps=2 if quick else 3,
                              max_seconds=max_seconds, mem_reps=1 if quick else 2)
        flops = 6.0 * b * (b * k) * d
        for name, r in res.items():
            rec = {**_base(cfg), "provider": name, **r, "flops": flops}
            if r["time_ms"]:
                rec["tflops"] = flops / (r["time_ms"]["median"] * 1e-3) / 1e12
            if name in check:
                rec["loss_abs_diff_vs_eager"] = check[name]
            if r["status"] == "oom":
                oom_series.add(series(name))
            if r["time_ms"] and r["time_ms"]["median"] > 1e3 * max_call_seconds and name != "torch_eager":
                slow_series.add(series(name))  # the baseline always runs (the ratios need it)
            records.append(rec)
        _log_point(log, cfg, res)
        del image, text, scale, providers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"suite": "losses", "mode": "fwd+bwd", "records": add_ratios(records, ("op", "B", "K", "d", "dtype")),
            "skipped": skipped_all}


def _base(cfg: dict) -> dict:
    return {"op": "clip" if cfg["K"] == 1 else "one_to_k", **cfg}


def _check_values(providers, k, image, text, scale) -> Dict[str, float]:
    """|loss - eager loss| of each loss provider (a sanity check recorded next to the times)."""
    with torch.no_grad():
        ref = (eager_clip_loss(image, text[:, 0], scale) if k == 1 else eager_one_to_k_loss(image, text, scale))
    out = {}
    for name, fn in providers.items():
        if name in ("gemm_floor", "torch_eager"):
            continue
        try:
            val = fn()
            out[name] = float((val.detach().float() - ref).abs())
        except Exception:  # measured (and reported) by harness.measure
            pass
    return out


def add_ratios(records: List[dict], keys: Tuple[str, ...]) -> List[dict]:
    """Add ``speedup_vs_eager`` (t_eager / t) and ``mem_ratio_vs_eager`` (m / m_eager) per configuration."""
    base = {}
    for r in records:
        if r["provider"] == "torch_eager" and r.get("time_ms"):
            base[tuple(r[k] for k in keys)] = r
    for r in records:
        e = base.get(tuple(r[k] for k in keys))
        if e is None or not r.get("time_ms"):
            continue
        r["speedup_vs_eager"] = e["time_ms"]["median"] / r["time_ms"]["median"]
        if r.get("mem_bytes") and e.get("mem_bytes") and e["mem_bytes"]["median"] > 0:
            r["mem_ratio_vs_eager"] = r["mem_bytes"]["median"] / e["mem_bytes"]["median"]
    return records


def _log_point(log, cfg, res):
    parts = []
    for name, r in res.items():
        if r["time_ms"]:
            mem = r["mem_bytes"]["median"] / 2**20 if r["mem_bytes"] else float("nan")
            parts.append(f"{name}={r['time_ms']['median']:.2f}ms/{mem:.1f}MiB")
        else:
            parts.append(f"{name}={r['status']}")
    log(f"  [losses] B={cfg['B']} K={cfg['K']} d={cfg['d']} {cfg['dtype']}: " + " ".join(parts))
