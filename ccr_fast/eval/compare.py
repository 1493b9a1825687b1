"""``python -m ccr_fast compare``: the built-in default against the closed-form ``linear`` baseline, from one JSON.

Trains each row with :func:`ccr_fast.train` in one process (the frozen encoder's token states are computed once
and shared by every run), for each seed, and writes every record (per-language test metrics, validation history,
run time, optimiser steps, the exact overrides) to ``--out``; ``docs/results.md``'s section between the
``<!-- compare:begin -->`` / ``<!-- compare:end -->`` markers is then regenerated from that JSON alone
(``--from-json`` rewrites it without training).

Rows: ``default`` = ``ccr_fast.train()`` (no arguments); ``linear`` = ``ccr_fast.train(method="linear")`` (the
same built-in data and encoder; the ridge λ is selected on validation); ``default_task1`` = the default trained
on one caption per language (``data="shipped"``); ``ccrk_previous`` = the default before issue 13 (CCR^k with
a linear text head, 1-to-K over the task 1 captions, MITM, 6 epochs).

Usage: ``OMP_NUM_THREADS=2 python -m ccr_fast compare [--rows linear,default] [--seeds 0,1,2]
[--out docs/results_default.json] [--doc docs/results.md] [--from-json]``; ``python -m ccr_fast compare --claims
[args]`` runs ``tools/run_claims.py [args]`` (the claim tests of docs/results.md; source checkout only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List

LANGS = ["en", "de", "fr", "cs"]
ROWS: Dict[str, tuple] = {
    "linear": ("linear: ridge map into the frozen e5 space (λ on val; closed form, one run)", {"method": "linear"}),
    "linear_qb": ("linear + query-bank normalisation (λ, β on val)", {"method": "linear", "linear.querybank": True}),
    "default": ("built-in default (`python -m ccr_fast train`)", {}),
    "default_plain": ("built-in default ranked by plain cosine (no query bank)", {"ccrk.querybank": False}),
    "default_task1": ("built-in default, task 1 captions only", {"data": "shipped"}),
    "ccrk_previous": ("previous default (CCR^k linear text head + MITM, task 1 captions, 6 epochs)",
                      {"data": "shipped", "epochs": 6, "batch_size": 64, "lr": 5e-4, "model.visual_encoder": "mlp",
                       "model.visual_hidden": 512, "model.embed_dim": 256, "ccrk.text_proj": "linear",
                       "ccrk.vision_proj": "linear", "ccrk.caption_groups": "min", "ccrk.id_aware": False,
                       "ccrk.w_itm": 1.0, "ccrk.temp_init": 0.07, "eval.metric": "mr"}),
}
CLOSED_FORM = {"linear", "linear_qb"}  # no randomness: trained for the first seed only
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def run_row(key: str, seed: int, out_dir: str) -> dict:
    """Train one row (one seed) and return its record."""
    from ..training import train

    over = dict(ROWS[key][1], seed=seed, output_dir=os.path.join(out_dir, key), progress=False)
    t0, c0 = time.time(), time.process_time()
    res = train(None, **over)
    steps = [json.loads(line).get("step", 0) for line in open(Path(res.run_dir) / "metrics.jsonl")
             if '"step"' in line]
    m = res.metrics
    return {"key": key, "seed": seed, "overrides": ROWS[key][1], "wall_seconds": time.time() - t0,
            "cpu_seconds": time.process_time() - c0, "steps": max(steps) if steps else 0,
            "history": res.history, "test": {lang: m[lang] for lang in LANGS if lang in m},
            "test_mean": {k: v for k, v in m.items() if isinstance(v, float)}}


def _stats(vals: List[float]) -> str:
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return f"{mean:.1f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.1f} ± {sd:.1f}"


def _load(load) -> str:
    return " / ".join(f"{x:.2f}" for x in load) if load else "?"


def render(saved: dict) -> str:
    """The markdown section (between the markers) from the saved JSON."""
    recs = saved["records"]
    by: Dict[str, list] = {}
    for r in recs:
        by.setdefault(r["key"], []).append(r)
    lines = ["| row | seeds | " + " | ".join(f"{lang} SumR" for lang in LANGS) + " | mean SumR | mean R@1 t2v/v2t "
             "| MRV | steps | wall s | CPU s |", "|" + " --- |" * 12]
    for key, rs in by.items():
        cells = [_stats([r["test"][lang]["sumr"] for r in rs]) for lang in LANGS]
        cells.append("**" + _stats([r["test_mean"]["sumr"] for r in rs]) + "**")
        cells.append(f"{_stats([r['test_mean']['t2v_r1'] for r in rs])} / {_stats([r['test_mean']['v2t_r1'] for r in rs])}")
        cells.append(_stats([r["test_mean"]["mrv"] for r in rs]) if all("mrv" in r["test_mean"] for r in rs) else "–")
        cells.append(str(round(sum(r["steps"] for r in rs) / len(rs))))
        cells.append(f"{sum(r['wall_seconds'] for r in rs) / len(rs):.0f}")
        cells.append(f"{sum(r['cpu_seconds'] for r in rs) / len(rs):.0f}")
        lines.append(f"| {ROWS[key][0] if key in ROWS else key} | {','.join(str(r['seed']) for r in rs)} | "
                     + " | ".join(cells) + " |")
    out = [BEGIN, "", "\n".join(lines), ""]
    if "default" in by and "linear" in by:
        d = [r["test_mean"]["sumr"] for r in by["default"]]
        li = [r["test_mean"]["sumr"] for r in by["linear"]]
        ratio = (sum(d) / len(d)) / (sum(li) / len(li))
        lo = min(d) / (sum(li) / len(li))
        out.append(f"Default / linear mean test SumR: **{ratio:.3f}** ({(ratio - 1) * 100:+.1f} %; the issue's bar "
                   f"is +10 %: {'met' if ratio >= 1.1 else 'NOT met'}); the weakest default seed: {lo:.3f} "
                   f"({(lo - 1) * 100:+.1f} %).")
        out.append("")
    for key, rs in by.items():
        hist = rs[0]["history"]
        if hist:
            out.append(f"Validation history of `{key}` (seed {rs[0]['seed']}): "
                       + json.dumps([{k: (round(v, 2) if isinstance(v, float) else v) for k, v in h.items()
                                      if k != "time"} for h in hist]))
            out.append("")
    out.append(f"Written by `{saved.get('command', 'python -m ccr_fast compare')}` on {saved.get('date', '?')}; "
               f"load average at the start: {_load(saved.get('load'))}. Wall seconds are on a shared 2-core machine; "
               "CPU seconds are the process's own. The first row of a process also pays the one-off frozen-encoder "
               "pass over all captions, which later rows reuse.")
    out += ["", END]
    return "\n".join(out)


SEL_BEGIN, SEL_END = "<!-- selection:begin -->", "<!-- selection:end -->"


def render_selection(path: Path) -> str:
    """Table of the recipe-selection runs (``tools/exp_recipes.py --log``): validation picks, test only reported."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [SEL_BEGIN, "", "| kind | captions | text side | visual map | loss | batch | lr | seed | λ / best epoch "
             "| val mean SumR | test mean SumR |", "|" + " --- |" * 11]
    for r in rows:
        if r["what"] == "ridge":
            lines.append(f"| ridge | {r['mode']} | {'centred' if r['center'] else 'raw'} e5 | linear (closed form) "
                         f"| squared error | – | – | – | λ={r['lambda']:g} | {r['val_mean_sumr']:.1f} "
                         f"| {r['test']['mean']:.1f} |")
        else:
            c = r["config"]
            head = {"identity": "e5 (identity)", "linear": "Linear(384→256)"}.get(c["text_head"], c["text_head"])
            vis = {"linear": "Linear(2048→d)", "mlp": "MLP 2048→1024→d", "linear2": "Linear·Linear"}[c["vis"]]
            loss = {"1toK": "1-to-K InfoNCE, 1 caption/lang sampled", "allpos": "InfoNCE, all captions positive",
                    }.get(c["loss"], c["loss"])
            lines.append(f"| contrastive | {c['mode']} | {head} | {vis} | {loss} | {c['bs']} | {c['lr']:g} | "
                         f"{c['seed']} | ep {r['best_epoch']}/{c['epochs']} | {r['val_mean_sumr']:.1f} | "
                         f"{r['test']['mean']:.1f} |")
    lines += ["", SEL_END]
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, section: str) -> str:
    if begin in text and end in text:
        return text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    return text.rstrip() + "\n\n" + section + "\n"


