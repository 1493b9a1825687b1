"""Plots (PNG) and ``RESULTS.md`` generated from the benchmark JSON files — never hand-typed numbers."""
from __future__ import annotations

import glob
import json
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from .harness import MEM_KIND_CPU, MEM_KIND_CUDA

MEM_TEXT = {
    MEM_KIND_CPU: "peak resident-set growth of the process during one call (Linux VmHWM reset via "
                  "/proc/self/clear_refs, glibc mmap threshold pinned at 64 KiB so large buffers leave the RSS on "
                  "free): every byte the call touches beyond what was resident before it — outputs, temporaries, "
                  "gradients, C++ workspaces — not the inputs; noise floor a few hundred KiB",
    MEM_KIND_CUDA: "torch.cuda.max_memory_allocated() minus memory_allocated() before one call (peak extra memory "
                   "above the inputs, gradients included)",
}

# (x axis, the keys that define one line plot / table) per op.
LAYOUT = {
    "clip": ("B", ("op", "K", "d", "dtype")),
    "one_to_k": ("B", ("op", "K", "d", "dtype")),
    "topk": ("G", ("op", "Q", "k", "d", "dtype")),
    "ranks": ("G", ("op", "Q", "d", "dtype")),
    "eval": ("captions", ("op", "d", "dtype")),
    "train": ("batch", ("op", "method", "d")),
}


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _groups(records: List[dict]) -> "OrderedDict[Tuple, List[dict]]":
    groups: "OrderedDict[Tuple, List[dict]]" = OrderedDict()
    for r in records:
        _, keys = LAYOUT.get(r["op"], ("B", ("op",)))
        groups.setdefault(tuple((k, r.get(k)) for k in keys), []).append(r)
    return groups


def _providers(records: List[dict]) -> List[str]:
    seen: List[str] = []
    for r in records:
        if r["provider"] not in seen:
            seen.append(r["provider"])
    return seen


def _label(group_key: Tuple) -> str:
    return " ".join(f"{k}={v}" if k != "op" else str(v) for k, v in group_key)


def _human(x: float) -> str:
    for div, suffix in ((1 << 20, "M"), (1 << 10, "k")):
        if x >= div and x % div == 0:
            return f"{x // div}{suffix}"
    for div, suffix in ((1_000_000, "M"), (1000, "k")):
        if x >= div and x % div == 0:
            return f"{x // div}{suffix}"
    return str(x)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace(" ", "-").replace("=", ""))


def plot(payload: dict, out_dir: str, stem: str) -> List[str]:
    """One PNG per group with at least two x values: time and memory vs x, log-log, one line per provider."""
    if payload.get("suite") == "side_by_side" or "records" not in payload:  # plotted by their own sections
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    env = payload["env"]
    written = []
    for gkey, recs in _groups(payload["records"]).items():
        xname = LAYOUT.get(gkey[0][1], ("B",))[0]
        xs = sorted({r[xname] for r in recs})
        if len(xs) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in _providers(recs):
            for ax, field, scale, unit in ((axes[0], "time_ms", 1.0, "ms"), (axes[1], "mem_bytes", 2**-20, "MiB")):
                pts = [(r[xname], r[field]) for r in recs if r["provider"] == name and r.get(field)]
                pts = [(x, q) for x, q in sorted(pts) if q["median"] * scale > 0]
                if not pts:
                    continue
                x = [p[0] for p in pts]
                y = [p[1]["median"] * scale for p in pts]
                lo = [max(0.0, (p[1]["median"] - p[1]["q20"]) * scale) for p in pts]
                hi = [max(0.0, (p[1]["q80"] - p[1]["median"]) * scale) for p in pts]
                ax.errorbar(x, y, yerr=[lo, hi], marker="o", ms=3, capsize=2, label=name,
                            linestyle="--" if name == "gemm_floor" else "-")
                ax.set_ylabel(f"{'time' if field == 'time_ms' else 'peak extra memory'} [{unit}]")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(xs, [_human(x) for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xname)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{payload['suite']} {payload.get('mode', '')}: {_label(gkey)} — {env['device_name']} "
                     f"({env['device']})", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}__{_slug(_label(gkey))}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _fmt_time(r: Optional[dict]) -> str:
    if r is None:
        return ""
    if not r.get("time_ms"):
        return r.get("status", "")
    t = r["time_ms"]["median"]
    cell = f"{t:.3g} ms" if t < 1000 else f"{t / 1e3:.3g} s"
    ratio = [v for k, v in r.items() if k.startswith("speedup_vs_")]
    if ratio:
        cell += f" ({ratio[0]:.2f}×)"
    return cell


