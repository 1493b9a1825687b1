"""Method comparison on the shipped real data: short trainings, one table in docs/results.md (+ JSON).

Every row trains on the same shipped train split (700 images, en→de: en captions, their MT into de and its
back-translation; CCR^k: the human en+de captions), with the same frozen e5 text encoder (token states cached once
per process and shared by every run), seeds, epochs, batch size and optimiser, selects its best epoch on val de
SumR and is tested on the same de test set (200 images, one caption each; full-gallery ranking, ITC/cosine
scores). CCR^k rows are also tested on en+de (MRV); CCR^k 1-to-K additionally with the ITM re-rank of its top-8
ITC candidates. (en→de only, to keep the one-off text-encoder pass affordable on a shared 2-core CPU.)

Usage: ``OMP_NUM_THREADS=2 python tools/run_comparison.py [--epochs 3] [--seeds 0] [--only nrccr,ccrk_1toK]
[--out docs/results_comparison.json] [--no-doc]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ccr_fast.data import load_shipped, make_eval_sets  # noqa: E402
from ccr_fast.eval import evaluate_method  # noqa: E402
from ccr_fast.training import load_checkpoint_model, train  # noqa: E402
from ccr_fast.training.loop import share_text_state_cache  # noqa: E402

LANGS = ["en", "de"]
TARGETS = ["de"]
COMMON = {
    "data": "shipped", "languages": LANGS, "batch_size": 64, "lr": 5e-4, "model.trainable_layers": [],
    "model.cache_text_states": True, "model.visual_hidden": 512, "model.embed_dim": 256,
    "model.text_prefix": "query: ", "optim.schedule": "cosine", "optim.warmup": 0.05, "eval.metric": "sumr",
    "progress": False, "device": "cpu",
}
CCRK = {"method": "ccrk", "ccrk.fusion_layers": 1, "ccrk.fusion_width": 128, "ccrk.pool": "mean", "ccrk.w_mlm": 0.0,
        "ccrk.k_test": 0}
ROWS = [
    ("baseline", "Baseline (InfoNCE on en + MT captions)", {"method": "baseline"}),
    ("nrccr", "NRCCR (full)", {"method": "nrccr"}),
    ("nrccr_no_dtl", "NRCCR − DTL (w_dtl=0)", {"method": "nrccr", "nrccr.w_dtl": 0.0}),
    ("nrccr_no_feat", "NRCCR − SmoothL1 (w_feat=0)", {"method": "nrccr", "nrccr.w_feat": 0.0}),
    ("nrccr_no_cyc", "NRCCR − cycle (w_cyc=0)", {"method": "nrccr", "nrccr.w_cyc": 0.0}),
    ("nrccr_no_adv", "NRCCR − adversarial (w_adv=0)", {"method": "nrccr", "nrccr.w_adv": 0.0}),
    ("cl2cm", "CL2CM (full)", {"method": "cl2cm"}),
    ("cl2cm_no_kt", "CL2CM − relational distillation (w_kt=0)", {"method": "cl2cm", "cl2cm.w_kt": 0.0}),
    ("ccrk_1toK", "CCR^k 1-to-K ITC + MITM", dict(CCRK)),
    ("ccrk_1to1", "CCR^k 1-to-1 (cclm_easy-style) + MITM", dict(CCRK, **{"ccrk.one_to_one": True})),
]
COLS = ["t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "sumr", "mr"]


def run_row(key: str, overrides: dict, seed: int, epochs: int, data: dict, out_dir: str) -> dict:
    """Train one row and return its record (test metrics, best epoch, seconds)."""
    sets = {"train": data["train"], "val": data["val"], "test": data["test"]}  # the method builds its dataset
    t0 = time.time()
    res = train({**COMMON, **overrides}, datasets=sets, seed=seed, epochs=epochs,
                output_dir=os.path.join(out_dir, key))
    rec = {"key": key, "seed": seed, "epochs": epochs, "seconds": time.time() - t0, "train_items": len(sets["train"]),
           "history": res.history, "test": res.metrics}
    if key.startswith("ccrk") and res.best_checkpoint:
        method, _ = load_checkpoint_model(res.best_checkpoint, device="cpu")
        share_text_state_cache(method, method.cfg)
        rec["test_en_de"] = evaluate_method(method, data["test_en_de"], k_test=0)  # MRV needs two languages
        if key == "ccrk_1toK":
            t1 = time.time()
            rec["test_itm_rerank_top8"] = evaluate_method(method, data["test"], k_test=8)
            rec["test_en_de_itm_rerank_top8"] = evaluate_method(method, data["test_en_de"], k_test=8)
            rec["rerank_eval_seconds"] = time.time() - t1
    return rec


def _mean(vals):
    return sum(vals) / len(vals)


def write_doc(records: list, path: Path, epochs: int, seeds: list, total_s: float) -> None:
    """Write the comparison section of docs/results.md (replacing an older one)."""
    labels = {k: label for k, label, _ in ROWS}
    by_key: dict = {}
    for r in records:
        by_key.setdefault(r["key"], []).append(r)
    head = ("| method | de t2v R@1 | R@5 | R@10 | de v2t R@1 | R@5 | R@10 | de SumR | de mR | en+de SumR (CCR^k) "
            "| MRV en/de (CCR^k) | s/run |")
    lines = [head, "|" + " --- |" * 12]

    def row(label, recs, field="test", field2="test_en_de"):
        ms = [r[field]["de"] for r in recs]
        cells = [f"{_mean([m[c] for m in ms]):.1f}" for c in COLS[:7]] + [f"{_mean([m['mr'] for m in ms]):.2f}"]
        both = [r[field2] for r in recs if field2 in r]
        cells += [f"{_mean([m['sumr'] for m in both]):.1f}", f"{_mean([m['mrv'] for m in both]):.2f}"] if both \
            else ["–", "–"]
        cells.append(f"{_mean([r['seconds'] for r in recs]):.0f}")
        return f"| {label} | " + " | ".join(cells) + " |"

    for key, label, _ in ROWS:
        if key in by_key:
            lines.append(row(label, by_key[key]))
            if key == "ccrk_1toK" and all("test_itm_rerank_top8" in r for r in by_key[key]):
                lines.append(row(label + ", ITM re-rank of the ITC top-8", by_key[key], "test_itm_rerank_top8",
                                 "test_en_de_itm_rerank_top8"))
    missing = [label for key, label, _ in ROWS if key not in by_key]
    if missing:
        lines.append("")
        lines.append(f"Partial: not run (yet): {'; '.join(missing)}.")
    text = "\n".join(lines)
    section = f"""## Method comparison (`tools/run_comparison.py`)

