"""``python -m ccr_fast gpu-check``: GPU readiness in one call (docs/gpu.md).

* ``--compile-only`` (no GPU needed; runs in CI): compiles every Triton kernel of ``ccr_fast.backends.triton`` for CUDA
  sm_80 and sm_90 with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``, each autotune config at
  representative (d = 512, bf16) specialisations, and reports per kernel the shared memory, the registers and spills
  (``ptxas -v`` on the PTX) and whether the PTX uses ``mma``/``wgmma``. When nvcc and the sources (``csrc/cuda``) are
  present, every ``.cu`` file is compiled with ``-Xptxas -v`` for the same architectures. Fails on spills in a hot
  kernel, or on a compile error.
* no flag (needs a CUDA device; ≤ 8 minutes on one H100/H200): build status, every ``-m gpu`` test, the target-shape
  benchmarks for every backend against torch eager and ``torch.compile``, and the compile check; JSON under ``--out``.

Also runnable as ``python -m ccr_fast.gpu_check``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ARCHS = (80, 90)
D_REPR = 512  # feature size of the representative specialisations (CLIP d = 512)


# ------------------------------------------------------------------------------------------------- kernel specs
@dataclass
class Variant:
    """One compilation: a kernel with its constexprs, launch options and target."""
    kernel: str
    label: str
    constexprs: Dict[str, object]
    num_warps: int
    num_stages: int
    hot: bool
    arch: int = 90


@dataclass
class Result:
    kernel: str
    label: str
    arch: int
    num_warps: int
    num_stages: int
    hot: bool
    ok: bool = False
    error: str = ""
    shared_bytes: Optional[int] = None
    registers: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    stack_bytes: Optional[int] = None
    mma: str = "none"
    seconds: float = 0.0


def _kernel_table():
    """name -> (jit function, {arg: pointer/float type}, [(label, constexprs, [(config kwargs, warps, stages)])], hot).

    Pointer types default to ``*fp32``, float args are named explicitly, every other runtime arg is ``i32``.
    """
    from triton.runtime.autotuner import Autotuner

    from .backends.triton import contrastive, epilogues, ranks, similarity, topk, triplet

    def configs(fn, fixed=None):
        if isinstance(fn, Autotuner):
            return fn.fn, [(dict(c.kwargs), c.num_warps, c.num_stages) for c in fn.configs]
        return fn, fixed

    feat = {"A_ptr": "*bf16", "B_ptr": "*bf16", "X_ptr": "*bf16", "Y_ptr": "*bf16", "Q_ptr": "*bf16",
            "G_ptr": "*bf16"}
    dot = {"BLOCK_D": 64, "CAST_FP32": False, "DOT_MODE": 0}
    table = {}

    def add(name, fn, types, variants, hot=True, fixed=None):
        jit, cfgs = configs(fn, fixed)
        table[name] = (jit, types, [(lbl, cx, cfgs) for lbl, cx in variants], hot)

    add("contrastive._lse_pos_kernel", contrastive._lse_pos_kernel, dict(feat),
        [("lse", dict(dot, COMPUTE_LSE=True)), ("pos-only", dict(dot, COMPUTE_LSE=False))])
    add("contrastive._grad_kernel", contrastive._grad_kernel, dict(feat, w_pos="fp32"),
        [("d512", dict(dot, BLOCK_DO=contrastive.block_dout(D_REPR), GRAD_DOT_MODE=2))])
    add("triplet._diag_kernel", triplet._diag_kernel, dict(feat), [("", dict(dot, BLOCK=triplet._DIAG_BLOCK))],
        hot=False, fixed=[({}, 4, 3)])
    add("triplet._triplet_fwd_kernel", triplet._triplet_fwd_kernel, dict(feat, margin="fp32", IDX_ptr="*i64"),
        [("max", dict(dot, MAX_VIOLATION=True)), ("sum", dict(dot, MAX_VIOLATION=False))])
    add("triplet._triplet_sum_grad_kernel", triplet._triplet_sum_grad_kernel, dict(feat, margin="fp32"),
        [("d512", dict(dot, BLOCK_DO=triplet.block_dout(D_REPR)))])
    tk = []
    for k in (10, topk.REGISTER_MAX_K):
        bm, bn = topk._tiles(k)
        tk.append((f"k{k}", dict(dot, SELECT_SORT=k > topk.SELECT_ROUNDS_MAX_K, BLOCK_M=bm, BLOCK_N=bn)))
    add("topk._topk_kernel", topk._topk_kernel, dict(feat, WS_ptr="*i64"), tk)
    add("ranks._ranks_kernel", ranks._ranks_kernel, dict(feat, TGT_ptr="*i64", WS_ptr="*i64"),
        [(f"T{t}", dict(dot, TP=t, BLOCK=64)) for t in (1, 8)])
    add("similarity._similarity_kernel", similarity._similarity_kernel, dict(feat), [("", dict(dot))])
    bm, bn, w = 64, 64, 8  # epilogues._tiles() on a GPU; the loop kernels run with num_stages=1
    tiles = dict(BLOCK_M=bm, BLOCK_N=bn)
    gid = {"RGID_ptr": "*i32", "CGID_ptr": "*i32"}
    add("epilogues._lse_partials_kernel", epilogues._lse_partials_kernel, dict(gid),
        [("col", dict(tiles, COMPUTE_COL=True)), ("row-only", dict(tiles, COMPUTE_COL=False))],
        fixed=[({}, w, 1)])
    for dt in ("bf16", "fp16"):
        add(f"epilogues._dz_kernel[{dt}]", epilogues._dz_kernel, dict(gid, DZ_ptr=f"*{dt}", w_pos="fp32"),
            [("", dict(tiles))], fixed=[({}, w, 3)])
    add("epilogues._hardest_kernel[max]", epilogues._hardest_kernel,
        {"margin": "fp32", "ROW_ptr": "*i64", "COL_ptr": "*i64"}, [("", dict(tiles, MAX_VIOLATION=True))],
        fixed=[({}, w, 1)])
    add("epilogues._hardest_kernel[sum]", epilogues._hardest_kernel, {"margin": "fp32"},
        [("", dict(tiles, MAX_VIOLATION=False))], fixed=[({}, w, 1)])
    add("epilogues._triplet_weights_kernel", epilogues._triplet_weights_kernel, {"W_ptr": "*bf16", "margin": "fp32"},
        [("", dict(tiles))], fixed=[({}, w, 3)])
    for k in (10, epilogues.EPILOGUE_MAX_K):  # the host's choice (epilogues.topk_partials)
        kbn = max(64, 1 << (k - 1).bit_length())
        add(f"epilogues._topk_partials_kernel[k{k}]", epilogues._topk_partials_kernel, {"WS_ptr": "*i64"},
            [("", dict(SELECT_SORT=k > 16, BLOCK_M=32, BLOCK_N=kbn))],
            fixed=[({}, 8, 1)])
    add("epilogues._rank_counts_kernel", epilogues._rank_counts_kernel, {"TGT_ptr": "*i64", "WS_ptr": "*i32"},
        [(f"T{t}", dict(tiles, TP=t)) for t in (1, 8)], fixed=[({}, w, 1)])
    return table


def variants(archs: Sequence[int] = ARCHS, quick: bool = False) -> List[Variant]:
    """Every (kernel, specialisation, config, arch). ``quick``: per specialisation only the config with the largest
    tile (the most register pressure), for CI."""
    out = []
    for name, (_jit, _types, specs, hot) in _kernel_table().items():
        for label, cx, cfgs in specs:
            chosen = cfgs
            if quick:
                def size(c):
                    kw = dict(cx, **c[0])
                    return (kw.get("BLOCK_M", 1) * kw.get("BLOCK_N", 1), c[1], c[2])
                chosen = [max(cfgs, key=size)]
            for kw, warps, stages in chosen:
                lbl = ",".join([label] * bool(label) + [f"{k}={v}" for k, v in kw.items()] + [f"w{warps}s{stages}"])
                for arch in archs:
                    out.append(Variant(name, lbl, dict(cx, **kw), warps, stages, hot, arch))
    return out


# ------------------------------------------------------------------------------------------------- compile + ptxas
def _ptxas_candidates() -> List[str]:
    """ptxas binaries to try, newest first: Triton's bundled ones (``ptxas-blackwell`` accepts the newest PTX ISA on
    triton 3.9), then the CUDA toolkit's."""
    cands = []
    try:
        import triton

        for tool in ("ptxas_blackwell", "ptxas"):
            try:
                path = getattr(triton.knobs.nvidia, tool).path
            except Exception:  # noqa: BLE001 - older triton: fewer knobs
                continue
            if path and os.path.exists(path):
                cands.append(path)
    except Exception:  # noqa: BLE001
        pass
    try:
        import triton.backends.nvidia as nv

        for name in ("ptxas-blackwell", "ptxas"):
            cand = Path(nv.__file__).parent / "bin" / name
            if cand.exists():
                cands.append(str(cand))
    except Exception:  # noqa: BLE001
        pass
    sys_ptxas = shutil.which("ptxas")
    if sys_ptxas:
        cands.append(sys_ptxas)
    return list(dict.fromkeys(cands))


