"""Regenerates the round-2 recipe-selection tables of docs/results.md (between ``<!-- selection2:begin -->`` and
``<!-- selection2:end -->``) from the JSON the experiments wrote:

* ``docs/selection/recipes_round2.jsonl`` — ``tools/exp_recipes.py --what contrastive --grid ... --log``
  (pooled frozen-e5 harness; centring, feature standardisation, dropout, weight decay, residual MLP, hard negatives);
* ``docs/selection/text_side.jsonl`` — ``tools/exp_ft2.py --log`` (attention pooling, training the top e5 layer);
* ``docs/selection/querybank.jsonl`` — ``tools/exp_qb.py --log`` (query-bank normalisation, ridge and contrastive);
* ``docs/selection/package_candidates_round2.json`` — ``tools/exp_package.py collect`` (runs of ``ccr_fast.train``).

    python tools/selection_report.py [--doc docs/results.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEL = ROOT / "docs" / "selection"
BEGIN, END = "<!-- selection2:begin -->", "<!-- selection2:end -->"


def _jsonl(p: Path) -> list:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def harness_table() -> list:
    out = ["**Pooled-embedding harness, round 2** (`recipes_round2.jsonl`; InfoNCE with all captions of an image as "
           "positives, batch 350, identity text side, learnable temperature from 0.05, seed 0):", "",
           "| text centred | visual features | visual map | dropout | weight decay | lr | hard-neg. weight | best epoch "
           "| val mean SumR | test mean SumR |", "|" + " --- |" * 10]
    for r in _jsonl(SEL / "recipes_round2.jsonl"):
        c = r["config"]
        vis = {"linear": "Linear(2048→384)", "res": "Linear + ReLU-MLP residual"}.get(c["vis"], c["vis"])
        pre = {"none": "raw", "std": "standardised", "sqrt_std": "sqrt, standardised"}.get(c["vis_pre"], c["vis_pre"])
        out.append(f"| {'yes' if c['center'] else 'no'} | {pre} | {vis} | {c['drop']:g} | {c['wd']:g} | {c['lr']:g} "
                   f"| {c.get('hn', 0):g} | {r['best_epoch']}/{c['epochs']} | {r['val_mean_sumr']:.1f} "
                   f"| {r['test']['mean']:.1f} |")
    return out


def text_side_table() -> list:
    rows = _jsonl(SEL / "text_side.jsonl")
    if not rows:
        return []
    out = ["", "**Text side** (`text_side.jsonl`; centred, standardised features, all-captions InfoNCE; `n` top e5 "
           "layers trained at `enc_lr`, `cpi` captions sampled per image and step, 0 = all):", "",
           "| trained e5 layers | pooling | enc_lr | cpi | steps | best epoch | val mean SumR | test mean SumR |",
           "|" + " --- |" * 8]
    for r in rows:
        a = r["args"]
        out.append(f"| {a['n']} | {a['pool']} | {a['enc_lr']:g} | {a['cpi']} | {r['steps']} | {r['epoch']}/{a['epochs']} "
                   f"| {r['val']:.1f} | {r['test']['mean']:.1f} |")
    return out


def querybank_table() -> list:
    rows = _jsonl(SEL / "querybank.jsonl")
    if not rows:
        return []
    out = ["", "**Query-bank normalisation** (`querybank.jsonl`; β = 0 is plain cosine ranking; the same trained "
           "maps, re-scored):", "", "| model | β | val mean SumR | test mean SumR | en | de | fr | cs |",
           "|" + " --- |" * 8]
    for r in rows:
        t = r["test"]
        out.append(f"| {r['model']} | {r['beta']} | {r['val_mean_sumr']:.1f} | {t['mean']:.1f} | {t['en']:.1f} "
                   f"| {t['de']:.1f} | {t['fr']:.1f} | {t['cs']:.1f} |")
    return out


def package_table() -> list:
    p = SEL / "package_candidates_round2.json"
    if not p.is_file():
        return []
    out = ["", "**Package runs** (`package_candidates_round2.json`; `ccr_fast.train` with these overrides on top of "
           "the previous default, seed 0; wall seconds include the one-off frozen-encoder pass over the captions and were "
           "measured at load average 5–11 on the shared 2 cores):", "",
           "| candidate | overrides | steps | val mR by epoch | best val mR | test mean SumR | wall s |",
           "|" + " --- |" * 7]
    for r in json.loads(p.read_text()):
        ov = ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items())
        hist = " ".join(f"{h['val_mr']:.1f}" for h in r["val_history"])
        wall = f"{r['wall_seconds']:.0f}" if r.get("wall_seconds") else "–"
        out.append(f"| {r['tag']} | {ov} | {r['steps']} | {hist} | {r['best_val_mr']:.2f} | {r['test_mean_sumr']:.1f} "
                   f"| {wall} |")
    return out


def render() -> str:
    return "\n".join([BEGIN, ""] + harness_table() + text_side_table() + querybank_table() + package_table()
                     + ["", END])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    doc = Path(ap.parse_args().doc)
    text = doc.read_text()
    section = render()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
