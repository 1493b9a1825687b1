"""The benchmark suite: its baselines are right (float64 references) and ``--quick`` writes sane JSON/PNG/MD."""
import glob
import json
import math
import os

import pytest
import torch

import ccr_fast
from ccr_fast import bench
from ccr_fast.bench import harness, losses, report, retrieval


def _ref_one_to_k(img, txt, scale):
    """Loop-form float64 1-to-K loss of ccr_fast.losses.one_to_k_loss (t2i_divisor="K")."""
    b, k, d = txt.shape
    z = scale * img.double() @ txt.double().reshape(b * k, d).T
    l_i2t = sum(-torch.log_softmax(z[i], 0)[i * k + j] for i in range(b) for j in range(k)) / b
    l_t2i = sum(-torch.log_softmax(z[:, c], 0)[c // k] for c in range(b * k)) / (b * k)
    return (l_i2t + l_t2i) / (2 * k)


@pytest.mark.parametrize("b,k,d", [(5, 1, 7), (4, 3, 8), (1, 2, 3)])
def test_eager_losses_match_float64_reference(b, k, d):
    img = torch.nn.functional.normalize(torch.randn(b, d), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(b, k, d), dim=-1)
    ref = _ref_one_to_k(img, txt, 7.5)
    got = losses.eager_one_to_k_loss(img.double(), txt.double(), torch.tensor(7.5, dtype=torch.float64))
    assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-6)
    if k == 1:
        clip = losses.eager_clip_loss(img.double(), txt[:, 0].double(), torch.tensor(7.5, dtype=torch.float64))
        assert torch.allclose(clip.double(), ref, rtol=1e-6, atol=1e-6)


def test_chunked_topk_and_ranks_match_full_matrix(monkeypatch):
    monkeypatch.setattr(retrieval, "CHUNK_SCORES", 40)  # several query chunks
    q = torch.randint(-2, 3, (9, 4)).float()  # integer scores: many ties
    g = torch.randint(-2, 3, (13, 4)).float()
    s = q @ g.T
    vals, idx = retrieval.torch_chunked_topk(q, g, 5)
    assert torch.equal(vals, torch.topk(s, 5, dim=1).values)
    assert torch.equal(s.gather(1, idx), vals)
    targets = torch.randint(0, 13, (9,))
    want = torch.tensor([sum(int(s[i, c] > s[i, t] or (s[i, c] == s[i, t] and c < t)) for c in range(13))
                         for i, t in enumerate(targets.tolist())])
    assert torch.equal(retrieval.torch_chunked_ranks(q, g, targets), want)


def test_full_matrix_ranks_brute_force(monkeypatch):
    monkeypatch.setattr(retrieval, "CHUNK_SCORES", 15)  # several caption chunks
    vis = torch.randint(-2, 3, (4, 3)).float()
    txt = torch.randint(-2, 3, (7, 3)).float()
    t2v = torch.tensor([3, 0, 1, 0, 1, 3, 1])  # item 2 has no caption
    a, b, c = retrieval.full_matrix_ranks(txt, vis, t2v)
    s = txt @ vis.T

    def rank(col, pos):
        return sum(int(col[j] > col[pos] or (col[j] == col[pos] and j < pos)) for j in range(len(col)))

    assert a.tolist() == [rank(s[i], int(t2v[i])) for i in range(7)]
    items = [0, 1, 3]
    all_ranks = [[rank(s[:, v], int(cap)) for cap in (t2v == v).nonzero().flatten()] for v in items]
    assert [[v for v in row if v >= 0] for row in c.tolist()] == all_ranks
    assert b.tolist() == [min(r) for r in all_ranks]


def test_quantiles_and_failing_provider_is_recorded():
    assert harness.quantiles([]) is None
    q = harness.quantiles([4.0, 1.0, 3.0, 2.0, 5.0])
    assert q["median"] == 3.0 and q["n"] == 5 and math.isclose(q["q20"], 1.8) and math.isclose(q["q80"], 4.2)

    def boom():
        raise RuntimeError("kernel exploded")

    res = harness.measure({"ok": lambda: torch.ones(8).sum(), "bad": boom}, torch.device("cpu"), reps=3,
                          min_reps=2, mem_reps=1)
    assert res["ok"]["status"] == "ok" and res["ok"]["time_ms"]["median"] > 0 and res["ok"]["time_ms"]["n"] == 3
    assert res["bad"]["status"] == "error" and "kernel exploded" in res["bad"]["error"]
    assert res["bad"]["time_ms"] is None


@pytest.mark.skipif(not harness.cpu_memory_supported(), reason="no /proc/self/clear_refs")
def test_cpu_peak_memory_sees_a_large_buffer(tmp_path):
    """In a fresh process: after a long test session, freed memory still resident in the heap can serve the buffer
    without raising the RSS high-water mark (the measurement then reads 0), so the heap must start clean."""
    import subprocess
    import sys

    n = 8 << 20  # 32 MiB of float32, touched
    code = ("import torch; from ccr_fast.bench import harness; "
            f"print(harness.peak_extra_bytes(lambda: torch.ones({n}).sum(), torch.device('cpu')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)  # outside the checkout: the package under test, not the source tree
    assert out.returncode == 0, out.stderr[-2000:]
    got = int(out.stdout.split()[-1])
    assert 0.8 * 4 * n <= got <= 1.5 * 4 * n


def test_quick_run_writes_json_plots_and_results(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (pip install '.[bench]')")
    out = str(tmp_path / "res")
    assert bench.main(["--quick", "--out", out]) == 0
    lj = json.load(open(os.path.join(out, "losses-cpu-quick.json")))
    rj = json.load(open(os.path.join(out, "retrieval-cpu-quick.json")))
    assert os.path.exists(os.path.join(out, "training-cpu-quick.json"))
    for payload in (lj, rj):
        assert payload["env"]["torch"] == torch.__version__ and payload["env"]["device"] == "cpu"
        assert payload["mem_kind"] == harness.MEM_KIND_CPU
        for r in payload["records"]:
            if r["provider"] in ("torch_eager", "gemm_floor", "torch_chunked", "faiss_flat_ip") or \
                    r["provider"].startswith("ccr_fast["):
                assert r["status"] == "ok", r
                assert r["time_ms"]["median"] > 0 and r["time_ms"]["q20"] <= r["time_ms"]["q80"]
    lprov = {r["provider"] for r in lj["records"]}
    assert {"torch_eager", "gemm_floor"} <= lprov
    if hasattr(ccr_fast.losses, "clip_loss"):
        assert {"ccr_fast[blas]", "ccr_fast[cpu]", "ccr_fast[torch]"} <= lprov
        for r in lj["records"]:
            if r["provider"].startswith("ccr_fast["):
                assert r["loss_abs_diff_vs_eager"] < 1e-4, r
    else:
        assert "ccr_fast[cpu]" in lj["skipped"]
    for r in lj["records"]:
        if r["provider"] == "torch_eager":
            assert r["speedup_vs_eager"] == 1.0
    assert {(r["op"], r["K"]) for r in lj["records"]} == {("clip", 1), ("one_to_k", 4)}
    rprov = {(r["op"], r["provider"]) for r in rj["records"]}
    assert ("topk", "torch_chunked") in rprov and ("ranks", "torch_chunked") in rprov
    if hasattr(ccr_fast.retrieval, "topk"):
        assert {("topk", "ccr_fast[cpu]"), ("ranks", "ccr_fast[cpu]"), ("eval", "ccr_fast[cpu]")} <= rprov
        assert {("topk", "ccr_fast[blas]"), ("ranks", "ccr_fast[blas]"), ("topk", "gemm_floor")} <= rprov
        tol = {"topk": 1e-4, "ranks": 0.01, "eval": 0.5}  # scores; fraction of ranks; metric points (near-ties)
        for r in rj["records"]:  # every provider computed what the plain-torch one computed
            if r["provider"] not in ("torch_chunked", "torch_full", "gemm_floor"):
                assert r["diff_vs_torch"] <= tol[r["op"]], r
    tj = json.load(open(os.path.join(out, "training-cpu-quick.json")))
    if not tj["skipped"].get("training"):
        assert {(r["method"], r["provider"]) for r in tj["records"]} == {
            (m, p) for m in ("nrccr", "ccrk") for p in ("ccr_fast[blas]", "ccr_fast[cpu]", "ccr_fast[torch]")}
        assert all(r["status"] == "ok" and r["steps_per_s"] > 0 for r in tj["records"])
    md = open(os.path.join(out, "RESULTS.md")).read()
    assert "torch_eager" in md and "| B |" in md and "peak extra memory" in md
    assert glob.glob(os.path.join(out, "losses-cpu-quick__clip*.png"))
    assert glob.glob(os.path.join(out, "retrieval-cpu-quick__topk*.png"))
    # RESULTS.md is regenerated from the JSON alone
    os.remove(os.path.join(out, "RESULTS.md"))
    assert bench.main(["--report-only", "--no-plots", "--out", out]) == 0
    assert open(os.path.join(out, "RESULTS.md")).read() == md


def test_report_tables_from_a_synthetic_payload():
    t = {"median": 2.0, "q20": 1.5, "q80": 2.5, "n": 3}
    payload = {"suite": "losses", "records": [
        {"op": "clip", "B": 8, "K": 1, "d": 4, "dtype": "fp32", "provider": "torch_eager", "status": "ok",
         "time_ms": t, "mem_bytes": {"median": 2**20, "q20": 2**20, "q80": 2**20, "n": 1}, "speedup_vs_eager": 1.0},
        {"op": "clip", "B": 8, "K": 1, "d": 4, "dtype": "fp32", "provider": "x", "status": "oom",
         "time_ms": None, "mem_bytes": None}]}
    lines = report.tables(payload)
    assert "| 8 | 2 ms (1.00×) | oom |" in lines
    assert "| 8 | 1 | oom |" in lines


def test_bad_arguments_exit_nonzero():
    with pytest.raises(SystemExit):
        bench.main(["--suite", "nope"])


def test_merge_side_by_side_keeps_each_runs_load(tmp_path):
    t = {"median": 4.0, "q20": 3.0, "q80": 5.0, "n": 3}

    def run(path, workloads, up_before, up_after=None, commit="aaa"):
        recs = [{"workload": w, "provider": p, "status": "ok", "time_ms": {**t, "median": ms}, "mem_bytes": None,
                 "uptime_after_point": f"{w} load"} for w in workloads for p, ms in (("ccr_fast[auto]", 2.0),
                                                                                    ("torch_compile", 6.0),
                                                                                    ("gemm_floor", 1.0))]
        p = {"suite": "side_by_side", "env": {"git_commit": commit}, "threads": 2, "blas": "b",
             "uptime_before": up_before, "command": f"cmd {commit}", "records": recs}
        if up_after:
            p["uptime_after"] = up_after
        with open(path, "w") as f:
            json.dump(p, f)
        return str(path)

    a = run(tmp_path / "a.json", ["CLIP", "top-10"], "load 11", "load 14", "aaa")
    b = run(tmp_path / "b.json.partial", ["top-10", "sigmoid"], "load 20", None, "bbb")  # interrupted run
    m = report.merge_side_by_side([a, b])
    assert [(r["workload"], r["run"]) for r in m["records"] if r["provider"] == "gemm_floor"] == [
        ("CLIP", 0), ("top-10", 1), ("sigmoid", 1)]  # the later run's row replaces the earlier one
    assert m["runs"][0]["uptime_after"] == "load 14" and m["runs"][0]["complete"]
    assert m["runs"][1]["uptime_after"] == "sigmoid load" and not m["runs"][1]["complete"]
    md = report.side_by_side_table(m)
    assert "load before `load 11`, after `load 14`; rows: CLIP." in md
    assert "load before `load 20`, after `sigmoid load`; rows: top-10, sigmoid." in md
    assert "interrupted" in md and "| 3.00× torch_compile |" in md
    (tmp_path / "m.json").write_text(json.dumps(m))  # merging a merged file again keeps its runs
    c = run(tmp_path / "c.json", ["CLIP"], "load 3", "load 4", "ccc")
    m2 = report.merge_side_by_side([str(tmp_path / "m.json"), c])
    assert [(r["workload"], r["run"]) for r in m2["records"] if r["provider"] == "gemm_floor"] == [
        ("top-10", 1), ("sigmoid", 1), ("CLIP", 2)]
    assert m2["runs"][2]["uptime_before"] == "load 3" and "rows: top-10, sigmoid." in report.side_by_side_table(m2)
    (tmp_path / "c.json").write_text(json.dumps({"suite": "losses", "records": []}))
    with pytest.raises(ValueError, match="suite"):
        report.merge_side_by_side([a, str(tmp_path / "c.json")])
    with pytest.raises(ValueError, match="no such file"):
        report.merge_side_by_side([str(tmp_path / "missing.json")])


def test_report_only_with_plots_over_the_shipped_records(tmp_path):
    """``bench --report-only`` (plots on) regenerates RESULTS.md from a folder holding every kind of record: suites
    without per-size records (index, media, data scale, side by side) are skipped by the size plots."""
    import shutil

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
    files = sorted(glob.glob(os.path.join(src, "*.json")))
    if not files:
        pytest.fail(f"no benchmark records under {src}")
    for f in files:
        shutil.copy(f, tmp_path)
    assert bench.main(["--report-only", "--no-plots", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    titles = [line for line in md.splitlines() if line.startswith("## ")]
    assert len(titles) == len(set(titles)) == len(files)
    try:  # the plots need the bench extra (matplotlib), which the test extra does not install
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert bench.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert glob.glob(str(tmp_path / "*.png"))