Real runs only, written by the tool. Shipped data, en→de: train on the 700 train images (the en caption, its MT
into de and back-translation for NRCCR/CL2CM/baseline; CCR^k takes the human en and de captions of each image as
its 1-to-K group, K=2), select the best epoch on val de SumR (100 images), test on the 200 test images in de (one
caption per image, full-gallery ranking, 0.5 % R@1 by chance); CCR^k rows are also tested on en+de for MRV. Same frozen e5 encoder (token states cached), visual MLP 2048→512, 256-d space,
batch 64, AdamW lr 5e-4 cosine, **{epochs} epochs** (reduced from the papers' tens of epochs to fit a shared
2-core CPU), seeds {seeds}; numbers are means over seeds. SumR = R@1+R@5+R@10 both directions (max 600), mR =
SumR/6, MRV = mean over images of the std of the 0-based ranks over en/de (lower is more consistent).
Scores are cosine (ITC) for every row; the extra CCR^k line re-ranks the ITC top-8 with the ITM head.
"s/run" is wall time per training run (including evaluation) on the shared machine; the first run also paid
the one-off text-encoder pass that later runs reuse. Total: {total_s / 60:.1f} min.

{text}

Per-direction R@K, histories and run times: `docs/results_comparison.json`.
"""
    old = path.read_text() if path.exists() else "# Results on the shipped real data\n"
    start = old.find("## Method comparison")
    if start >= 0:
        end = old.find("\n## ", start + 5)
        old = old[:start] + (old[end + 1:] if end >= 0 else "")
    marker = old.find("## Not measured yet")
    if marker >= 0:
        old = old[:marker]
    path.write_text(old.rstrip() + "\n\n" + section)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--only", default="", help="comma-separated row keys (default: all)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results_comparison.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the doc from an existing --out JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.out).read_text())
        total = saved.get("total_seconds", sum(r["seconds"] for r in saved["records"]))
        write_doc(saved["records"], Path(args.doc), saved["epochs"], saved["seeds"], total)
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    keys = [k for k in args.only.split(",") if k] or [k for k, _, _ in ROWS]
    unknown = set(keys) - {k for k, _, _ in ROWS}
    if unknown:
        raise SystemExit(f"--only: unknown rows {sorted(unknown)}; valid: {[k for k, _, _ in ROWS]}")
    data = {"train": load_shipped("train"),
            "val": make_eval_sets(load_shipped("val"), TARGETS), "test": make_eval_sets(load_shipped("test"), TARGETS)}
    data["test_en_de"] = make_eval_sets(load_shipped("test"), LANGS)
    records, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for key, _, over in ROWS:
            if key not in keys:
                continue
            for seed in seeds:
                rec = run_row(key, over, seed, args.epochs, data, tmp)
                records.append(rec)
                m = rec["test"]
                print(f"{key:14s} seed {seed}: SumR {m['sumr']:.1f} mR {m['mr']:.2f} MRV {m.get('mrv', float('nan')):.2f}"
                      f" ({rec['seconds']:.0f} s)", flush=True)
                Path(args.out).write_text(json.dumps({"epochs": args.epochs, "seeds": seeds, "records": records},
                                                     indent=1))
    total = time.time() - t0
    Path(args.out).write_text(json.dumps({"epochs": args.epochs, "seeds": seeds, "total_seconds": total,
                                          "records": records}, indent=1))
    if not args.no_doc:
        write_doc(records, Path(args.doc), args.epochs, seeds, total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
