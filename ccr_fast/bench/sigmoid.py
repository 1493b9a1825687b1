"""Sigmoid (SigLIP) loss benchmark: forward + backward time and peak extra memory, side by side in one process.

Providers (the same math: ``−Σ logsigmoid(label · (s · I Tᵀ + b)) / B``, gradients for both features, the scale
and the bias, fp32 inputs):

* ``torch_eager`` — :func:`open_clip_formula` (open_clip's ``SigLipLoss`` math with materialised logits and
  labels), eager;
* ``torch_compile`` / ``torch_compile_max_autotune`` — ``torch.compile`` of that function, compiled per shape
  (``dynamic=False``, as a training loop with a fixed batch compiles it), warm; the ratio's baseline is the faster;
* ``open_clip`` — ``open_clip.loss.SigLipLoss`` loaded from its file, when installed;
* ``ccr_fast[cpu]``, ``ccr_fast[blas]``, ``ccr_fast[auto]`` — :func:`ccr_fast.losses.sigmoid_loss`;
* ``gemm_floor`` — the three GEMMs of forward + backward through the blas backend's GEMM.

``python -m ccr_fast.bench.sigmoid [--sizes 4096,8192] [--d 256] [--out FILE]`` writes one JSON in the format of
``benchmarks/side_by_side.py`` (rendered by ``ccr_fast.bench.report``); :func:`sigmoid_point` is the piece the
side-by-side script calls.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from . import harness


def open_clip_formula(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                      bias: torch.Tensor) -> torch.Tensor:
    """open_clip ``SigLipLoss`` (world size 1): dense logits ``s · I Tᵀ + b``, labels ``2·eye − 1``, summed
    ``−logsigmoid`` over the B×B matrix divided by B."""
    logits = scale * image @ text.T + bias
    n = image.shape[0]
    labels = 2 * torch.eye(n, device=image.device, dtype=image.dtype) - torch.ones(n, n, device=image.device,
                                                                                   dtype=image.dtype)
    return -F.logsigmoid(labels * logits).sum() / n


def open_clip_siglip() -> Optional[torch.nn.Module]:
    """open_clip's ``SigLipLoss`` loaded from its file (``import open_clip`` needs torchvision), or None."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
    try:
        mod_spec = importlib.util.spec_from_file_location("_open_clip_loss_sigmoid", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod.SigLipLoss()
    except Exception:  # pragma: no cover - depends on the environment
        return None


def sigmoid_point(run_point: Callable[[str, Dict[str, Callable], dict], None], n: int, *, d: int = 256,
                  gen: Optional[torch.Generator] = None) -> None:
    """Build, warm up and hand to ``run_point(name, providers, extra)`` the providers of one fp32 size ``n``."""
    from ..backends.blas import _gemm
    from ..losses import sigmoid_loss

    dev = torch.device("cpu")
    gen = gen or torch.Generator().manual_seed(0)
    image = harness.random_unit((n, d), torch.float32, dev, gen).requires_grad_(True)
    text = harness.random_unit((n, d), torch.float32, dev, gen).requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    leaves = (image, text, scale, bias)
    torch._dynamo.reset()
    comp = torch.compile(open_clip_formula, dynamic=False)
    comp_at = torch.compile(open_clip_formula, dynamic=False, mode="max-autotune-no-cudagraphs")
    oc = open_clip_siglip()

    def fb(fn):
        def run():
            for t in leaves:
                t.grad = None
            loss = fn()
            loss.backward()
            return loss
        return run

    img, txt = image.detach(), text.detach()
    zbuf, dx, dy = torch.empty(n, n), torch.empty(n, d), torch.empty(n, d)

    def floor():
        _gemm.mm(img, txt, trans_b=True, out=zbuf)
        _gemm.mm(zbuf, txt, out=dx)
        _gemm.mm(zbuf, img, trans_a=True, out=dy)

    providers = {
        "torch_eager": fb(lambda: open_clip_formula(*leaves)),
        "torch_compile": fb(lambda: comp(*leaves)),
        "torch_compile_max_autotune": fb(lambda: comp_at(*leaves)),
    }
    if oc is not None:
        providers["open_clip"] = fb(lambda: oc(*leaves))
    for backend in ("cpu", "blas", "auto"):
        providers[f"ccr_fast[{backend}]"] = fb(lambda backend=backend: sigmoid_loss(*leaves, backend=backend))
    providers["gemm_floor"] = floor
    name = f"sigmoid fwd+bwd fp32 N={n}"
    for pname, p in list(providers.items()):  # compile / autotune / first use outside the timing
        try:
            p()
            p()
        except Exception as exc:  # a baseline that fails is reported, not fatal
            print(f"{name}: {pname} failed in warm-up: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            del providers[pname]
    run_point(name, providers, {"B": n, "K": 1, "d": d, "dtype": "float32"})


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:  # pragma: no cover
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="sigmoid (SigLIP) loss fwd+bwd, side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", default="4096,8192")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "sigmoid-cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    env = harness.environment(dev)
    # the side-by-side payload format, so ccr_fast.bench.report renders it like benchmarks/side_by_side.py's JSON
    payload = {"suite": "side_by_side", "env": env, "threads": args.threads, "uptime_before": _uptime(),
               "command": "python -m ccr_fast.bench.sigmoid " + " ".join(argv if argv is not None else []),
               "blas": env.get("blas"), "records": []}
    print(payload["uptime_before"], flush=True)

    def run_point(name, providers, extra):
        res = harness.measure(providers, dev, warmup=1, reps=args.reps, min_reps=3, max_seconds=120.0, mem_reps=1)
        for prov, r in res.items():
            payload["records"].append({"workload": name, "provider": prov, **extra, **r})
        ok = {p: r["time_ms"]["median"] for p, r in res.items() if r["time_ms"]}
        base = min(ok.get("torch_compile", float("inf")), ok.get("torch_compile_max_autotune", float("inf")))
        line = " ".join(f"{p}={t:.0f}ms" for p, t in ok.items())
        ratio = base / ok["ccr_fast[auto]"] if "ccr_fast[auto]" in ok else float("nan")
        print(f"{name}: {line}  auto vs best compile: {ratio:.2f}x  [{_uptime()}]", flush=True)

    gen = torch.Generator().manual_seed(0)
    for n in (int(v) for v in args.sizes.split(",")):
        sigmoid_point(run_point, n, d=args.d, gen=gen)
    payload["uptime_after"] = _uptime()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(payload, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
