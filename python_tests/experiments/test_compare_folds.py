"""The fold protocol of ``ccr-fast compare --folds 5``: fold indices, the frozen selection rule, the table."""
import json
import math

import numpy as np
import pytest

from ccr_fast.data.shipped import N_FOLDS, shipped_fold_indices, shipped_split_indices
from ccr_fast.experiments import compare
from ccr_fast.experiments.select import main as select_main
from ccr_fast.experiments.select import select_default


def test_folds_are_disjoint_and_cover_all_images():
    tests = [shipped_fold_indices(k, "test") for k in range(N_FOLDS)]
    assert [len(t) for t in tests] == [200] * 5
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(1000))  # disjoint and covering
    for k in range(N_FOLDS):
        parts = {s: shipped_fold_indices(k, s) for s in ("train", "val", "test")}
        assert {s: len(v) for s, v in parts.items()} == {"train": 700, "val": 100, "test": 200}
        assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1000))
        assert all(np.all(np.diff(v) > 0) for v in parts.values())  # sorted, no repeats
    vals = np.concatenate([shipped_fold_indices(k, "val") for k in range(N_FOLDS)])
    assert len(np.unique(vals)) == 500  # the rotation gives each fold its own validation images
    for s in ("train", "val", "test"):  # fold 4 is the fixed split
        assert np.array_equal(shipped_fold_indices(4, s), shipped_split_indices(s))


@pytest.mark.parametrize("fold,split", [(5, "test"), (-1, "val"), (1.0, "train"), (True, "test"), (0, "all")])
def test_fold_bad_arguments(fold, split):
    with pytest.raises(ValueError, match="fold|split"):
        shipped_fold_indices(fold, split)


def _val(row, fold, v, **extra):
    return {"row": row, "fold": fold, "val": {"mean_sumr": v, **extra}}


def test_selection_picks_the_best_mean_validation_recipe():
    recs = [_val("a", f, 100.0 + f) for f in range(5)] + [_val("b", f, 103.0) for f in range(5)]
    recs += [_val("default_plain", f, 500.0) for f in range(5)]  # a re-ranking, not a recipe
    recs += [_val("c", f, 900.0) for f in range(4)]  # missing a fold: not eligible
    sel = select_default({"records": recs}, n_folds=5)
    assert sel["winner"] == "b"
    assert sel["val_means"] == {"a": 102.0, "b": 103.0}
    tie = select_default({"records": [_val("x", 0, 1.0), _val("y", 0, 1.0)]}, n_folds=1)
    assert tie["winner"] == "x"


@pytest.mark.parametrize("record", [
    {"row": "a", "fold": 0, "val": {"mean_sumr": 1.0}, "test": {"mean": {"sumr": 2.0}}},
    {"row": "a", "fold": 0, "val": {"mean_sumr": 1.0, "test_sumr": 2.0}},
    {"row": "a", "fold": 0, "val": {"mean_sumr": 1.0}, "history": [{"epoch": 1, "test_mr": 3.0}]},
])
def test_selection_rejects_records_with_test_numbers(record, tmp_path):
    with pytest.raises(ValueError, match="test numbers"):
        select_default({"records": [record]}, n_folds=1)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"records": [record]}))
    with pytest.raises(ValueError, match="test numbers"):
        select_main([str(path), "--folds", "1"])
    with pytest.raises(ValueError, match="test numbers"):
        select_default({"records": [_val("a", 0, 1.0)], "test": {"a": 1.0}}, n_folds=1)


@pytest.mark.parametrize("bad", [{"records": [{"row": "a", "fold": 0}]}, {"records": [_val("a", 0, float("nan"))]},
                                 {"rows": []}, {"records": [_val("a", 1, 1.0)]}])
def test_selection_rejects_malformed_input(bad):
    with pytest.raises(ValueError):
        select_default(bad, n_folds=1)


def test_validation_view_has_no_test_numbers(monkeypatch):
    monkeypatch.setattr(compare, "same_recipe", lambda row: "")  # the default equals no candidate here
    saved = _saved()
    view = compare.validation_view(saved)
    assert "test" not in json.dumps(view)
    assert select_default(view)["winner"] == "default"  # val 103 > 101


def _saved():
    ref = [100.0, 102.0, 98.0, 101.0, 99.0]
    dflt = [101.0, 104.0, 99.0, 103.0, 103.0]
    recs = []
    for row, test, val in (("linear_qb", ref, 101.0), ("default", dflt, 103.0)):
        for f, t in enumerate(test):
            recs.append({"row": row, "fold": f, "overrides": {}, "wall_seconds": 10.0, "cpu_seconds": 1.0,
                         "val": {"mean_sumr": val, "choice": {"epoch": 3}}, "history": [],
                         "test": {"per_language": {}, "mean": {"sumr": t}}})
    return {"records": recs, "date": "d", "load": [1.0, 1.0, 1.0]}


