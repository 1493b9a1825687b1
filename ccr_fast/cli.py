"""Command line: ``python -m ccr_fast train|eval|extract|index|search|bench|compare|gpu-check ...`` (also the
``ccr-fast`` console script).

* ``train [--config NAME|FILE] [key=value ...]`` — dotted overrides (``optim.lr=1e-4 epochs=3 languages=[en,de]``);
  with neither a config nor overrides it trains the built-in default on the shipped data.
* ``eval CHECKPOINT [key=value ...]`` — test metrics of a checkpoint (or run) folder, as JSON.
* ``extract VISUAL_ENCODER IMAGES OUT`` — vision-tower features of a folder / CSV of images as ``OUT`` (``.npy``) +
  ``.ids.txt`` (``ccr_fast.extract_features``; resumes after a kill).
* ``index CHECKPOINT (--features X.npy | --images FOLDER) --out FOLDER [--append]`` — a search index of a gallery
  (ids from ``X.ids.txt`` or the image file stems), batched, with a progress bar; prints a JSON summary.
* ``search INDEX "query" [--lang de] [--k 10] [--queries FILE]`` — one JSON line ``{"id", "score", "rank",
  "query"}`` per hit (rank 1 = best), ranked as ``eval`` ranks (:mod:`ccr_fast.inference`).
* ``bench ...`` — forwards the rest of the arguments to ``ccr_fast.bench.main(argv)``.
* ``compare ...`` — forwards to ``ccr_fast.experiments.compare.main(argv)`` (the method comparison / claim tests).
* ``gpu-check ...`` — forwards to ``ccr_fast.gpu_check.main(argv)`` (``--compile-only`` needs no GPU).

Configuration and data errors (``ValueError``, a missing file, a malformed YAML/JSON file) print one line
``error: ...`` and exit with code 2; ``--debug`` (anywhere on the line) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import List, Optional

# Subcommands whose arguments are handed, untouched, to ``module.main(argv)``.
FORWARDED = {
    "bench": "ccr_fast.bench",
    "compare": "ccr_fast.experiments.compare",
    "gpu-check": "ccr_fast.gpu_check",
}

# Exceptions that mean "the user's configuration or data is wrong", not "ccr_fast has a bug".
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def parse_overrides(pairs: List[str]) -> dict:
    """``["a.b=1", "c=[x,y]"]`` → ``{"a.b": 1, "c": ["x", "y"]}``; raises ValueError on a missing ``=``."""
    from .config import parse_value

    out = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"override must look like key=value, got {p!r}")
        k, v = p.split("=", 1)
        if not k.strip():
            raise ValueError(f"override must look like key=value, got {p!r} (empty key)")
        out[k.strip()] = parse_value(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser = argparse.ArgumentParser(prog="ccr_fast", parents=[common],
                                     description="ccr_fast training / evaluation / benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    from .config import config_help

    t = sub.add_parser("train", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="train a method (default: the built-in run on the shipped data)", epilog=config_help())
    t.add_argument("--config", default=None,
                   help="a shipped config name (e.g. nrccr_multi30k_de; see ccr_fast/configs/) or a YAML/JSON file")
    t.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys for sections)")
    e = sub.add_parser("eval", parents=[common], help="evaluate a checkpoint folder")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*", help="key=value config overrides")
    x = sub.add_parser("extract", parents=[common], help="write vision-tower features (.npy + .ids.txt) of images")
    from .inference.extract import add_arguments as _extract_arguments

    _extract_arguments(x)
    from .inference.retriever import add_index_arguments, add_search_arguments

    add_index_arguments(sub.add_parser("index", parents=[common],
                                       help="encode a gallery with a trained checkpoint into a search index folder"))
    add_search_arguments(sub.add_parser("search", parents=[common],
                                        help="search an index: one JSON line {id, score, rank} per hit"))
    for name, module in FORWARDED.items():
        f = sub.add_parser(name, help=f"forwarded to {module}.main (try `{name} --help`)")
        f.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its type when the message is empty or a bare key, newlines folded."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, KeyError) or not msg:
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return msg


def _forward(command: str, argv: List[str]) -> int:
    module_name = FORWARDED[command]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"error: `{command}` is not available in this install ({module_name}: {exc})", file=sys.stderr)
        return 2
    if not hasattr(module, "main"):
        print(f"error: {module_name} has no main(argv)", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


def _run(args) -> int:
    if args.command == "extract":
        from .inference.extract import run as run_extract

        print(run_extract(args))
        return 0
    if args.command in ("index", "search"):
        from .inference import retriever

        if args.command == "index":
            print(json.dumps(retriever.run_index(args)))
        else:
            for hit in retriever.run_search(args):
                print(json.dumps(hit, ensure_ascii=False))
        return 0
    overrides = parse_overrides(args.overrides)
    if args.command == "train":
        from .training import train

        result = train(args.config, **overrides)
        if result is not None:
            print(json.dumps({"best_checkpoint": result.best_checkpoint, "run_dir": result.run_dir}))
        return 0
    from .eval import format_metrics
    from .training import evaluate

    metrics = evaluate(args.checkpoint, **overrides)
    if metrics is not None:
        print(format_metrics(metrics))
        print(json.dumps(metrics))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # Forwarded subcommands get their arguments untouched (``--debug`` is theirs to interpret there).
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] in FORWARDED:
        return _forward(argv[first], argv[first + 1:])
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # malformed YAML / JSON config files surface as their parser's errors
        if debug or type(exc).__module__.split(".")[0] not in ("yaml", "json"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
