"""A JSON record of a training run's wall time and result, for figures quoted in README / docs.

    python tools/run_record.py --train [key=value ...] [--out docs/default_run.json]
        trains the built-in default (``ccr_fast.train()``, or with the overrides) and records it;
    python tools/run_record.py --run RUN_DIR [--out FILE]
        records a finished run folder (e.g. the one ``ccr-fast train`` printed).

The record: the command, the run folder, the git commit of the source tree (when there is one), the run's
``timing.json`` (wall time from the ``train`` call to the end of testing, load average at the start and the end,
CPUs, threads, device, versions; written by every run, see ``ccr_fast/training/loop.py``) and its test SumR (mean and
per language) and MRV from ``test_metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's ccr_fast when run from the source tree without an install
    sys.path.insert(0, str(ROOT))


def _commit():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+uncommitted changes" if dirty else "")) if out.returncode == 0 else None


def record(run_dir, command: str) -> dict:
    """The record of a finished run folder; ValueError naming the missing file when it did not finish."""
    run_dir = Path(run_dir)
    files = {}
    for name in ("timing.json", "test_metrics.json", "config.json"):
        p = run_dir / name
        if not p.is_file():
            raise ValueError(f"run_dir: {p} is missing (not a finished ccr_fast run folder)")
        files[name] = json.loads(p.read_text())
    metrics, cfg = files["test_metrics.json"], files["config.json"]
    langs = list(metrics.get("languages", []))
    return {"command": command, "run_dir": str(run_dir), "commit": _commit(), "method": cfg.get("method"),
            "data": cfg.get("data"), "timing": files["timing.json"],
            "test": {"sumr": metrics.get("sumr"), "mrv": metrics.get("mrv"),
                     "sumr_per_language": {lang: metrics[lang]["sumr"] for lang in langs if lang in metrics}}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--train", action="store_true", help="train the built-in default (plus overrides) first")
    src.add_argument("--run", help="a finished run folder")
    ap.add_argument("--out", default=None, help="write the record here (default: print it)")
    ap.add_argument("--output-dir", default="runs", help="--train: where the run folder goes")
    ap.add_argument("overrides", nargs="*", help="--train: key=value config overrides")
    args = ap.parse_args(argv)
    command = "python tools/run_record.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.train:
        import ccr_fast
        from ccr_fast.cli import parse_overrides

        # config None: the built-in default run, with the overrides on top (as `ccr-fast train key=value`)
        over = parse_overrides(args.overrides)
        over.setdefault("output_dir", args.output_dir)  # output_dir=... as an override works like --output-dir
        run_dir = ccr_fast.train(None, **over).run_dir
    else:
        if args.overrides:
            ap.error("overrides go with --train only")
        run_dir = args.run
    text = json.dumps(record(run_dir, command), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
