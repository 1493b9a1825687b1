"""Package candidates for the built-in default: train ``ccr_fast.train(**overrides)`` per candidate (run mode) and
collect the run folders into one JSON (``--collect``): overrides, validation history, best validation mR, test
metrics, steps, wall time.

    PYTHONPATH=. OMP_NUM_THREADS=2 python tools/exp_package.py run CANDIDATES.json --out runs/pk
    python tools/exp_package.py collect runs/pk --json docs/selection/package_candidates_round2.json

CANDIDATES.json: ``[[tag, {override: value, ...}], ...]`` (on top of the built-in default's DEFAULT_RUN of the
code version that runs them; each record stores the resolved config).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LANGS = ["en", "de", "fr", "cs"]


def run(cands_path: str, out: str) -> None:
    import ccr_fast

    for tag, ov in json.loads(Path(cands_path).read_text()):
        t0 = time.time()
        r = ccr_fast.train(output_dir=str(Path(out) / tag), progress=False, **ov)
        (Path(r.run_dir) / "candidate.json").write_text(json.dumps({"tag": tag, "overrides": ov,
                                                                    "wall_seconds": time.time() - t0}))
        print(tag, "test mean SumR", r.metrics["sumr"], flush=True)


def collect(root: str, out_json: str) -> None:
    recs = []
    for run_dir in sorted(Path(root).glob("*/*/")):
        cand, test = run_dir / "candidate.json", run_dir / "test_metrics.json"
        if not test.is_file():
            continue
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        val = [{"epoch": r["epoch"], "val_mr": r["val_mr"]} for r in rows if "val_mr" in r]
        steps = max((r.get("step", 0) for r in rows), default=0)
        times = [r["time"] for r in rows if "time" in r]
        cfg = json.loads((run_dir / "config.json").read_text())
        t = json.loads(test.read_text())
        t = t.get("metrics", t)
        meta = json.loads(cand.read_text()) if cand.is_file() else {"tag": run_dir.parent.name}
        recs.append({**meta, "run": str(run_dir), "config": cfg, "steps": steps, "val_history": val,
                     "best_val_mr": max(v["val_mr"] for v in val) if val else None,
                     "test": {lang: t[lang]["sumr"] for lang in LANGS if lang in t},
                     "test_mean_sumr": sum(t[lang]["sumr"] for lang in LANGS) / 4,
                     "train_span_seconds": (max(times) - min(times)) if times else None})
    Path(out_json).write_text(json.dumps(recs, indent=1))
    print(f"{len(recs)} runs -> {out_json}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["run", "collect"])
    ap.add_argument("path")
    ap.add_argument("--out", default="runs/pk")
    ap.add_argument("--json", default="docs/selection/package_candidates_round2.json")
    a = ap.parse_args()
    run(a.path, a.out) if a.mode == "run" else collect(a.path, a.json)
    sys.exit(0)