def test_fold_table_mean_std_and_paired_ci_by_hand(monkeypatch):
    monkeypatch.setattr(compare, "same_recipe", lambda row: "")  # the default equals no candidate here
    monkeypatch.setattr(compare, "CANDIDATES", {})
    saved = _saved()
    summ = compare.fold_summary(saved)
    # default: mean 102, sample std sqrt((1+4+9+1+1)/4) = 2; linear_qb: mean 100, std sqrt(10/4)
    assert summ["default"]["test_mean_std"] == pytest.approx((102.0, 2.0))
    assert summ["linear_qb"]["test_mean_std"] == pytest.approx((100.0, math.sqrt(2.5)))
    # paired differences 1, 2, 1, 2, 4: mean 2, sd sqrt(6/4), half-width t(0.975, 4) = 2.776 × sd / sqrt(5)
    dm, hw = summ["default"]["diff_ci"]
    assert dm == pytest.approx(2.0)
    assert hw == pytest.approx(2.776 * math.sqrt(1.5) / math.sqrt(5))
    table = compare.render_fold_table(saved)
    assert "**102.0 ± 2.0**" in table and "**100.0 ± 1.6**" in table
    assert "+2.0 [+0.5, +3.5]" in table and "(reference)" in table
    assert "| 101.0 | 104.0 | 99.0 | 103.0 | 103.0 |" in table
    saved["selection"] = select_default(compare.validation_view(saved))
    saved["selection"]["rule"] = "r"
    head = compare.render_headline(saved)
    assert "**102.0 ± 2.0**" in head and "better by more than the fold-to-fold noise" in head and "`default`" in head
    doc = compare.render_folds(saved)
    assert doc.startswith(compare.FOLD_BEGIN) and doc.endswith(compare.FOLD_END)


def test_paired_ci_edge_cases():
    assert compare.paired_ci([1.0, 1.0]) == (1.0, 0.0)
    assert compare.paired_ci([0.0, 2.0]) == pytest.approx((1.0, 12.706 * math.sqrt(2) / math.sqrt(2)))
    with pytest.raises(ValueError):
        compare.paired_ci([1.0])


def test_run_folds_resumes_aliases_and_selects_on_validation(tmp_path, monkeypatch):
    """The fold driver without training: fake runs; the default copies its twin, derived rows use the base's
    checkpoint, a rerun trains nothing, and the selection sees validation numbers only."""
    import argparse

    calls = []

    def fake_row(key, fold, out_dir):
        calls.append((key, fold))
        val = {"linear_qb": 100.0, "ccrk_a": 101.0 + fold}.get(key, 90.0)
        return ({"row": key, "fold": fold, "overrides": compare.fold_rows()[key][1], "wall_seconds": 1.0,
                 "cpu_seconds": 1.0, "val": {"mean_sumr": val, "choice": {}}, "history": [],
                 "test": {"per_language": {}, "mean": {"sumr": 1000.0 - val}}}, f"ckpt-{key}-{fold}")

    def fake_derived(key, fold, checkpoint):
        calls.append((key, fold, checkpoint))
        return {"row": key, "fold": fold, "overrides": {"from": compare.DERIVED[key][1]}, "wall_seconds": 0.0,
                "cpu_seconds": 0.0, "val": {"mean_sumr": 50.0, "choice": {}}, "history": [],
                "test": {"per_language": {}, "mean": {"sumr": 5.0}}}

    monkeypatch.setattr(compare, "CANDIDATES", {"ccrk_a": ("a", {"method": "ccrk"})})
    monkeypatch.setattr(compare, "run_fold_row", fake_row)
    monkeypatch.setattr(compare, "run_derived", fake_derived)
    twins = {"default": "ccrk_a", "ccrk_a": "default"}  # equal configs: each finds the other
    monkeypatch.setattr(compare, "same_recipe", lambda row: twins.get(row, ""))
    monkeypatch.setattr(compare, "save_text_states", lambda path: 0)
    seen = []
    compare_select = __import__("ccr_fast.experiments.select", fromlist=["x"])
    orig = compare_select.select_default

    def spy(saved, n_folds=5):
        seen.append(json.dumps(saved))
        return orig(saved, n_folds)

    monkeypatch.setattr(compare_select, "select_default", spy)  # apply_selection reads it from the module
    out = tmp_path / "folds.json"
    args = argparse.Namespace(out=str(out), fresh=False, argv=["--folds", "5"], folds=5, threads=1, only_folds=None,
                              work=str(tmp_path / "work"))
    rows = ["linear_qb", "default", "ccrk_a", "default_plain"]
    (tmp_path / "work").mkdir()
    saved = compare.run_folds(args, rows)
    assert [c for c in calls if len(c) == 2] == [(k, f) for f in range(5) for k in ("linear_qb", "ccrk_a")]
    assert [c for c in calls if len(c) == 3] == [("default_plain", f, f"ckpt-ccrk_a-{f}") for f in range(5)]
    by = {(r["row"], r["fold"]): r for r in saved["records"]}
    assert by[("default", 3)]["same_as"] == "ccrk_a" and by[("default", 3)]["val"]["mean_sumr"] == 104.0
    assert saved["selection"]["winner"] == "ccrk_a" and saved["selection"]["val_means"]["ccrk_a"] == 103.0
    assert "default" not in saved["selection"]["val_means"]  # a copy, not a recipe of its own
    assert seen and all("test" not in s for s in seen)
    calls.clear()
    compare.run_folds(args, rows)  # resumed: nothing to train
    assert calls == []
    assert json.loads(out.read_text())["selection"] == saved["selection"]
    # derived records lost but the base row's checkpoints are on disk: only the derived rows are evaluated
    kept = json.loads(out.read_text())
    kept["records"] = [r for r in kept["records"] if r["row"] != "default_plain"]
    out.write_text(json.dumps(kept))
    for f in range(5):
        run = tmp_path / "work" / "ccrk_a" / f"run{f}"
        (run / "checkpoints" / "best").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"data": {"name": "shipped", "fold": f}}))
    compare.run_folds(args, rows)
    assert calls == [("default_plain", f, str(tmp_path / "work" / "ccrk_a" / f"run{f}" / "checkpoints" / "best"))
                     for f in range(5)]
    assert compare.find_checkpoint([str(tmp_path / "work")], "ccrk_a", 9) is None