def _fmt_mem(r: Optional[dict]) -> str:
    if r is None:
        return ""
    if not r.get("mem_bytes"):
        return r.get("status", "") if not r.get("time_ms") else "n/a"
    mib = r["mem_bytes"]["median"] / 2**20
    return f"{mib:.3g}" if mib < 100 else f"{mib:.0f}"


def tables(payload: dict) -> List[str]:
    """Markdown lines: per group a time table (ratio in parentheses) and a memory table (MiB)."""
    lines: List[str] = []
    for gkey, recs in _groups(payload["records"]).items():
        xname = LAYOUT.get(gkey[0][1], ("B",))[0]
        provs = _providers(recs)
        xs = sorted({r[xname] for r in recs})
        cell: Dict[Tuple, dict] = {(r[xname], r["provider"]): r for r in recs}
        lines += [f"#### {_label(gkey)}", "", "time, median of the repetitions (speedup over the baseline):", ""]
        lines += ["| " + " | ".join([xname] + provs) + " |", "|" + "---|" * (len(provs) + 1)]
        for x in xs:
            lines.append("| " + " | ".join([str(x)] + [_fmt_time(cell.get((x, p))) for p in provs]) + " |")
        lines += ["", "peak extra memory [MiB]:", ""]
        lines += ["| " + " | ".join([xname] + provs) + " |", "|" + "---|" * (len(provs) + 1)]
        for x in xs:
            lines.append("| " + " | ".join([str(x)] + [_fmt_mem(cell.get((x, p))) for p in provs]) + " |")
        lines.append("")
    return lines