def write_doc(saved: dict, doc: Path) -> None:
    text = doc.read_text() if doc.exists() else "# Results on the shipped real data\n"
    text = _replace(text, BEGIN, END, render(saved))
    sel = doc.parent / "selection" / "recipes.jsonl"
    if sel.is_file():
        text = _replace(text, SEL_BEGIN, SEL_END, render_selection(sel))
    doc.write_text(text)


def run_claims(argv) -> int:
    """``--claims [args]``: the claim tests of ``tools/run_claims.py`` (source checkout only), same arguments."""
    import runpy
    import sys

    tool = _repo_root() / "tools" / "run_claims.py"
    if not tool.is_file():
        raise FileNotFoundError(f"--claims: {tool} not found (the claim tests run from a source checkout)")
    old = sys.argv
    sys.argv = [str(tool)] + list(argv)
    try:
        runpy.run_path(str(tool), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


def main(argv=None) -> int:
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "--claims":
        return run_claims(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m ccr_fast compare", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="linear,default", help=f"comma-separated rows of {sorted(ROWS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--out", default=str(_repo_root() / "docs" / "results_default.json"))
    ap.add_argument("--doc", default=str(_repo_root() / "docs" / "results.md"))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--from-json", action="store_true", help="only regenerate the doc section from --out")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        write_doc(json.loads(out.read_text()), Path(args.doc))
        return 0
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise ValueError(f"--rows: unknown {bad}; valid: {sorted(ROWS)}")
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    saved = {"command": "python -m ccr_fast compare " + " ".join(argv if argv is not None else []),
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "load": os.getloadavg() if hasattr(os, "getloadavg") else None, "threads": args.threads,
             "records": []}
    with tempfile.TemporaryDirectory() as tmp:
        for key in rows:
            for seed in (seeds[:1] if key in CLOSED_FORM else seeds):  # a closed form gives one answer
                rec = run_row(key, seed, tmp)
                saved["records"].append(rec)
                print(f"{key} seed {seed}: mean test SumR {rec['test_mean']['sumr']:.2f} "
                      + " ".join(f"{lang} {rec['test'][lang]['sumr']:.1f}" for lang in LANGS)
                      + f" ({rec['steps']} steps, {rec['wall_seconds']:.0f} s wall, {rec['cpu_seconds']:.0f} s CPU)",
                      flush=True)
                out.write_text(json.dumps(saved, indent=1))
    if not args.no_doc:
        write_doc(saved, Path(args.doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