def _ptxas() -> Optional[str]:
    c = _ptxas_candidates()
    return c[0] if c else None


def run_ptxas(ptx: str, arch: int) -> str:
    """``ptxas -v`` of a PTX text for ``sm_<arch>`` (``sm_90a`` for 90): its report; tries each candidate binary."""
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "k.ptx"
        f.write_text(ptx)
        target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        for exe in _ptxas_candidates():
            out = subprocess.run([exe, "-v", f"-arch={target}", str(f), "-o", str(Path(tmp) / "k.cubin")],
                                 capture_output=True, text=True, timeout=600)
            if out.returncode == 0:
                return out.stdout + out.stderr
            errors.append(f"{exe}: {(out.stdout + out.stderr).strip()[-300:]}")
    raise RuntimeError("ptxas failed: " + " | ".join(errors) if errors else "no ptxas found")


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(text: str) -> Dict[str, int]:
    """Registers, stack and spills from ``ptxas -v`` output (the maxima over the functions it lists)."""
    regs = [int(m) for m in _PTXAS_USED.findall(text)]
    spills = [tuple(int(x) for x in m) for m in _PTXAS_SPILL.findall(text)]
    return {"registers": max(regs) if regs else None,
            "stack_bytes": max((s[0] for s in spills), default=None),
            "spill_stores": max((s[1] for s in spills), default=None),
            "spill_loads": max((s[2] for s in spills), default=None)}


