"""The method comparison of docs/results.md: forwards to :mod:`tools.run_claims` (issue 13).

The earlier 3-epoch, one-seed method table (en→de; ``docs/results_comparison.json``) is superseded by the claim
tests and the fair NRCCR comparison of ``tools/run_claims.py`` (≥ 3 seeds, mean ± std, validation-selected
checkpoints, logged step counts), which this script runs with the same arguments.

Usage: ``OMP_NUM_THREADS=1 python tools/run_comparison.py [--parts noise,ccrk,cl2cm,fair] [--seeds 0,1,2]
[--from-json]`` (see ``tools/run_claims.py --help``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_claims import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