def write_results_md(results_dir: str, md_path: str) -> str:
    """Regenerate ``md_path`` from every ``*.json`` under ``results_dir`` (plots referenced if present)."""
    paths = sorted(glob.glob(os.path.join(results_dir, "*.json")))
    md_dir = os.path.dirname(os.path.abspath(md_path))
    lines = ["# ccr_fast benchmark results", "",
             "Generated by `python -m ccr_fast bench` from the JSON files next to the plots; do not edit by hand.",
             "Times are medians of interleaved repetitions (20/80 % quantiles in the JSON and as error bars in the "
             "plots). Ratios in parentheses are speedups over the baseline measured in the same process: "
             "`torch_eager` (materialised logits) for losses, the plain-torch provider (`torch_chunked`, "
             "`torch_full`) for retrieval, the reference losses (`ccr_fast[torch]`) for training steps; above 1 is "
             "faster. `gemm_floor` is the speed floor (the GEMMs alone).",
             ""]
    for path in paths:
        payload = load(path)
        if payload.get("suite") == "data_scale":
            label = f" — {payload['label']}" if payload.get("label") else ""
            lines += [f"## Data-layer scale (NRCCR-layout collection, 1M captions){label}", "",
                      f"- file: `{os.path.relpath(path, md_dir)}`, command: `{payload.get('command', '')}`", ""]
            lines += data_scale_section(payload) + [""]
            continue
        if payload.get("suite") == "media":
            lines += [f"## Media in: images/s of extraction and of a vision-tower training step ({payload['tower']})",
                      "", f"- file: `{os.path.relpath(path, md_dir)}`, command: `{payload.get('command', '')}`", ""]
            lines += media_section(payload) + [""]
            continue
        if payload.get("suite") == "index":
            lines += [f"## Search index (G = {payload['G']:,} × d = {payload['d']}): exact memory-mapped "
                      "`ccr_fast.Index` vs faiss", "",
                      f"- file: `{os.path.relpath(path, md_dir)}`, command: `{payload.get('command', '')}`", ""]
            lines += index_section(payload) + [""]
            continue
        if payload.get("suite") == "side_by_side":
            scope = "each row's providers in one process" if "runs" in payload else "one process"
            lines += [f"## Side by side: `{os.path.basename(path)}` ({scope})", "",
                      f"- file: `{os.path.relpath(path, md_dir)}`, command: `{payload.get('command', '')}`", ""]
            lines += side_by_side_table(payload).splitlines() + [""]
            png = side_by_side_plot(payload, os.path.splitext(path)[0] + ".png")
            if png:
                lines += [f"![side by side]({os.path.relpath(png, md_dir)})", ""]
            continue
        env = payload["env"]
        stem = os.path.splitext(os.path.basename(path))[0]
        lines += [f"## {payload['suite']} — {env['device_name']} ({env['device']})", ""]
        lines += [f"- file: `{os.path.relpath(path, md_dir)}`, command: `{payload.get('command', '')}`",
                  f"- torch {env['torch']}, triton {env.get('triton')}, CUDA {env.get('cuda')}, python "
                  f"{env['python']}, ccr_fast {env['ccr_fast']} (git {env['git_commit']}), {env['timestamp']}",
                  f"- threads: torch {env['torch_threads']}, ccr_fast OpenMP {env.get('ccr_fast_cpu_threads')}, "
                  f"OMP_NUM_THREADS={env.get('omp_num_threads')}",
                  f"- mode: {payload.get('mode', '')}; memory column: {MEM_TEXT.get(payload.get('mem_kind'), '')}",
                  f"- machine load (1/5/15-min averages): {env.get('load_average')} at the start, "
                  f"{payload.get('load_average_after')} at the end",
                  f"- blas: {env.get('blas', 'not recorded')}"]
        for name, why in payload.get("skipped", {}).items():
            lines.append(f"- left out `{name}`: {why}")
        errors = {(r["provider"], r["status"], r.get("error") or r.get("note", "")) for r in payload["records"]
                  if r.get("status") != "ok"}
        for prov, status, err in sorted(errors):
            lines.append(f"- `{prov}` {'not run' if status == 'skipped' else status} at some points: {err}")
        lines.append("")
        lines += tables(payload)
        for png in sorted(glob.glob(os.path.join(os.path.dirname(path), f"{stem}__*.png"))):
            lines += [f"![{os.path.basename(png)}]({os.path.relpath(png, md_dir)})", ""]
    with open(md_path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return md_path


def side_by_side_plot(payload: dict, png_path: str) -> Optional[str]:
    """Horizontal bars: each workload's median time per provider (log scale), error bars 20-80 %; the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dev dependency
        return None
    work = []
    for r in payload["records"]:
        if r["workload"] not in work:
            work.append(r["workload"])
    fig, axes = plt.subplots(len(work), 1, figsize=(8, 1.0 + 0.32 * 10 * len(work) / 2), squeeze=False)
    for ax, w in zip(axes[:, 0], work):
        recs = [r for r in payload["records"] if r["workload"] == w and r.get("time_ms")]
        names = [r["provider"] for r in recs]
        med = [r["time_ms"]["median"] for r in recs]
        lo = [r["time_ms"]["median"] - r["time_ms"].get("q20", r["time_ms"]["median"]) for r in recs]
        hi = [r["time_ms"].get("q80", r["time_ms"]["median"]) - r["time_ms"]["median"] for r in recs]
        colors = ["tab:red" if n.startswith("ccr_fast") else "tab:gray" if n.startswith("gemm_floor") else "tab:blue"
                  for n in names]
        ax.barh(range(len(recs)), med, xerr=[lo, hi], color=colors)
        ax.set_yticks(range(len(recs)), names, fontsize=7)
        ax.set_xscale("log")
        ax.set_title(w, fontsize=9)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("median time (ms, log scale)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def merge_side_by_side(paths: List[str]) -> dict:
    """One side-by-side payload from several runs' JSON files (``.json.partial`` of an interrupted run and an already
    merged file accepted).

    A later file's workloads replace an earlier file's rows of the same workload. Every record gets ``run`` (index
    into ``runs``); ``runs[i]`` keeps run i's command, environment, BLAS, threads and ``uptime`` before / after (an
    interrupted run: after its last measured workload, ``complete: False``), so each row keeps its own machine load.
    """
    if not paths:
        raise ValueError("merge_side_by_side: paths is empty")
    runs, records = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"merge_side_by_side: no such file: {path}")
        p = load(path)
        if p.get("suite") != "side_by_side":
            raise ValueError(f"merge_side_by_side: {path} is not a side-by-side file (suite {p.get('suite')!r})")
        recs = p.get("records", [])
        if "runs" in p:  # an already merged file: keep its runs
            workloads = list(dict.fromkeys(r["workload"] for r in recs))
            records = [r for r in records if r["workload"] not in workloads] + [
                {**r, "run": r["run"] + len(runs)} for r in recs]
            runs += p["runs"]
            continue
        after = p.get("uptime_after") or (recs[-1].get("uptime_after_point") if recs else None) or "not recorded"
        workloads = list(dict.fromkeys(r["workload"] for r in recs))
        runs.append({"file": os.path.basename(path), "command": p.get("command", ""), "env": p.get("env", {}),
                     "blas": p.get("blas", ""), "threads": p.get("threads"), "uptime_before": p.get("uptime_before"),
                     "uptime_after": after, "complete": "uptime_after" in p, "workloads": workloads})
        records = [r for r in records if r["workload"] not in workloads] + [{**r, "run": len(runs) - 1} for r in recs]
    if not records:
        raise ValueError("merge_side_by_side: the files hold no records")
    threads = {r["threads"] for r in runs}
    if len(threads) != 1:
        raise ValueError(f"merge_side_by_side: the runs used different thread counts {sorted(threads)}")
    kept = sorted({r["run"] for r in records})
    return {"suite": "side_by_side", "env": runs[kept[-1]]["env"], "threads": threads.pop(),
            "blas": runs[kept[-1]]["blas"], "runs": runs, "records": records,
            "note": f"rows come from {len(kept)} runs made at different times, each with its own machine load: "
                    "record['run'] indexes 'runs' (command, environment, uptime before / after)"}


def _runs_lines(payload: dict) -> List[str]:
    """Per-run provenance lines of a merged side-by-side payload (see ``merge_side_by_side``)."""
    lines = [payload["note"] + ".", ""]
    used = {r.get("run") for r in payload["records"]}
    for i, run in enumerate(payload["runs"]):
        if i not in used:
            continue
        env = run["env"]
        rows = [w for w in run["workloads"] if any(r.get("run") == i and r["workload"] == w
                                                   for r in payload["records"])]
        lines += [f"- run {i + 1} (`{run['command']}`, commit {env.get('git_commit')}, {env.get('timestamp')}"
                  f"{'' if run['complete'] else ', interrupted: rows up to its last finished workload'}): "
                  f"load before `{run['uptime_before']}`, after `{run['uptime_after']}`; rows: {', '.join(rows)}.", ""]
    return lines


def side_by_side_table(payload: dict) -> str:
    """Markdown: one row per workload, ms (median) per provider and the ratios the issue's targets use."""
    rows, order = {}, []
    for r in payload["records"]:
        if r["workload"] not in rows:
            rows[r["workload"]] = {}
            order.append(r["workload"])
        rows[r["workload"]][r["provider"]] = r
    provs = []
    for w in order:
        for p in rows[w]:
            if p not in provs:
                provs.append(p)

    def ms(r):
        return r["time_ms"]["median"] if r and r.get("time_ms") else None

    env = payload.get("env", {})
    if "runs" in payload:  # merged from several runs: each run's load and commit
        head = _runs_lines(payload) + [f"{payload['threads']} threads, d=256, medians of interleaved repeats (the "
                                       "providers of one row measured in one process).", ""]
    else:
        head = [f"Machine load: before `{payload['uptime_before']}`, after `{payload['uptime_after']}`; "
                f"{payload['threads']} threads, d=256, medians of interleaved repeats (one process).", ""]
    lines = head + [
             f"Environment: torch {env.get('torch')}, OPENBLAS_CORETYPE={env.get('openblas_coretype')}, "
             f"CPU {env.get('cpu')}, commit {env.get('git_commit')}.", "",
             f"blas: {payload['blas']}", "",
             f"bf16 GEMM: {env.get('cpu_bf16_gemm', 'not recorded')}", "",
             "Baseline column: the faster of torch.compile (per shape, static, warm) in the default mode and in "
             "max-autotune-no-cudagraphs; for retrieval, faiss-cpu IndexFlatIP.", "",
             "| workload | " + " | ".join(provs) + " | auto vs best torch.compile / faiss | auto vs eager / chunked "
             "torch | auto / GEMM floor |",
             "|---" * (len(provs) + 4) + "|"]
    for w in order:
        cells = []
        for p in provs:
            r = rows[w].get(p)
            t = ms(r)
            mem = r.get("mem_bytes") if r else None
            m = f" ({mem['median'] / 2**20:.0f} MiB)" if mem else ""
            cells.append(f"{t:.0f} ms{m}" if t is not None else "–")
        auto = ms(rows[w].get("ccr_fast[auto]"))
        ratios = []
        for names in (("torch_compile", "torch_compile_max_autotune", "faiss_flat_ip"),
                      ("torch_eager", "torch_chunked")):
            timed = [(ms(rows[w].get(p)), p) for p in names if ms(rows[w].get(p))]
            base, base_name = min(timed) if timed else (None, None)
            ratios.append(f"{base / auto:.2f}× {base_name}" if auto and base else "–")
        fl = ms(rows[w].get("gemm_floor"))
        over = f"{auto / fl:.2f}×" if auto and fl else "–"
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {ratios[0]} | {ratios[1]} | {over} |")
    checks = []  # retrieval rows: the timed answers against the float64 order (ties -> lower index)
    for w in order:
        rec = next(iter(rows[w].values()))
        if "auto_exact_vs_float64_200q" in rec:
            checks.append(f"{w}: ccr_fast[auto] {'equals' if rec['auto_exact_vs_float64_200q'] else 'DIFFERS FROM'}"
                          f" the float64 order on 200 queries; faiss "
                          f"{'equals' if rec.get('faiss_exact_vs_float64_200q') else 'differs from'} it")
    if checks:
        lines += ["", "Exactness: " + "; ".join(checks) + "."]
    return "\n".join(lines) + "\n"


