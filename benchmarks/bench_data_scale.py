"""Data-layer scale benchmark: train on a synthetic NRCCR-layout collection far larger than the shipped data.

Writes (once, reused) a collection in the NRCCR release layout: N_ITEMS = 200,000 images with 2048-d float16
features in ``FeatureData/resnet_152/train-resnet_152-avgpool.npy`` (819 MB), 5 English captions per image
(1,000,000 caption lines) in ``TextData/<coll>train_enc.caption.txt`` plus the MT and back-translation files
(3,000,000 lines in all), and small val/test splits. Then trains NRCCR for 200 steps (batch 128, the tiny random
text encoder kept frozen as in the built-in default, DataLoader with 2 workers) through
``ccr_fast.train(data=<folder>)`` and reports:

* load time of the training split (compact caption tables, memory-mapped features);
* steady-state samples/s (steps 50..200, from the per-step timestamps in ``metrics.jsonl``);
* memory during the ``ccr_fast.train`` call, sampled every 0.25 s from ``/proc``: peak RSS of the main process,
  peak RSS of a DataLoader worker (forked: most of it is the parent's pages, shared copy-on-write), and the peak of
  the summed PSS (proportional set size: shared pages split between the processes) of main + workers, which is
  the memory the run really holds; next to the feature file size;
* the growth of RSS/PSS per step over the steady-state steps (least squares over the samples): flat when nothing
  accumulates per step (the text-state cache is bounded, :mod:`ccr_fast.training.state_cache`).

Output: ``benchmarks/results/data_scale-cpu.json``; ``benchmarks/RESULTS.md`` is regenerated from every JSON in
that folder (the section is rendered by :func:`ccr_fast.bench.report.data_scale_section`). Usage:
``python benchmarks/bench_data_scale.py [--dir /tmp/ccr_scale] [--items 200000] [--captions-per-item 5]
[--steps 200] [--workers 2]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORDS = ("dog cat man woman child red blue green runs sits jumps street beach snow park ball car bike water grass "
         "house tree white black young old two three small large playing walking standing wearing shirt hat").split()
WORDS_DE = ("hund katze mann frau kind rot blau gruen laeuft sitzt springt strasse strand schnee park ball auto rad "
            "wasser gras haus baum weiss schwarz jung alt zwei drei klein gross spielt geht steht traegt hemd hut").split()


def _caption(rng, words, n):
    return " ".join(words[i] for i in rng.integers(0, len(words), n))


def write_collection(root: Path, n_items: int, per_item: int, dim: int, seed: int = 0) -> dict:
    """Write the collection (skipped when ``root/done.json`` matches the sizes); returns its manifest."""
    manifest = {"items": n_items, "captions_per_item": per_item, "dim": dim, "seed": seed}
    done = root / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("items") == n_items and \
            json.loads(done.read_text()).get("captions_per_item") == per_item:
        return json.loads(done.read_text())
    t0 = time.time()
    rng = np.random.default_rng(seed)
    text, feat = root / "TextData", root / "FeatureData" / "resnet_152"
    text.mkdir(parents=True, exist_ok=True)
    feat.mkdir(parents=True, exist_ok=True)
    splits = {"train": n_items, "val": 500, "test": 500}
    offset = 0
    for split, n in splits.items():
        ids = [f"img{offset + i:07d}" for i in range(n)]
        offset += n
        (root / "FeatureData" / {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id_2016.txt"}[split]) \
            .write_text("\n".join(ids) + "\n")
        name = {"train": "train-resnet_152-avgpool.npy", "val": "val-resnet_152-avgpool.npy",
                "test": "test_2016_flickr-resnet_152-avgpool.npy"}[split]
        arr = np.lib.format.open_memmap(feat / name, mode="w+", dtype=np.float16, shape=(n, dim))
        for s in range(0, n, 10000):
            arr[s: s + 10000] = rng.standard_normal((min(10000, n - s), dim), dtype=np.float32)
        arr.flush()
        del arr
        if split == "train":
            files = {"scaletrain_enc": ("enc", WORDS), "scaletrain_google_enc2de": ("enc2de", WORDS_DE),
                     "scaletrain_google_enc2de2enc": ("enc2de2enc", WORDS)}
            for fname, (tag, words) in files.items():
                with open(text / f"{fname}.caption.txt", "w") as f:
                    for vid in ids:
                        f.write("".join(f"{vid}#{tag}#{k} a {_caption(rng, words, int(rng.integers(6, 14)))}\n"
                                        for k in range(per_item)))
        else:
            suffix = "_task1" if split == "val" else "_2016_task1"
            with open(text / f"scale{split}_de{suffix}.caption.txt".replace("scaletest_de_2016_task1",
                                                                             "scaletest_de_2016_task1"), "w") as f:
                for vid in ids:
                    f.write(f"{vid}#de#0 ein {_caption(rng, WORDS_DE, 8)}\n")
    manifest["write_seconds"] = time.time() - t0
    manifest["feature_bytes"] = (feat / "train-resnet_152-avgpool.npy").stat().st_size
    manifest["caption_bytes"] = sum(p.stat().st_size for p in text.glob("scaletrain*"))
    done.write_text(json.dumps(manifest))
    return manifest


class MemoryMonitor:
    """Samples VmRSS and PSS (``/proc/<pid>/smaps_rollup``) of this process and its children."""

    def __init__(self, every: float = 0.25):
        import threading

        self.every, self.stop = every, False
        self.peak_main = self.peak_child = self.peak_pss = 0
        self.series = []  # (time, main RSS, summed worker RSS, summed PSS)
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _field(path, name):
        try:
            for line in open(path):
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _children(self, pid):
        out = []
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                out += [int(x) for x in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except OSError:
            pass
        return out

    def _loop(self):
        me = os.getpid()
        while not self.stop:
            kids = self._children(me)
            main = self._field(f"/proc/{me}/status", "VmRSS")
            child = [self._field(f"/proc/{k}/status", "VmRSS") for k in kids]
            self.peak_main = max(self.peak_main, main)
            self.peak_child = max([self.peak_child] + child)
            pss = sum(self._field(f"/proc/{p}/smaps_rollup", "Pss") for p in [me] + kids)
            self.peak_pss = max(self.peak_pss, pss)
            self.series.append((time.time(), main, sum(child), pss))
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def run(args) -> dict:
    import torch

    import ccr_fast
    from ccr_fast.config import load_config
    from ccr_fast.data.collections import load_data
    from ccr_fast.methods._tiny import TINY

    root = Path(args.dir) / "scale"
    manifest = write_collection(root, args.items, args.captions_per_item, 2048)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    overrides = dict(TINY, method="nrccr", data=str(root), languages=["en", "de"], batch_size=128, epochs=1,
                     max_steps=args.steps, num_workers=args.workers, output_dir=str(Path(args.dir) / "runs"),
                     **{"model.visual_dim": None, "files.coll": "scale", "eval.every_epoch": False,
                        "optim.schedule": "constant", "nrccr.w_adv": 0.0})
    cfg = load_config(None, **overrides)
    notes = _Notes()
    logger = logging.getLogger("ccr_fast.training")
    logger.addHandler(notes)
    logger.setLevel(logging.INFO)
    t1 = time.time()
    with MemoryMonitor() as mon:
        res = ccr_fast.train(None, **overrides)
    logger.removeHandler(notes)
    wall = time.time() - t1
    t0 = time.time()
    train_data = load_data(cfg, "train")
    load_s = time.time() - t0
    n_captions = int(train_data.captions["en"].counts().sum())
    tables = list(train_data.captions.values()) + list(train_data.translations.values())
    caption_table_bytes = sum(t.nbytes for t in tables)
    del train_data
    recs = [json.loads(line) for line in open(Path(res.run_dir) / "metrics.jsonl") if '"total"' in line]
    t = {r["step"]: r["time"] for r in recs}
    lo = min(50, args.steps // 4)
    sps = (args.steps - lo) * 128 / (t[args.steps] - t[lo])
    slopes = rss_slopes(mon.series, t[lo], t[args.steps], (args.steps - lo) / (t[args.steps] - t[lo]))
    return {
        "suite": "data_scale", "machine": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg_before": args.load_before, "load_avg_after": os.getloadavg(), "torch": torch.__version__,
        "ccr_fast": ccr_fast.__version__, "collection": manifest, "train_captions": n_captions,
        "train_split_load_seconds": load_s, "caption_table_bytes": caption_table_bytes,
        "steps": args.steps, "batch_size": 128, "workers": args.workers,
        "steady_samples_per_s": sps, "steady_from_step": lo, "train_call_seconds": wall,
        "peak_rss_main_bytes": mon.peak_main, "peak_rss_largest_worker_bytes": mon.peak_child,
        "peak_pss_total_bytes": mon.peak_pss,
        "hwm_main_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "feature_file_bytes": manifest["feature_bytes"], "test_sumr": res.metrics.get("sumr"),
        "rss_slope_bytes_per_step": slopes, "command": args.command, "ccr_fast_path": ccr_fast.__file__,
        "git_commit": _git_commit(), "text_state_cache": "; ".join(notes.lines),
    }


def rss_slopes(series, t0: float, t1: float, steps_per_s: float) -> dict:
    """Least-squares growth of main RSS, summed worker RSS and summed PSS over [t0, t1], in bytes per step."""
    pts = np.array([p for p in series if t0 <= p[0] <= t1], dtype=np.float64)
    if len(pts) < 3:
        return {}
    names = ("main_rss", "workers_rss", "pss_total")
    return {n: float(np.polyfit(pts[:, 0], pts[:, i + 1], 1)[0] / steps_per_s) for i, n in enumerate(names)}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class _Notes(logging.Handler):
    """Keeps the training loop's log lines about the text-state cache."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        if "cache" in record.getMessage():
            self.lines.append(record.getMessage())


def report(r: dict) -> str:
    from ccr_fast.bench.report import data_scale_section

    return "\n".join(["# Data-layer scale benchmark (`benchmarks/bench_data_scale.py`)", ""]
                     + data_scale_section(r)) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default="/tmp/ccr_scale")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--captions-per-item", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "data_scale-cpu.json"))
    p.add_argument("--results-md", default=str(HERE / "RESULTS.md"),
                   help="regenerated from every JSON next to --out (empty: not written)")
    args = p.parse_args(argv)
    args.load_before = os.getloadavg()
    args.command = "python benchmarks/bench_data_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    r = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    if args.results_md:
        from ccr_fast.bench.report import write_results_md

        write_results_md(str(out.parent), args.results_md)
    print(report(r))
    return 0


if __name__ == "__main__":
    try:
        import ccr_fast  # noqa: F401
    except ImportError:  # a source checkout without `pip install .`
        sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
