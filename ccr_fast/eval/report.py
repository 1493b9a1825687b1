"""Result reporting: a readable table, a flat dict and JSON files for :func:`evaluate_encoders` results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

__all__ = ["format_table", "flatten_results", "save_results", "load_results"]

_COLUMNS = (("t2v_r1", "t2v R@1"), ("t2v_r5", "R@5"), ("t2v_r10", "R@10"), ("t2v_medr", "MedR"),
            ("v2t_r1", "v2t R@1"), ("v2t_r5", "R@5"), ("v2t_r10", "R@10"), ("v2t_medr", "MedR"),
            ("sumr", "SumR"), ("mr", "mR"))


def format_table(results: dict, title: str = "") -> str:
    """A fixed-width text table: one row per language (``+fused`` rows when present), the mean, then MRV.

    Args:
        results: the dict returned by :func:`ccr_fast.eval.evaluate_encoders`.
        title: optional first line.
    """
    head = ["lang"] + [c for _, c in _COLUMNS]
    rows = [[lang] + [f"{m[k]:.1f}" for k, _ in _COLUMNS] for lang, m in results["per_language"].items()]
    if len(results["per_language"]) > 1:
        rows.append(["mean"] + [f"{results['mean'][k]:.1f}" for k, _ in _COLUMNS])
    for lang, m in results.get("fused", {}).items():
        rows.append([f"{lang}+mt"] + [f"{m[k]:.1f}" for k, _ in _COLUMNS])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = ([title] if title else []) + [fmt(head), "-" * len(fmt(head))] + [fmt(r) for r in rows]
    if "fusion_weight" in results and results.get("fused"):
        lines.append(f"+mt: translate-test fusion, weight {results['fusion_weight']:g} on the English-MT query")
    if results.get("folds", 1) > 1:
        lines.append(f"metrics averaged over {results['folds']} folds of the gallery")
    if "mrv" in results:
        m = results["mrv"]
        lines.append(f"MRV ({', '.join(m['languages'])}; N={m['n']}): t2v {m['t2v']:.2f}  v2t {m['v2t']:.2f}  "
                     f"mean {m['mean']:.2f}")
    return "\n".join(lines)


def flatten_results(results: dict) -> Dict[str, float]:
    """Flat ``{name: float}``: ``"<lang>/<metric>"``, ``"mean/<metric>"``, ``"<lang>+mt/<metric>"``, ``"mrv"``,
    ``"mrv_t2v"``, ``"mrv_v2t"`` (for loggers and ``TrainResult.metrics``)."""
    out: Dict[str, float] = {}
    for lang, m in results["per_language"].items():
        out.update({f"{lang}/{k}": float(v) for k, v in m.items()})
    out.update({f"mean/{k}": float(v) for k, v in results["mean"].items()})
    for lang, m in results.get("fused", {}).items():
        out.update({f"{lang}+mt/{k}": float(v) for k, v in m.items()})
    if "mrv" in results:
        out["mrv"], out["mrv_t2v"], out["mrv_v2t"] = (float(results["mrv"][k]) for k in ("mean", "t2v", "v2t"))
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def save_results(results: dict, path) -> Path:
    """Write ``results`` (numpy arrays as lists) to ``path`` as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_results(path) -> dict:
    """Read a JSON file written by :func:`save_results`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
