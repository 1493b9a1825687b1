"""Training throughput: steps/s and peak memory of one method step with fused vs reference losses.

Thin wrapper over `python -m ccr_fast bench --suite training` (method and providers: ccr_fast/bench/training.py). Results go to
benchmarks/results/ and benchmarks/RESULTS.md is regenerated from every JSON there; `--quick` runs go to
benchmarks/results/tmp/ (not committed). Extra arguments are passed through, e.g. `--device cuda`, `--no-compile`.
"""
import os
import sys

try:
    from ccr_fast.bench import script_main
except ImportError:  # a source checkout without `pip install .`: use the package next to this folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ccr_fast.bench import script_main

if __name__ == "__main__":
    sys.exit(script_main("training", os.path.dirname(os.path.abspath(__file__))))
