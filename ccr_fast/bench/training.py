"""Training-throughput benchmark: steps/s and peak memory of one method step with fused vs reference losses.

Runs on synthetic features through ``ccr_fast.methods``; until that package provides the step interface used
here, the suite is skipped with the reason recorded in the JSON.
"""
from __future__ import annotations

from typing import List

import torch


def unavailable_reason() -> str | None:
    """Why the training suite cannot run here, or None when it can."""
    try:
        import ccr_fast.methods  # noqa: F401
    except Exception as exc:
        return f"ccr_fast.methods is not available yet ({type(exc).__name__}: {exc})"
    return "ccr_fast.methods has no synthetic-feature step interface the benchmark can drive yet"


def run(device: torch.device, *, quick: bool, backends: List[str], log=print, **_) -> dict:
    """Run the training sweep (or record why it was skipped); returns the suite's JSON payload."""
    why = unavailable_reason()
    log(f"  [training] skip: {why}")
    return {"suite": "training", "mode": "one optimiser step", "records": [], "skipped": {"training": why}}
