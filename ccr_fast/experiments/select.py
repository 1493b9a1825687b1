"""The frozen rule that names the default recipe, from validation numbers only.

Input: records ``{"row": name, "fold": k, "val": {"mean_sumr": float}}`` (``ccr-fast compare --folds 5`` hands over
:func:`ccr_fast.experiments.compare.validation_view` of its JSON; ``python -m ccr_fast.experiments.select FILE``
reads such a JSON file). A record, or its ``val`` part, that carries any test number (a key containing ``test``)
is rejected with a ValueError, so the rule cannot see test data even by mistake.

Rule (:data:`RULE`): every recipe with a validation score on each of the ``n_folds`` folds is eligible, except rows
that only re-rank another row's model (:data:`NOT_RECIPES`); the winner has the highest mean validation SumR over
the folds; a tie goes to the recipe listed first.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Iterable

RULE = "highest mean validation SumR over all folds; rows missing a fold are not eligible; ties to the first listed"
NOT_RECIPES = ("default_plain",)  # evaluations of another row's checkpoint, not recipes


def _has_test(obj) -> bool:
    if isinstance(obj, dict):
        return any("test" in str(k).lower() or _has_test(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(_has_test(v) for v in obj)
    return False


def check_records(records: Iterable[dict]) -> list:
    """The records, checked: each has ``row``, ``fold`` and a finite ``val.mean_sumr``, and no test number."""
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise TypeError(f"records[{i}]: expected a dict, got {type(r).__name__}")
        if _has_test(r):
            raise ValueError(f"records[{i}] (row {r.get('row')!r}, fold {r.get('fold')!r}) carries test numbers; "
                             "the selection rule reads validation numbers only")
        try:
            v = float(r["val"]["mean_sumr"])
            row, fold = str(r["row"]), int(r["fold"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"records[{i}]: expected {{'row', 'fold', 'val': {{'mean_sumr'}}}}, got {r!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"records[{i}] (row {row!r}, fold {fold}): val.mean_sumr is not finite: {v}")
        out.append((row, fold, v))
    return out


def select_default(saved: dict, n_folds: int = 5) -> Dict[str, object]:
    """Apply :data:`RULE` to ``saved["records"]``.

    Returns:
        ``{"winner": row, "val_means": {row: mean val SumR}, "n_folds": n_folds}`` (eligible rows only).
    Raises:
        ValueError: a record carries test numbers or is malformed, or no row has all ``n_folds`` folds.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("records"), list):
        raise ValueError("selection input: expected a JSON object with a 'records' list")
    if _has_test({k: v for k, v in saved.items() if k != "records"}):
        raise ValueError("selection input carries test numbers outside its records; validation numbers only")
    by: Dict[str, Dict[int, float]] = {}
    for row, fold, v in check_records(saved["records"]):
        by.setdefault(row, {})[fold] = v
    means = {row: sum(f.values()) / len(f) for row, f in by.items()
             if row not in NOT_RECIPES and set(f) == set(range(n_folds))}
    if not means:
        raise ValueError(f"selection input: no recipe has validation scores on all {n_folds} folds")
    winner = max(means, key=lambda k: (means[k], -list(means).index(k)))
    return {"winner": winner, "val_means": means, "n_folds": n_folds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ccr_fast.experiments.select", description=__doc__.splitlines()[0])
    ap.add_argument("records", help="JSON file {'records': [{'row', 'fold', 'val': {'mean_sumr'}}]}")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args(argv)
    path = Path(args.records)
    if not path.is_file():
        raise FileNotFoundError(f"records: {path} not found")
    print(json.dumps(select_default(json.loads(path.read_text()), args.folds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
