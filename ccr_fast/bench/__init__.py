"""Benchmark suite of ccr_fast (``python -m ccr_fast bench``): loss kernels, retrieval, training throughput.

Each suite writes ``<out>/<suite>-<device>[-quick].json`` (environment + one record per configuration and
provider), PNG plots next to it, and ``RESULTS.md`` regenerated from every JSON in ``<out>``. Measurement method:
:mod:`ccr_fast.bench.harness`; providers and sweeps: :mod:`.losses`, :mod:`.retrieval`, :mod:`.training`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

SUITES = ("losses", "retrieval", "training")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ccr_fast bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few repetitions (< 60 s on a laptop CPU)")
    p.add_argument("--suite", nargs="+", choices=SUITES + ("all",), default=["all"], help="suites to run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", default="bench_results", help="directory for JSON, PNG and RESULTS.md")
    p.add_argument("--results-md", default=None, help="where to write RESULTS.md (default <out>/RESULTS.md)")
    p.add_argument("--report-only", action="store_true", help="only regenerate plots and RESULTS.md from <out>")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile provider")
    p.add_argument("--dtypes", default=None, help="comma list restricting the loss dtypes (fp32,bf16,fp16)")
    p.add_argument("--backends", default=None, help="comma list of ccr_fast backends (default: usable ones)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per provider at most")
    p.add_argument("--max-seconds", type=float, default=8.0, help="timing budget per configuration")
    p.add_argument("--max-call-seconds", type=float, default=5.0,
                   help="a provider slower than this per call is not run at the next larger B / G")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    return p


def _backends(device, requested: Optional[str], log) -> tuple[List[str], Dict[str, str]]:
    """ccr_fast backends to benchmark on ``device`` and the reasons the others are left out."""
    import ccr_fast

    info = ccr_fast.backends()
    wanted = requested.split(",") if requested else (["blas", "cpu", "torch"] if device.type == "cpu"
                                                     else ["blas", "cuda", "triton", "torch"])
    chosen, skipped = [], {}
    for name in ("blas", "cuda", "triton", "cpu", "torch"):
        label = f"ccr_fast[{name}]"
        if name not in wanted:
            if name == "triton" and device.type == "cpu":
                skipped[label] = "Triton on CPU is the interpreter only, not a performance backend"
            elif (name == "cpu") != (device.type == "cpu"):
                continue
            else:
                skipped[label] = "not requested (--backends)"
        elif not info[name]["usable"]:
            skipped[label] = f"not usable here: {info[name]['detail']}"
        else:
            chosen.append(name)
    for label, why in skipped.items():
        log(f"  skip {label}: {why}")
    return chosen, skipped


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark suite from command-line arguments; returns the process exit code."""
    args = _parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    md_path = args.results_md or os.path.join(args.out, "RESULTS.md")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.report_only:
        _report(args, md_path, log)
        return 0

    import torch

    from . import harness, losses, retrieval, training

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    suites = SUITES if "all" in args.suite else tuple(s for s in SUITES if s in args.suite)
    env = harness.environment(device)
    log(f"ccr_fast bench on {env['device_name']} ({device}), torch {env['torch']}, git {env['git_commit']}")
    chosen, skipped_backends = _backends(device, args.backends, log)
    dtypes = args.dtypes.split(",") if args.dtypes else None
    common = dict(quick=args.quick, backends=chosen, log=log, reps=args.reps, max_seconds=args.max_seconds)
    for suite in suites:
        t0 = time.perf_counter()
        log(f"[{suite}]")
        if suite == "losses":
            payload = losses.run(device, with_compile=not (args.quick or args.no_compile), dtypes=dtypes,
                                 max_call_seconds=args.max_call_seconds, **common)
        elif suite == "retrieval":
            payload = retrieval.run(device, max_call_seconds=args.max_call_seconds, **common)
        else:
            payload = training.run(device, **common)
        payload["skipped"] = {**skipped_backends, **payload["skipped"]}
        payload.update(env=env, mem_kind=harness.mem_kind(device), quick=args.quick,
                       command="python -m ccr_fast bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                       wall_seconds=round(time.perf_counter() - t0, 2), load_average_after=harness.load_average())
        name = f"{suite}-{device.type}{'-quick' if args.quick else ''}.json"
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(payload, f, indent=1)
        log(f"[{suite}] wrote {os.path.join(args.out, name)} ({payload['wall_seconds']} s)")
    _report(args, md_path, log)
    return 0


def _report(args, md_path: str, log) -> None:
    from . import report

    if not args.no_plots:
        import glob

        for path in sorted(glob.glob(os.path.join(args.out, "*.json"))):
            payload = report.load(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            for old in glob.glob(os.path.join(args.out, f"{stem}__*.png")):
                os.remove(old)
            report.plot(payload, args.out, stem)
    report.write_results_md(args.out, md_path)
    log(f"wrote {md_path}")


__all__ = ["main", "SUITES"]


def script_main(suite: str, bench_dir: str, argv: Optional[List[str]] = None) -> int:
    """Entry of the thin scripts in ``benchmarks/``: results go to ``<bench_dir>/results`` and regenerate
    ``<bench_dir>/RESULTS.md``; ``--quick`` runs go to ``<bench_dir>/results/tmp`` (not committed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    here = os.path.relpath(bench_dir)
    out = os.path.join(here, "results", "tmp") if "--quick" in args else os.path.join(here, "results")
    md = os.path.join(out, "RESULTS.md") if "--quick" in args else os.path.join(here, "RESULTS.md")
    return main(["--suite", suite, "--out", out, "--results-md", md, *args])