def _signature(jit, types: Dict[str, str]) -> Tuple[Dict[str, str], List[str]]:
    sig, cnames = {}, []
    for p in jit.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            cnames.append(p.name)
        elif p.name.endswith("_ptr"):
            sig[p.name] = types.get(p.name, "*fp32")
        else:
            sig[p.name] = types.get(p.name, "i32")
    return sig, cnames


def compile_variant(v: Variant) -> Result:
    """Compile one variant for ``cuda:sm_<arch>`` without a device and measure it (runs in a worker process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    res = Result(v.kernel, v.label, v.arch, v.num_warps, v.num_stages, v.hot)
    t0 = time.time()
    try:
        jit, types, _specs, _hot = _kernel_table()[v.kernel]
        sig, cnames = _signature(jit, types)
        missing = [c for c in cnames if c not in v.constexprs]
        if missing:
            raise ValueError(f"constexprs without a value: {missing}")
        src = ASTSource(jit, sig, constexprs={c: v.constexprs[c] for c in cnames})
        # Triton runs ptxas -v itself and prints its log with TRITON_DUMP_PTXAS_LOG=1 (set by the worker init,
        # with a fresh cache dir so that ptxas really runs): capture it instead of running ptxas a second time.
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            cc = triton.compile(src, target=GPUTarget("cuda", v.arch, 32),
                                options={"num_warps": v.num_warps, "num_stages": v.num_stages})
        res.shared_bytes = int(getattr(cc.metadata, "shared", 0))
        ptx = cc.asm["ptx"]
        res.mma = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if "mma.sync" in ptx else "none")
        usage = parse_ptxas(log.getvalue())
        if usage["registers"] is None and _ptxas_candidates():
            usage = parse_ptxas(run_ptxas(ptx, v.arch))
        for k, val in usage.items():
            setattr(res, k, val)
        res.ok = True
    except Exception as exc:  # noqa: BLE001 - reported per kernel, the check fails on it
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:400]
    res.seconds = round(time.time() - t0, 2)
    return res


def _worker_init(cache_dir: str):
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_CACHE_DIR"] = cache_dir


def check_triton(archs: Sequence[int] = ARCHS, quick: bool = False, jobs: int = 0) -> List[Result]:
    """Compile every variant (in worker processes: the interpreter flag is cleared there)."""
    vs = variants(archs, quick)
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="ccr_gpu_check_") as cache:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init, initargs=(cache,)) as pool:
            return list(pool.map(compile_variant, vs))


def _source_root(src: Optional[str]) -> Optional[Path]:
    cands = [Path(src)] if src else [Path(__file__).resolve().parent.parent, Path.cwd()]
    for c in cands:
        if (c / "csrc" / "cuda").is_dir():
            return c
    return None


# Kernels whose spills would sit in an inner loop (all but the one-off diagonal / finish / merge kernels).
_COLD_CUDA = ("pair_dot", "finish", "merge", "sum_splits", "sum_all", "diag_fix", "final", "scatter", "active")


def check_cuda_sources(root: Path, archs: Sequence[int] = ARCHS, files: Optional[Sequence[str]] = None
                       ) -> List[Result]:
    """``nvcc -Xptxas -v -c`` of every csrc/cuda/*.cu (or of ``files``) that defines kernels; one Result per
    (kernel, arch)."""
    nvcc = shutil.which("nvcc")
    results = []
    if nvcc is None:
        return results
    for cu in sorted((root / "csrc" / "cuda").glob("*.cu")):
        if (files and cu.name not in files) or "__global__" not in cu.read_text():
            continue
        for arch in archs:
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [nvcc, f"-arch=sm_{arch}", "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas", "-v",
                       "-DCCR_FAST_WITH_CUDA=1", "-c", str(cu),
                       "-I", str(root / "csrc"), "-o", str(Path(tmp) / "k.o")]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            text = out.stdout + out.stderr
            if out.returncode != 0:
                results.append(Result(cu.name, "nvcc", arch, 0, 0, True, False, text.strip()[-400:]))
                continue
            # ptxas prints "Compiling entry function '<mangled>' for 'sm_XX'" then its usage lines
            for block in re.split(r"ptxas info\s+: Compiling entry function", text)[1:]:
                m = re.match(r"\s*'([^']+)'", block)
                name = _demangle(m.group(1)) if m else "?"
                usage = parse_ptxas(block)
                smem = re.search(r"(\d+) bytes smem", block)
                hot = not any(c in name for c in _COLD_CUDA)
                results.append(Result(f"{cu.name}:{name}", "", arch, 0, 0, hot, True, "",
                                      int(smem.group(1)) if smem else 0, usage["registers"], usage["spill_stores"],
                                      usage["spill_loads"], usage["stack_bytes"], "none",
                                      round(time.time() - t0, 2)))
    return results


def _demangle(sym: str) -> str:
    """Readable kernel name from a mangled symbol: ``grad_rows_kernel<bf16>`` (good enough for a report)."""
    names = re.findall(r"([a-z][a-z_]*_kernel)", sym)
    if not names:
        return sym
    dtype = ("bf16" if "bfloat16" in sym else "fp16" if "__half" in sym else
             "fp32" if re.search(r"_kernelIf", sym) else "")
    flag = re.search(r"_kernelI\w*?L([bi])(\d)E", sym)
    args = [a for a in (dtype, f"{flag.group(2)}" if flag else "") if a]
    return names[-1] + (f"<{','.join(args)}>" if args else "")


def spill_failures(results: Sequence[Result]) -> List[Result]:
    return [r for r in results if r.ok and r.hot and ((r.spill_stores or 0) > 0 or (r.spill_loads or 0) > 0)]


def format_table(results: Sequence[Result]) -> str:
    rows = [("kernel", "variant", "sm", "smem KiB", "regs", "spill st/ld", "mma", "status")]
    for r in results:
        status = "ok" if r.ok else f"ERROR {r.error}"
        if r.ok and r.hot and ((r.spill_stores or 0) or (r.spill_loads or 0)):
            status = "SPILLS (hot)"
        spills = "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
        smem = "-" if r.shared_bytes is None else f"{r.shared_bytes / 1024:.1f}"
        rows.append((r.kernel, r.label, str(r.arch), smem, str(r.registers if r.registers is not None else "-"),
                     spills, r.mma, status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def compile_only(archs=ARCHS, quick=False, src=None, out: Optional[Path] = None, cuda_sources=True) -> int:
    import triton

    t0 = time.time()
    print(f"gpu-check --compile-only: triton {triton.__version__}, targets {', '.join(f'sm_{a}' for a in archs)}, "
          f"ptxas {_ptxas() or 'not found (no register counts)'}", flush=True)
    results = check_triton(archs, quick)
    print(format_table(results), flush=True)
    failed = [r for r in results if not r.ok]
    root = _source_root(src) if cuda_sources else None
    cuda_results = []
    if cuda_sources:
        if root is None:
            print("CUDA sources: csrc/cuda not found (installed package; pass --src REPO to check them)")
        elif shutil.which("nvcc") is None:
            print("CUDA sources: nvcc not found, skipped")
        else:
            cuda_results = check_cuda_sources(root, archs)
            print(f"\nCUDA sources ({root / 'csrc' / 'cuda'}, nvcc -Xptxas -v):")
            print(format_table(cuda_results), flush=True)
            failed += [r for r in cuda_results if not r.ok]
    spills = spill_failures(results) + spill_failures(cuda_results)
    summary = {"triton": triton.__version__, "archs": list(archs), "quick": quick, "seconds": round(time.time() - t0, 1),
               "compile_errors": len(failed), "hot_spills": len(spills),
               "triton_kernels": [asdict(r) for r in results], "cuda_kernels": [asdict(r) for r in cuda_results]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compile_check.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(results)} Triton compilations, {len(cuda_results)} CUDA kernels; compile errors: {len(failed)}; "
          f"hot kernels with spills: {len(spills)}; {summary['seconds']} s")
    for r in failed + spills:
        print(f"FAIL {r.kernel} [{r.label}] sm_{r.arch}: {r.error or 'spills in a hot kernel'}")
    return 1 if failed or spills else 0


# ------------------------------------------------------------------------------------------------- full GPU run
def _build_status() -> dict:
    import torch

    from . import _backend

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "backends": _backend.backends()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "cc": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                          "memory_gib": round(p.total_memory / 2 ** 30, 1)}
    return info


def _run_gpu_tests(out: Path, timeout: int) -> dict:
    """``pytest -m gpu`` over the installed package's test folder (or ./python_tests), JSON report in ``out``."""
    root = _source_root(None) or Path.cwd()
    tests = root / "python_tests"
    if not tests.is_dir():
        return {"status": "skipped", "reason": f"no python_tests/ under {root}"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(tests),
           f"--junitxml={out / 'gpu_tests.xml'}"]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(root))
    except subprocess.TimeoutExpired as exc:
        return {"status": "timeout", "seconds": timeout, "tail": str(exc.stdout or "")[-4000:]}
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    return {"status": "passed" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
            "seconds": round(time.time() - t0, 1), "tail": (proc.stdout + proc.stderr)[-4000:]}


# Target shapes of issue 15 (name, kind, sizes); --quick-bench divides the sizes by 8.
TARGETS = (
    ("clip bf16 N=16k d=512 fwd+bwd", "clip", dict(B=16384, K=1, d=512)),
    ("clip bf16 N=32k d=512 fwd+bwd", "clip", dict(B=32768, K=1, d=512)),
    ("1-to-K bf16 K=4 B=16k d=512 fwd+bwd", "one_to_k", dict(B=16384, K=4, d=512)),
    ("top-10 fp16 Q=G=100k d=512", "topk", dict(Q=100_000, G=100_000, d=512, k=10)),
)
GPU_BACKENDS = ("blas", "triton", "cuda")


def _eager_loss(kind, k):
    import torch
    import torch.nn.functional as F

    def clip(x, t, scale):
        logits = scale * x @ t.t()
        labels = torch.arange(x.shape[0], device=x.device)
        return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.t().float(), labels)) / 2

    def one_to_k(x, t, scale):  # docs/methods.md "ccrk", t2i_divisor "K": L = (L_i2t + L_t2i) / (2K)
        b = x.shape[0]
        z = (scale * x @ t.reshape(b * k, -1).t()).float()
        lse_r, lse_c = z.logsumexp(1), z.logsumexp(0)
        pos = z.reshape(b, b, k)[torch.arange(b), torch.arange(b)]  # [B, K]
        l_i2t = (k * lse_r - pos.sum(1)).mean()
        l_t2i = (lse_c - pos.reshape(-1)).mean()
        return (l_i2t + l_t2i) / (2 * k)

    return clip if kind == "clip" else one_to_k


def _do_bench(fn, grad_to_none=None, rep=300):
    import torch
    from triton.testing import do_bench

    torch.cuda.synchronize()
    q = do_bench(fn, warmup=50, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return {"ms": round(q[0], 4), "ms_p20": round(q[1], 4), "ms_p80": round(q[2], 4)}


def _bench_case(name, kind, sz, deadline) -> dict:
    import torch

    from . import losses, retrieval

    rows = {"case": name, "kind": kind, **sz, "providers": {}}
    torch.manual_seed(0)
    if kind in ("clip", "one_to_k"):
        b, k, d = sz["B"], sz["K"], sz["d"]
        x = torch.nn.functional.normalize(torch.randn(b, d, device="cuda"), dim=1).bfloat16().requires_grad_()
        t = torch.nn.functional.normalize(torch.randn(b * k, d, device="cuda"), dim=1).bfloat16()
        t = (t if kind == "clip" else t.reshape(b, k, d)).requires_grad_()
        scale = torch.tensor(100.0, device="cuda", requires_grad=True)
        flops = 3 * 2 * b * b * k * d
        eager = _eager_loss(kind, k)
        compiled = torch.compile(eager)

        def ours(backend):
            fn = losses.clip_loss if kind == "clip" else losses.one_to_k_loss
            return lambda a, c, s: fn(a, c, s, backend=backend)

        providers = [("torch eager", eager), ("torch.compile", compiled)] + [(f"ccr_fast[{b_}]", ours(b_))
                                                                             for b_ in GPU_BACKENDS]
        for pname, f in providers:
            if time.time() > deadline:
                rows["providers"][pname] = {"skipped": "overall time budget (8 min) reached"}
                continue
            try:
                def step(f=f):
                    f(x, t, scale).backward()

                step()  # warm-up / compile / autotune
                r = _do_bench(step, grad_to_none=[x, t, scale])
                r["tflops"] = round(flops / r["ms"] / 1e9, 1)
                torch.cuda.reset_peak_memory_stats()
                step()
                r["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                rows["providers"][pname] = r
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal
                rows["providers"][pname] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            torch.cuda.empty_cache()
        rows["gemm_floor_ms"] = _do_bench(lambda: torch.mm(x.detach(), t.detach().reshape(-1, x.shape[1]).t()))["ms"] * 3
    else:
        nq, ng, d, k = sz["Q"], sz["G"], sz["d"], sz["k"]
        q = torch.nn.functional.normalize(torch.randn(nq, d, device="cuda"), dim=1).half()
        g = torch.nn.functional.normalize(torch.randn(ng, d, device="cuda"), dim=1).half()
        chunk = 16384

        def eager():
            outs = [torch.topk((q[i:i + chunk] @ g.t()).float(), k, dim=1) for i in range(0, nq, chunk)]
            return torch.cat([o.values for o in outs]), torch.cat([o.indices for o in outs])

        def tk(qc):
            return torch.topk((qc @ g.t()).float(), k, dim=1)

        ctk = torch.compile(tk)

        def compiled():
            return [ctk(q[i:i + chunk]) for i in range(0, nq, chunk)]

        providers = [("torch eager (16k-row chunks)", eager), ("torch.compile (16k-row chunks)", compiled)]
        providers += [(f"ccr_fast[{b_}]", (lambda b_=b_: retrieval.topk(q, g, k, backend=b_))) for b_ in GPU_BACKENDS]
        for pname, f in providers:
            if time.time() > deadline:
                rows["providers"][pname] = {"skipped": "overall time budget (8 min) reached"}
                continue
            try:
                f()
                r = _do_bench(f, rep=500)
                r["tflops"] = round(2 * nq * ng * d / r["ms"] / 1e9, 1)
                rows["providers"][pname] = r
            except Exception as exc:  # noqa: BLE001
                rows["providers"][pname] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            torch.cuda.empty_cache()
        rows["gemm_floor_ms"] = sum(_do_bench(lambda i=i: q[i:i + chunk] @ g.t())["ms"] for i in range(0, nq, chunk))
    return rows


def run_benchmarks(quick: bool, deadline: float) -> List[dict]:
    out = []
    for name, kind, sz in TARGETS:
        if quick:
            sz = {k: (v // 8 if k in ("B", "Q", "G") else v) for k, v in sz.items()}
            name += " (quick: /8)"
        if time.time() > deadline:
            out.append({"case": name, "skipped": "overall time budget (8 min) reached"})
            continue
        print(f"benchmark: {name}", flush=True)
        out.append(_bench_case(name, kind, sz, deadline))
    return out


def format_benchmarks(rows: List[dict]) -> str:
    lines = ["| case | provider | median ms (p20-p80) | TFLOP/s | peak GiB |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        for pname, r in row.get("providers", {}).items():
            if "ms" in r:
                lines.append(f"| {row['case']} | {pname} | {r['ms']:.3f} ({r['ms_p20']:.3f}-{r['ms_p80']:.3f}) | "
                             f"{r.get('tflops', '')} | {r.get('peak_mem_gib', '')} |")
            else:
                lines.append(f"| {row['case']} | {pname} | {r.get('error') or r.get('skipped')} | | |")
        if "gemm_floor_ms" in row:
            lines.append(f"| {row['case']} | GEMM-only floor (torch.mm) | {row['gemm_floor_ms']:.3f} | | |")
    return "\n".join(lines)


def full(out: Path, quick_bench: bool = False, test_timeout: int = 270) -> int:
    """Build status, GPU tests, compile check, benchmarks; JSON in ``out``. Returns 0 when all tests pass."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "build": _build_status()}
    print(json.dumps(report["build"], indent=1, default=str), flush=True)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible; run `gpu-check --compile-only` on a machine without a GPU")
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        return 2
    report["tests"] = _run_gpu_tests(out, test_timeout)
    print(f"GPU tests: {report['tests']['status']} ({report['tests'].get('seconds')} s)", flush=True)
    report["benchmarks"] = run_benchmarks(quick_bench, deadline=t0 + 450)  # 8 min in all, with the last case
    table = format_benchmarks(report["benchmarks"])
    (out / "benchmarks.md").write_text(table + "\n")
    print(table, flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu-check: results in {out} ({report['seconds']} s); `gpu-check --compile-only` for register counts")
    return 0 if report["tests"]["status"] in ("passed", "skipped") else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ccr_fast gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--compile-only", action="store_true", help="compile the kernels for sm_80/sm_90, no GPU needed")
    p.add_argument("--archs", default=",".join(map(str, ARCHS)), help="compute capabilities, e.g. 80,90")
    p.add_argument("--quick", action="store_true", help="compile only the largest config per kernel (CI)")
    p.add_argument("--no-cuda-sources", action="store_true", help="skip the nvcc -Xptxas -v check of csrc/cuda")
    p.add_argument("--src", default=None, help="repository root holding csrc/ (default: found next to the package)")
    p.add_argument("--out", default=None, help="folder for the JSON results (default: gpu_check_results/)")
    p.add_argument("--quick-bench", action="store_true", help="smaller benchmark shapes (smoke run)")
    args = p.parse_args(argv)
    try:
        archs = tuple(int(a) for a in args.archs.split(",") if a.strip())
    except ValueError:
        p.error(f"--archs must be comma-separated integers like 80,90, got {args.archs!r}")
    out = Path(args.out) if args.out else None
    if args.compile_only:
        return compile_only(archs, args.quick, args.src, out, not args.no_cuda_sources)
    return full(out or Path("gpu_check_results"), args.quick_bench)


if __name__ == "__main__":
    sys.exit(main())
