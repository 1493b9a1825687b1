"""Loss kernels: forward+backward time and peak extra memory vs batch size (CLIP, 1-to-K), every ccr_fast backend vs
torch eager, torch.compile, open_clip, Inf-CL and the GEMM floor.

Thin wrapper over `python -m ccr_fast bench --suite losses` (method and providers: ccr_fast/bench/losses.py). Results go to
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
    sys.exit(script_main("losses", os.path.dirname(os.path.abspath(__file__))))
