"""Side-by-side CPU measurement of the loss and retrieval workloads in one process (d=256, interleaved repeats, medians).

    python benchmarks/side_by_side.py [--threads 2] [--reps 5] [--out benchmarks/results/side_by_side-cpu.json]
                                      [--only clip,one_to_k,sigmoid,topk]
    python benchmarks/side_by_side.py --merge RUN1.json RUN2.json --out benchmarks/results/side_by_side-cpu.json

``--merge`` combines runs made at different times (``ccr_fast.bench.report.merge_side_by_side``): every row keeps
its run's index, command, environment and machine load; an interrupted run's ``.json.partial`` is accepted.

Workloads and providers:

* CLIP fwd+bwd N=4096, 8192, bf16 inputs and fp32 inputs; 1-to-K K=4 fwd+bwd B=2048, bf16 and fp32. Providers:
  torch eager (materialised logits, in the input dtype), torch.compile of the same function **compiled per shape**
  (``dynamic=False``, warm: compile and autotuning outside the timing) in the default mode and in
  ``mode="max-autotune-no-cudagraphs"`` (the report takes the faster of the two as the baseline), open_clip's
  ``ClipLoss`` (loaded from its file; CLIP only), ``ccr_fast[cpu]`` and ``ccr_fast[blas] recompute``
  (``CCR_FAST_BLAS_WORKSPACE_MB=32``: no keep-Z) for fp32, ``ccr_fast[blas]``, ``ccr_fast[auto]``, and the GEMM
  floor: the 3 GEMMs of the same shapes (fp32: the chosen BLAS; bf16: ``torch.mm`` in bf16, oneDNN).
* sigmoid (SigLIP) fwd+bwd fp32, N=4096, 8192 (``ccr_fast.bench.sigmoid.sigmoid_point``): open_clip's formula
  eager (``torch_eager``) and under torch.compile per shape (both modes), open_clip's ``SigLipLoss``,
  ``ccr_fast[cpu|blas|auto]`` and the GEMM floor.
* top-10 / top-100, Q=1k/10k, G=100k: torch chunked mm + topk, faiss-cpu ``IndexFlatIP`` (index built outside the
  timing), ``ccr_fast[cpu]``, ``ccr_fast[blas]``, ``ccr_fast[auto]`` and the GEMM floor (Q×G scores through the
  chosen BLAS, in 1k-row chunks).

The machine load (``uptime``) is recorded before and after; peak extra memory is the harness's RSS growth.
Writes JSON and prints a markdown table (also written next to the JSON as ``.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--only", default="clip,one_to_k,sigmoid,topk")
    ap.add_argument("--sizes", default="4096,8192", help="CLIP N values (1-to-K uses B = the first / 2)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "side_by_side-cpu.json"))
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="measure nothing: merge these side-by-side JSON files (a later file's workloads replace an "
                         "earlier file's; each row keeps its run's environment and load) into --out (+ .md)")
    args = ap.parse_args(argv)
    if args.merge:
        from ccr_fast.bench.report import merge_side_by_side, side_by_side_table

        merged = merge_side_by_side(args.merge)
        merged["command"] = "python benchmarks/side_by_side.py " + " ".join(argv if argv is not None else sys.argv[1:])
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(merged, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(side_by_side_table(merged))
        print(f"merged {len(merged['records'])} rows from {len(args.merge)} runs into {args.out}")
        return 0
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import ccr_fast
    from ccr_fast import losses, retrieval
    from ccr_fast.backends.blas import _gemm
    from ccr_fast.bench import harness
    from ccr_fast.bench.losses import eager_clip_loss, eager_one_to_k_loss
    from ccr_fast.bench.report import side_by_side_table
    from ccr_fast.bench.retrieval import torch_chunked_topk

    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    only = set(args.only.split(","))
    sizes = [int(v) for v in args.sizes.split(",")]
    env = harness.environment(dev)
    payload = {"suite": "side_by_side", "env": env, "threads": args.threads, "uptime_before": _uptime(),
               "command": "python benchmarks/side_by_side.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "blas": ccr_fast.backends()["blas"]["detail"], "records": []}
    print(payload["uptime_before"], flush=True)
    print(payload["blas"], flush=True)

    def run_point(name, providers, extra):
        res = harness.measure(providers, dev, warmup=1, reps=args.reps, min_reps=3, max_seconds=args.max_seconds,
                              mem_reps=1)
        up = _uptime()  # the load right after this workload (each row keeps it; merged files come from several runs)
        for prov, r in res.items():
            rec = {"workload": name, "provider": prov, **extra, **r, "uptime_after_point": up}
            payload["records"].append(rec)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".partial", "w") as f:  # survives an interrupted run
            json.dump(payload, f, indent=1)
        line = " ".join(f"{p}={r['time_ms']['median']:.0f}ms" if r["time_ms"] else f"{p}={r['status']}"
                        for p, r in res.items())
        print(f"{name}: {line}   [{up}]", flush=True)

    def with_budget(mb, fn):
        def run():
            old = os.environ.get("CCR_FAST_BLAS_WORKSPACE_MB")
            os.environ["CCR_FAST_BLAS_WORKSPACE_MB"] = str(mb)
            try:
                return fn()
            finally:
                if old is None:
                    del os.environ["CCR_FAST_BLAS_WORKSPACE_MB"]
                else:
                    os.environ["CCR_FAST_BLAS_WORKSPACE_MB"] = old
        return run

    def open_clip_loss():
        """open_clip's ClipLoss, loaded from its file (``import open_clip`` needs torchvision), or None."""
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
        try:
            mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
            mod = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(mod)
            return mod.ClipLoss()
        except Exception as exc:  # pragma: no cover - depends on the environment
            print(f"open_clip ClipLoss not loadable: {exc}")
            return None

    oc_loss = open_clip_loss()

    def loss_point(name, k, b, dtype):
        d = 256
        image = harness.random_unit((b, d), dtype, dev, gen).requires_grad_(True)
        text = harness.random_unit((b, k, d), dtype, dev, gen).requires_grad_(True)
        scale = torch.tensor(1 / 0.07, requires_grad=True)
        leaves = (image, text, scale)
        t2 = text[:, 0] if k == 1 else text
        api = losses.clip_loss if k == 1 else losses.one_to_k_loss
        eager = eager_clip_loss if k == 1 else eager_one_to_k_loss
        # Compiled per shape, static, as a training loop with a fixed batch compiles it; warm-up (compile and
        # autotuning) happens outside the timing. Both the default mode and max-autotune-no-cudagraphs are timed;
        # the report's baseline is the faster of the two.
        torch._dynamo.reset()
        comp = torch.compile(eager, dynamic=False)
        comp_at = torch.compile(eager, dynamic=False, mode="max-autotune-no-cudagraphs")

        def fb(fn):
            def run():
                for t in leaves:
                    t.grad = None
                loss = fn()
                loss.backward()
                return loss
            return run

        text2d = text.detach().reshape(b * k, d)
        img = image.detach()
        if dtype == torch.float32:
            zbuf = torch.empty(b, b * k)
            dx, dy = torch.empty(b, d), torch.empty(b * k, d)

            def floor():
                _gemm.mm(img, text2d, trans_b=True, out=zbuf)
                _gemm.mm(zbuf, text2d, out=dx)
                _gemm.mm(zbuf, img, trans_a=True, out=dy)
        else:
            def floor():  # the three GEMMs in the input dtype through torch.mm (oneDNN; bf16 out)
                z = img @ text2d.T
                _ = z @ text2d
                _ = z.T @ img

        providers = {
            "torch_eager": fb(lambda: eager(image, t2, scale)),
            "torch_compile": fb(lambda: comp(image, t2, scale)),
            "torch_compile_max_autotune": fb(lambda: comp_at(image, t2, scale)),
        }
        if k == 1 and oc_loss is not None:
            providers["open_clip"] = fb(lambda: oc_loss(image, t2, scale))
        if dtype == torch.float32:
            providers["ccr_fast[cpu]"] = fb(lambda: api(image, t2, scale, backend="cpu"))
            providers["ccr_fast[blas] recompute"] = with_budget(32, fb(lambda: api(image, t2, scale, backend="blas")))
        providers["ccr_fast[blas]"] = fb(lambda: api(image, t2, scale, backend="blas"))
        providers["ccr_fast[auto]"] = fb(lambda: api(image, t2, scale))
        providers["gemm_floor"] = floor
        for pname, p in list(providers.items()):  # compile / autotune / first use outside the timing
            try:
                p()
                p()
            except Exception as exc:  # a baseline that fails is reported, not fatal
                print(f"{name}: {pname} failed in warm-up: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                del providers[pname]
        run_point(name, providers, {"B": b, "K": k, "d": d, "dtype": str(dtype).replace("torch.", "")})

    if "clip" in only:
        for dtype in (torch.bfloat16, torch.float32):
            tag = "bf16" if dtype == torch.bfloat16 else "fp32"
            for n in sizes:
                loss_point(f"CLIP fwd+bwd {tag} N={n}", 1, n, dtype)
    if "one_to_k" in only:
        for dtype in (torch.bfloat16, torch.float32):
            tag = "bf16" if dtype == torch.bfloat16 else "fp32"
            loss_point(f"1-to-K K=4 fwd+bwd {tag} B={sizes[0] // 2}", 4, sizes[0] // 2, dtype)
    if "sigmoid" in only:  # SigLIP loss, fp32: providers in ccr_fast/bench/sigmoid.py
        from ccr_fast.bench.sigmoid import sigmoid_point

        for n in sizes:
            sigmoid_point(run_point, n, gen=gen)
    if "topk" in only:
        import numpy as np

        d, G = 256, 100_000
        g = harness.random_unit((G, d), torch.float32, dev, gen)
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
            index = faiss.IndexFlatIP(d)
            index.add(g.numpy())
        except ImportError as exc:
            index = None
            print(f"faiss not importable: {exc}")
        for Q, k in ((1000, 10), (10000, 10), (1000, 100)):
            q = harness.random_unit((Q, d), torch.float32, dev, gen)
            qn = np.ascontiguousarray(q.numpy())
            chunk = torch.empty(min(Q, 1000), G)

            def floor(q=q, chunk=chunk):
                for q0 in range(0, q.shape[0], chunk.shape[0]):
                    _gemm.mm(q[q0:q0 + chunk.shape[0]], g, trans_b=True, out=chunk)

            gb = g.bfloat16()
            qb = q.bfloat16()

            def floor_bf16(qb=qb, rows=chunk.shape[0]):  # torch.mm in bf16 (oneDNN, bf16 out): a bf16 GEMM rate
                for q0 in range(0, qb.shape[0], rows):
                    torch.mm(qb[q0:q0 + rows], gb.T)

            providers = {
                "torch_chunked": lambda q=q, k=k: torch_chunked_topk(q, g, k),
                "ccr_fast[cpu]": lambda q=q, k=k: retrieval.topk(q, g, k, backend="cpu"),
                "ccr_fast[blas]": lambda q=q, k=k: retrieval.topk(q, g, k, backend="blas"),
                "ccr_fast[auto]": lambda q=q, k=k: retrieval.topk(q, g, k),
                "gemm_floor": floor,
                "gemm_floor_bf16": floor_bf16,
            }
            if index is not None:
                providers["faiss_flat_ip"] = lambda qn=qn, k=k: index.search(qn, k)
            # exactness of the timed call, checked on 200 queries against the float64 order (ties -> lower index)
            sub = q[:200]
            ref = torch.sort(sub.double() @ g.double().T, dim=1, descending=True, stable=True)[1][:, :k]
            exact_ok = bool(torch.equal(retrieval.topk(sub, g, k)[1], ref))
            faiss_ok = bool(torch.equal(torch.from_numpy(index.search(qn[:200], k)[1]), ref)) if index is not None else None
            print(f"top-{k} Q={Q}: auto equals the float64 order on 200 queries: {exact_ok}; faiss: {faiss_ok}",
                  flush=True)
            del ref
            run_point(f"top-{k} Q={Q // 1000}k G=100k", providers,
                      {"Q": Q, "G": G, "k": k, "d": d, "auto_exact_vs_float64_200q": exact_ok,
                       "faiss_exact_vs_float64_200q": faiss_ok})
    payload["uptime_after"] = _uptime()
    print(payload["uptime_after"], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    if os.path.exists(args.out + ".partial"):
        os.remove(args.out + ".partial")
    md = side_by_side_table(payload)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