def media_section(r: dict) -> List[str]:
    """Markdown lines for ``benchmarks/bench_media.py``'s JSON (decode / extract / tower training step rates)."""
    lo, hi = r.get("loadavg_before", [0, 0, 0]), r.get("loadavg_after", [0, 0, 0])
    lines = [f"{r['images']} JPEGs (240-480 × 320-640 px), batch {r['batch_size']}, {r.get('cpus')} CPUs, "
             f"{r.get('torch_threads')} torch threads, OPENBLAS_CORETYPE={r.get('OPENBLAS_CORETYPE')}; load average "
             f"{lo[0]:.1f} before, {hi[0]:.1f} after (a shared machine: rates are lower bounds).", "",
             "| stage | DataLoader workers | images/s | seconds | rise of the process peak RSS (ru_maxrss) |", "| --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        mem = f"{row['peak_rss_growth_kib'] / 1024:.0f} MiB" if "peak_rss_growth_kib" in row else ""
        lines.append(f"| {row['stage']} | {row['workers']} | {row['images_per_s']:.1f} | {row['seconds']:.1f} | "
                     f"{mem} |")
    lines += ["", "`decode`: Pillow + the image processor alone; `extract`: `ccr_fast.extract_features` (fp16 `.npy`); "
              "`train_step`: forward + backward through the tower's last block (what a trained top block costs; "
              "a frozen tower runs once per image and then costs nothing per step)."]
    return lines


def data_scale_section(r: dict) -> List[str]:
    """Markdown lines for ``benchmarks/bench_data_scale.py``'s JSON (training on a large NRCCR-layout collection)."""
    gb = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    c = r["collection"]
    slope = r.get("rss_slope_bytes_per_step") or {}
    kib = lambda k: f"{slope[k] / 1024:+.1f} KiB/step" if k in slope else "not recorded"  # noqa: E731
    return [
        f"Synthetic NRCCR-layout collection: {c['items']:,} images × {c['captions_per_item']} en captions "
        f"({r['train_captions']:,} caption lines per file; en + MT + back-translation files, "
        f"{c['caption_bytes'] / 2**20:.0f} MiB of text) and {c['dim']}-d float16 features "
        f"({gb(r['feature_file_bytes'])} `.npy`, memory-mapped). NRCCR, tiny random text encoder (frozen), batch "
        f"{r['batch_size']}, {r['steps']} steps, DataLoader with {r['workers']} workers. Machine: {r['cpu_count']} "
        f"CPUs, shared; load average (1/5/15 min) before {[round(x, 1) for x in r['load_avg_before']]}, after "
        f"{[round(x, 1) for x in r['load_avg_after']]}. ccr_fast git {r.get('git_commit') or 'not recorded'}; "
        f"text-state cache: {r.get('text_state_cache') or 'not recorded'}.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| load of the training split (3 caption files parsed into compact tables) | "
        f"{r['train_split_load_seconds']:.1f} s |",
        f"| compact caption tables (3 × {r['train_captions']:,} captions) | "
        f"{r['caption_table_bytes'] / 2**20:.0f} MiB |",
        f"| steady-state throughput (steps {r['steady_from_step']}–{r['steps']}) | "
        f"{r['steady_samples_per_s']:.0f} samples/s |",
        f"| `ccr_fast.train` call (load, {r['steps']} steps, test on 500 images) | {r['train_call_seconds']:.0f} s |",
        f"| peak RSS, main process (during `train`) | {gb(r['peak_rss_main_bytes'])} |",
        f"| peak RSS, a DataLoader worker (mostly the parent's pages, shared copy-on-write) | "
        f"{gb(r['peak_rss_largest_worker_bytes'])} |",
        f"| peak summed PSS, main + workers (memory really held) | {gb(r['peak_pss_total_bytes'])} |",
        f"| growth per step over the steady-state steps: main RSS / workers' RSS / summed PSS | "
        f"{kib('main_rss')} / {kib('workers_rss')} / {kib('pss_total')} |",
        f"| feature file size | {gb(r['feature_file_bytes'])} |",
        "",
        "Feature rows are read with `os.pread` from the memory-mapped file's page cache, so the feature file is never",
        "resident in the processes: the resident set is the Python/torch runtime, the tokenizer, the compact caption",
        "tables, the model with its optimiser state, and the batches in flight"
        + (", and here the frozen encoder's unbounded token-state cache (one entry per new caption)."
           if str(r.get("text_state_cache", "")).startswith("unbounded") else
           ". The frozen encoder's token-state cache is bounded (`CCR_FAST_TEXT_CACHE_MB`) and off for a run whose "
           "training texts cannot fit in it."),
        "Summed PSS can rise while every process's RSS stays flat: pages the forked workers share with the main",
        "process become private copies when either side writes them (copy-on-write); that growth is bounded by the",
        "summed RSS.",
    ]


def index_section(r: dict) -> List[str]:
    """Markdown lines for ``benchmarks/bench_index.py``'s JSON (search engines over one synthetic gallery)."""
    mib = lambda b: "—" if b is None else f"{b / 2**20:,.0f} MiB"  # noqa: E731
    env = r.get("environment", {})
    k = r["k"]
    lines = [
        f"{r['G']:,} synthetic unit vectors of width {r['d']} (float32, {r['gallery_bytes'] / 2**20:,.0f} MiB, around "
        f"2,000 cluster centres, noise {r.get('noise', 0.6)}), {r['Q']} queries (fresh draws from the same "
        f"mixture), k = {k}, one batched call per engine and repetition, engines interleaved in one process. "
        f"`ccr_fast mmap` keeps the rows on disk and reads {r['block_rows']:,} rows at a time (resident: its ids); "
        f"IVF: `IndexIVFFlat`, {r['nlist']} lists trained on {r['train_sample']:,} rows. Recall@{k}: share of the "
        f"exact top {k} (ccr_fast's float64 order) an engine returns. Resident: the RSS the engine holds once built; peak extra: RSS growth during one search call. Machine: {env.get('cpu')}, "
        f"torch threads {env.get('torch_threads')}, faiss {r['faiss']} ({r['faiss_threads']} threads), "
        f"OPENBLAS_CORETYPE={env.get('openblas_coretype')}, shared CPUs: load average (1/5/15 min) before "
        f"{[round(x, 1) for x in (r.get('load_avg_before') or [])]}, after "
        f"{[round(x, 1) for x in (r.get('load_avg_after') or [])]}; ccr_fast git {env.get('git_commit')}.",
        "",
        f"| engine | queries/s | ms per call (20/50/80 %) | recall@{k} | resident | peak extra | build |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        t = row.get("time_ms") or {}
        qps = "—" if not row.get("queries_per_s") else f"{row['queries_per_s']:,.0f}"
        ms = "—" if not t else f"{t.get('q20', t['median']):,.0f} / {t['median']:,.0f} / " \
                              f"{t.get('q80', t['median']):,.0f}"
        lines.append(f"| {row['engine']} | {qps} | {ms} | {row[f'recall_at_{k}']:.4f} | "
                     f"{mib(row.get('resident_bytes'))} | {mib(row.get('peak_extra_bytes'))} | "
                     f"{row['build_seconds']:.1f} s |")
    return lines