def test_merge_records_replaces_same_row_and_fold(tmp_path):
    saved = _saved()
    other = {"records": [dict(saved["records"][0], wall_seconds=99.0), dict(saved["records"][1], fold=7)]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(other))
    n = len(saved["records"])
    merged = compare.merge_records(saved, [str(path)])
    assert len(merged["records"]) == n + 1
    recs = {(r["row"], r["fold"]): r for r in merged["records"]}
    assert recs[("linear_qb", 0)]["wall_seconds"] == 99.0 and ("linear_qb", 7) in recs


def test_compare_folds_cli_writes_the_json_and_the_docs(tmp_path, monkeypatch):
    """``ccr-fast compare --folds 5`` end to end (runs faked): the JSON holds every row × fold, the selection names
    the validation winner, and docs/results.md and README's headline are regenerated from that JSON."""
    def fake_row(key, fold, out_dir):
        val, test = {"linear_qb": (100.0, 200.0 + fold), "ccrk_a": (105.0, 220.0 + 2 * fold)}.get(key, (90.0, 150.0))
        return ({"row": key, "fold": fold, "overrides": compare.fold_rows()[key][1], "wall_seconds": 1.0,
                 "cpu_seconds": 1.0, "val": {"mean_sumr": val, "choice": {"epoch": 1}}, "history": [],
                 "test": {"per_language": {}, "mean": {"sumr": test}}}, f"ckpt-{key}-{fold}")

    monkeypatch.setattr(compare, "CANDIDATES", {"ccrk_a": ("a", {"method": "ccrk"})})
    monkeypatch.setattr(compare, "run_fold_row", fake_row)
    monkeypatch.setattr(compare, "same_recipe", lambda row: {"default": "ccrk_a", "ccrk_a": "default"}.get(row, ""))
    monkeypatch.setattr(compare, "save_text_states", lambda path: 0)
    out, doc, readme = tmp_path / "folds.json", tmp_path / "results.md", tmp_path / "README.md"
    readme.write_text(f"# x\n\n{compare.HEAD_BEGIN}\nold headline\n{compare.HEAD_END}\n\nrest\n")
    argv = ["--folds", "5", "--rows", "linear,linear_qb,default,ccrk_a", "--out", str(out), "--doc", str(doc),
            "--readme", str(readme), "--work", str(tmp_path)]
    assert compare.main(argv) == 0
    saved = json.loads(out.read_text())
    got = sorted((r["row"], r["fold"]) for r in saved["records"])
    assert got == sorted((row, f) for row in ("linear", "linear_qb", "default", "ccrk_a") for f in range(5))
    assert saved["selection"]["winner"] == "ccrk_a" and saved["protocol"]["folds"] == 5
    text = doc.read_text()
    assert compare.FOLD_BEGIN in text and "**224.0 ± 3.2**" in text  # ccrk_a: 220, 222, ..., 228
    head = readme.read_text()
    assert "old headline" not in head and "rest" in head
    assert "**224.0 ± 3.2**" in head and "**202.0 ± 1.6**" in head and "`ccrk_a`" in head
    # regenerated from the JSON alone: the same docs
    doc.write_text("")
    assert compare.main(argv + ["--from-json"]) == 0
    assert compare.render_folds(saved) in doc.read_text()
