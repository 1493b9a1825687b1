"""Time every CUDA-backend kernel (ccr_fast.ops._cuda) against torch eager / torch.compile on one GPU.

Usage (on a GPU machine, after building with CCR_FAST_CUDA=ON):
    python benchmarks/gpu_cuda_kernels.py --out benchmarks/results/gpu_cuda_kernels.json [--quick]

For each case it first checks the kernel against a float64 reference on a small shape (so one run verifies and
measures), then times with CUDA events via triton.testing.do_bench when available (median, 20-80% band) or a
plain event loop. Reports ms, effective TFLOP/s (2*M*N*d per similarity GEMM, times the GEMM count of the
mode) and the torch.mm floor of the same shape. Results are written as JSON, never asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def bench(fn, warmup=3, rep=20):
    try:
        from triton.testing import do_bench

        q = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return {"ms": q[0], "p20": q[1], "p80": q[2]}
    except Exception:  # no triton on this machine: event loop
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(rep):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        times.sort()
        return {"ms": times[len(times) // 2], "p20": times[len(times) // 5], "p80": times[(4 * len(times)) // 5]}


def unit(n, d, dtype):
    x = torch.randn(n, d, device="cuda", dtype=torch.float32)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def check_all():
    """Quick correctness pass on small odd shapes (relative error vs float64 / exact indices)."""
    from ccr_fast.ops import _cuda

    out = {}
    x, y = unit(97, 33, torch.bfloat16), unit(130, 33, torch.bfloat16)
    sc = torch.tensor(20.0, device="cuda")
    lr, lc, pr, pc = _cuda.contrastive_forward(x, y, sc, 0, 1, 0, 2, True)
    Z = 20.0 * x.double() @ y.double().T
    out["contrastive_forward_rel_err"] = float((lr.double() - Z.logsumexp(1)).norm() / Z.logsumexp(1).norm())
    q = torch.randint(-2, 3, (50, 9), device="cuda").float()
    g = torch.randint(-2, 3, (700, 9), device="cuda").float()
    s, i = _cuda.topk(q, g, 10, num_splits=3)
    ref = torch.sort((q.double() @ g.double().T).cpu(), dim=1, descending=True, stable=True)
    out["topk_exact"] = bool(torch.equal(i.cpu(), ref.indices[:, :10]))
    t = torch.randint(0, 700, (50,), device="cuda")
    r = _cuda.target_ranks(q, g, t)
    S = (q.double() @ g.double().T).cpu()
    st = S.gather(1, t.cpu()[:, None])
    rr = ((S > st) | ((S == st) & (torch.arange(700)[None] < t.cpu()[:, None]))).sum(1)
    out["ranks_exact"] = bool(torch.equal(r.cpu(), rr))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_cuda_kernels.json")
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device; nothing to time", file=sys.stderr)
        return 1
    from ccr_fast.ops import _cuda

    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = []
    checks = check_all()
    print("checks:", checks)
    sizes = [(4096, 256)] if args.quick else [(4096, 256), (16384, 256), (16384, 512), (32768, 256)]
    for dtype in (torch.bfloat16, torch.float32):
        for B, d in sizes:
            x, y = unit(B, d, dtype), unit(B, d, dtype)
            sc = torch.tensor(50.0, device="cuda")
            gemm = 2.0 * B * B * d
            floor = bench(lambda: x @ y.T)
            fwd = bench(lambda: _cuda.contrastive_forward(x, y, sc, 0, 1, 0, 1, True))
            lse = _cuda.contrastive_forward(x, y, sc, 0, 1, 0, 1, True)
            rc = torch.full((B,), 0.5 / B, device="cuda")
            bwd = bench(lambda: _cuda.contrastive_backward(x, y, sc, lse[0], lse[1], rc, rc, 1.0 / B, 0, 1, 0, 1))

            def torch_clip():
                xr = x.detach().requires_grad_()
                yr = y.detach().requires_grad_()
                Z = (sc * xr @ yr.T).float()
                lab = torch.arange(B, device="cuda")
                loss = 0.5 * (torch.nn.functional.cross_entropy(Z, lab) + torch.nn.functional.cross_entropy(Z.T, lab))
                loss.backward()

            tref = bench(torch_clip)
            rows.append({"op": "contrastive_clip", "dtype": str(dtype), "B": B, "d": d,
                         "cuda_fwd": fwd, "cuda_bwd": bwd, "torch_eager_fwd_bwd": tref, "mm_floor": floor,
                         "cuda_fwd_tflops": 2 * gemm / fwd["ms"] / 1e9, "cuda_bwd_tflops": 4 * gemm / bwd["ms"] / 1e9,
                         "mm_tflops": gemm / floor["ms"] / 1e9})
            a, b = x, y
            tf = bench(lambda: _cuda.triplet_forward(a, b, 0.2, True))
            rows.append({"op": "triplet_max_violation_fwd", "dtype": str(dtype), "B": B, "d": d, "cuda": tf,
                         "torch_eager": bench(lambda: (b @ a.T).float().fill_diagonal_(-1e4).max(1)),
                         "mm_floor": floor})
    rsizes = [(1000, 100000, 256)] if args.quick else [(1000, 100000, 256), (5000, 1000000, 256)]
    for dtype in (torch.bfloat16, torch.float32):
        for Q, G, d in rsizes:
            q, g = unit(Q, d, dtype), unit(G, d, dtype)
            floor = bench(lambda: q @ g.T) if Q * G <= 10**9 else None
            for k in (1, 10, 100):
                rows.append({"op": "topk", "dtype": str(dtype), "Q": Q, "G": G, "d": d, "k": k,
                             "cuda": bench(lambda: _cuda.topk(q, g, k)),
                             "torch_mm_topk": (bench(lambda: (q @ g.T).topk(k, dim=1)) if floor else None),
                             "mm_floor": floor})
            t = torch.randint(0, G, (Q,), device="cuda")
            rows.append({"op": "target_ranks", "dtype": str(dtype), "Q": Q, "G": G, "d": d,
                         "cuda": bench(lambda: _cuda.target_ranks(q, g, t)), "mm_floor": floor})
            if floor:
                rows.append({"op": "similarity", "dtype": str(dtype), "Q": Q, "G": G, "d": d,
                             "cuda": bench(lambda: _cuda.similarity(q, g)), "mm_floor": floor})
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "checks": checks, "rows": rows}, f, indent=1)
    for r in rows:
        main_t = r.get("cuda", r.get("cuda_fwd"))
        print(f"{r['op']:28s} {r['dtype']:15s} {main_t['ms']:9.3f} ms   floor "
              f"{(r['mm_floor'] or {}).get('ms', float('nan')):9.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
