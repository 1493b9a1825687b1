"""Search-index benchmark: exact search of a saved, memory-mapped ``ccr_fast.Index`` against faiss, at G = 1M.

Synthetic gallery: G unit vectors of width d (default 1,000,000 × 128, float32, 512 MiB): 2,000 standard-normal
cluster centres plus ``noise`` (default 1.5) times standard-normal noise, normalised — a weak cluster structure, so
neighbours spread over several inverted lists; Q queries are fresh draws from the same mixture.
The gallery is written once into an index folder (``Index.save`` / appends) and then, in this one process,
interleaved repetitions (``ccr_fast.bench.harness.measure``) time:

* ``ccr_fast mmap`` — ``Index.load(folder, mmap=True).search(q, k)``: rows stay on disk, searched in 64 MiB blocks
  through the fused top-K, candidates merged by float64 scores (exact);
* ``ccr_fast in-memory`` — ``Index.load(folder, mmap=False)``: the same search over rows held in memory;
* ``faiss IndexFlatIP`` — exact inner-product search at its best flat setting (all threads, one batched call);
* ``faiss IVF nprobe=p`` — ``Index.to_faiss("ivf")`` (``IndexIVFFlat``, inner product, ``nlist`` lists trained on a
  sample), approximate; recall@k against the exact answer.

Reported per engine: queries/s (median of the interleaved repetitions), the peak extra resident memory of one
search call (harness: VmHWM reset), the resident memory the engine holds after it is built (VmRSS growth), the
build time, and recall@k against ``ccr_fast``'s exact result (IDs agree as sets of the top k).

Output: ``benchmarks/results/index-cpu.json``; ``benchmarks/RESULTS.md`` is regenerated from every JSON there
(section rendered by :func:`ccr_fast.bench.report.index_section`). Usage:
``python benchmarks/bench_index.py [--dir /tmp/ccr_index] [--G 1000000] [--d 128] [--Q 256] [--k 10]
[--nlist 1024] [--nprobe 8 32 128] [--reps 3]``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
try:
    import ccr_fast  # noqa: F401
except ImportError:  # a source checkout without `pip install .`: use the package next to this folder
    sys.path.insert(0, str(HERE.parent))


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def write_gallery(folder: Path, G: int, d: int, noise: float, seed: int = 0) -> dict:
    """Write the synthetic index folder (skipped when it already holds G rows of width d)."""
    from ccr_fast import Index

    meta = folder / "index.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("count") == G and m.get("dim") == d and m.get("kind") == f"synthetic noise={noise}":
            return {"written_seconds": None}
    t0 = time.time()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, d)).astype(np.float32)  # the first draw: queries() redraws the same
    Index(d, kind=f"synthetic noise={noise}").save(folder)
    ix = Index.load(folder)
    step = 1 << 16
    for s in range(0, G, step):
        n = min(step, G - s)
        x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ix.add(x)
    return {"written_seconds": time.time() - t0}


def queries(Q: int, d: int, noise: float, seed: int = 0) -> torch.Tensor:
    """Q fresh draws from the gallery's distribution (the same cluster centres, new noise): their neighbours are
    spread over several clusters, as real queries' are."""
    centres = np.random.default_rng(seed).standard_normal((2000, d)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    q = centres[rng.integers(0, len(centres), Q)] + noise * rng.standard_normal((Q, d)).astype(np.float32)
    return torch.from_numpy((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, exact)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/ccr_index")
    ap.add_argument("--G", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--Q", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--noise", type=float, default=1.5, help="noise around the cluster centres (per dimension)")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--train-sample", type=int, default=65536, help="IVF k-means training rows")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "index-cpu.json"))
    args = ap.parse_args(argv)

    import faiss

    from ccr_fast import Index
    from ccr_fast.bench import harness
    from ccr_fast.bench.report import write_results_md

    harness._pin_malloc()  # freed large buffers leave the RSS, so RSS growth measures what an engine holds
    load_before = harness.load_average()
    folder = Path(args.dir) / f"G{args.G}-d{args.d}"
    folder.mkdir(parents=True, exist_ok=True)
    wrote = write_gallery(folder, args.G, args.d, args.noise)
    q = queries(args.Q, args.d, args.noise)
    qn = q.numpy()
    cpu = torch.device("cpu")
    engines, builds = {}, {}

    def build(name, fn):
        gc.collect()
        r0, t0 = _rss(), time.perf_counter()
        obj = fn()
        builds[name] = {"build_seconds": time.perf_counter() - t0, "resident_bytes": max(0, _rss() - r0)}
        return obj

    mm = build("ccr_fast mmap", lambda: Index.load(folder, mmap=True))
    mem = build("ccr_fast in-memory", lambda: Index.load(folder, mmap=False))
    flat = build("faiss IndexFlatIP", lambda: mem.to_faiss("flat"))
    exact = mm.search(q, args.k)[1].numpy()

    def ivf_build():
        rng = np.random.default_rng(2)
        x = mem.embeddings().numpy()
        ix = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.d), args.d, args.nlist, faiss.METRIC_INNER_PRODUCT)
        ix.train(x[np.sort(rng.choice(len(x), min(args.train_sample, len(x)), replace=False))])
        ix.add(x)
        return ix

    ivf = build("faiss IVF", ivf_build)
    engines["ccr_fast mmap"] = lambda: mm.search(q, args.k)
    engines["ccr_fast in-memory"] = lambda: mem.search(q, args.k)
    engines["faiss IndexFlatIP"] = lambda: flat.search(qn, args.k)
    recalls = {"ccr_fast mmap": 1.0, "ccr_fast in-memory": recall(mem.search(q, args.k)[1].numpy(), exact),
               "faiss IndexFlatIP": recall(flat.search(qn, args.k)[1], exact)}

    def ivf_search(p):
        def f():
            ivf.nprobe = p
            return ivf.search(qn, args.k)
        return f

    for p in args.nprobe:
        name = f"faiss IVF nprobe={p}"
        engines[name] = ivf_search(p)
        recalls[name] = recall(engines[name]()[1], exact)
        builds[name] = builds["faiss IVF"]
    res = harness.measure(engines, cpu, warmup=1, reps=args.reps, min_reps=args.reps, max_seconds=0.0,
                          memory=True, mem_reps=1)
    rows = []
    for name, r in res.items():
        t = (r.get("time_ms") or {}).get("median")
        rows.append({"engine": name, "status": r["status"], "time_ms": r.get("time_ms"),
                     "queries_per_s": (args.Q / (t / 1000.0)) if t else None,
                     "peak_extra_bytes": (r.get("mem_bytes") or {}).get("median"),
                     "resident_bytes": builds[name]["resident_bytes"], "build_seconds": builds[name]["build_seconds"],
                     f"recall_at_{args.k}": recalls[name], "error": r.get("error")})
    payload = {"suite": "index", "command": "python benchmarks/bench_index.py " + " ".join(sys.argv[1:]),
               "G": args.G, "d": args.d, "Q": args.Q, "k": args.k, "nlist": args.nlist, "noise": args.noise,
               "train_sample": args.train_sample, "gallery_bytes": args.G * args.d * 4,
               "block_rows": mm.block_rows, "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
               "gallery_written_seconds": wrote["written_seconds"], "load_avg_before": load_before,
               "load_avg_after": harness.load_average(), "environment": harness.environment(cpu), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    write_results_md(os.path.dirname(args.out), str(HERE / "RESULTS.md"))
    for r in rows:
        print(json.dumps({k: r[k] for k in ("engine", "queries_per_s", "peak_extra_bytes", "resident_bytes",
                                             f"recall_at_{args.k}")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
