"""Command line: ``python -m ccr_fast train|eval|bench ...`` (also the ``ccr-fast`` console script).

* ``train [--config FILE] [key=value ...]`` — dotted overrides (``optim.lr=1e-4 epochs=3 languages=[en,de]``);
  with neither a config nor overrides it trains the built-in default on the shipped data.
* ``eval CHECKPOINT [key=value ...]`` — test metrics of a checkpoint (or run) folder, as JSON.
* ``bench ...`` — forwards the rest of the arguments to ``ccr_fast.bench.main(argv)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def parse_overrides(pairs: List[str]) -> dict:
    """``["a.b=1", "c=[x,y]"]`` → ``{"a.b": 1, "c": ["x", "y"]}``; raises ValueError on a missing ``=``."""
    from .config import parse_value

    out = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"override must look like key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccr_fast", description="ccr_fast training / evaluation / benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a method (default: the built-in CCR^k run on the shipped data)")
    t.add_argument("--config", default=None, help="YAML/JSON config file")
    t.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys for sections)")
    e = sub.add_parser("eval", help="evaluate a checkpoint folder")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*", help="key=value config overrides")
    b = sub.add_parser("bench", help="run the benchmarks (ccr_fast.bench)")
    b.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # pass everything through untouched
        try:
            from . import bench
        except ImportError as exc:
            print(f"error: the benchmark module ccr_fast.bench is not available ({exc})", file=sys.stderr)
            return 2
        if not hasattr(bench, "main"):
            print("error: ccr_fast.bench has no main(argv)", file=sys.stderr)
            return 2
        return int(bench.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    overrides = parse_overrides(args.overrides)
    if args.command == "train":
        from .train import train

        result = train(args.config, **overrides)
        print(json.dumps({"best_checkpoint": result.best_checkpoint, "run_dir": result.run_dir}))
        return 0
    from .evaluate import evaluate, format_metrics

    metrics = evaluate(args.checkpoint, **overrides)
    print(format_metrics(metrics))
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
