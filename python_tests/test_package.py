"""The package as users get it: the installed wheel, imported from outside the checkout.

* every ``ccr_fast`` module imports from a directory outside the checkout (optional dependencies excepted);
* with ``CCR_FAST_REQUIRE_INSTALLED=1`` (set by ``.ci/run``), the ``ccr_fast`` under test is the installed one,
  not the source tree;
* a wheel built from this checkout holds every subpackage of the source tree, and installed into a fresh virtual
  environment it imports every module and runs the CLI from outside the checkout;
* the CLI turns configuration errors into one line and exit code 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import ccr_fast

REPO = Path(__file__).resolve().parents[1]
IN_CHECKOUT = (REPO / "pyproject.toml").is_file() and (REPO / "ccr_fast").is_dir()

# Top-level packages that some modules import and that the base install does not require.
OPTIONAL = ("triton", "faiss", "matplotlib", "h5py")

# Run inside a fresh interpreter: import every ccr_fast module; print a JSON report.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys, traceback
import ccr_fast
names, failed, optional = [], {}, {}
for info in pkgutil.walk_packages(ccr_fast.__path__, "ccr_fast."):
    if info.name.endswith("__main__"):
        continue
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        (optional if root in OPTIONAL else failed)[info.name] = repr(exc)
    except Exception as exc:
        failed[info.name] = traceback.format_exc()
print(json.dumps({"file": ccr_fast.__file__, "modules": names, "failed": failed, "optional": optional,
                  "train_callable": callable(ccr_fast.train), "evaluate_callable": callable(ccr_fast.evaluate)}))
"""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(extra)
    return env


def _import_all(python: str, cwd: Path) -> dict:
    code = f"OPTIONAL = {OPTIONAL!r}\n" + IMPORT_ALL
    out = subprocess.run([python, "-c", code], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _source_modules() -> set:
    """Dotted names of every module in the checkout's ccr_fast/ (what the wheel must hold)."""
    pkg = REPO / "ccr_fast"
    names = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in pkg.rglob("*.py")
             if "__pycache__" not in p.parts}
    return {n[: -len(".__init__")] if n.endswith(".__init__") else n for n in names}


def test_backends_report():
    info = ccr_fast.backends()
    assert {"cpu", "cuda", "triton", "torch"} <= set(info)
    assert info["torch"]["usable"] is True
    assert info["cpu"]["compiled"] is True, info["cpu"]["detail"]


def test_public_entry_points_stay_functions():
    import importlib

    for name in ("ccr_fast.training", "ccr_fast.eval", "ccr_fast.losses", "ccr_fast.metrics", "ccr_fast.retrieval"):
        importlib.import_module(name)
    assert callable(ccr_fast.train) and callable(ccr_fast.evaluate)
    assert ccr_fast.train.__module__ == "ccr_fast" and ccr_fast.evaluate.__module__ == "ccr_fast"


def test_under_test_is_the_installed_package():
    """CI sets CCR_FAST_REQUIRE_INSTALLED=1: the tests must not run against the source tree."""
    where = Path(ccr_fast.__file__).resolve()
    if os.environ.get("CCR_FAST_REQUIRE_INSTALLED") != "1":
        pytest.skip(f"CCR_FAST_REQUIRE_INSTALLED is not set (ccr_fast under test: {where})")
    assert not (IN_CHECKOUT and REPO in where.parents), (
        f"ccr_fast under test is the source tree ({where}), not the installed package")


def test_every_module_imports_from_outside_the_checkout(tmp_path):
    report = _import_all(sys.executable, tmp_path)
    assert not report["failed"], report["failed"]
    assert report["train_callable"] and report["evaluate_callable"]
    for needed in ("ccr_fast.data", "ccr_fast.training", "ccr_fast.eval", "ccr_fast.methods", "ccr_fast.ops"):
        assert needed in report["modules"], f"{needed} missing from {report['file']}"


def test_cli_config_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ccr_fast", "train", "optim.lr=abc"], cwd=tmp_path,
                         env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "optim.lr" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    dbg = subprocess.run([sys.executable, "-m", "ccr_fast", "train", "optim.lr=abc", "--debug"], cwd=tmp_path,
                         env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def test_cli_unknown_key_and_missing_file(tmp_path):
    bad_key = subprocess.run([sys.executable, "-m", "ccr_fast", "train", "no_such_key=1"], cwd=tmp_path,
                             env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert bad_key.returncode == 2 and "no_such_key" in bad_key.stderr and "Traceback" not in bad_key.stderr
    missing = subprocess.run([sys.executable, "-m", "ccr_fast", "train", "--config", str(tmp_path / "nope.yaml")],
                             cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr
    # A shipped config by name, from outside the checkout: it loads (the bad override is what fails) ...
    named = subprocess.run([sys.executable, "-m", "ccr_fast", "train", "--config", "nrccr_multi30k_de",
                            "optim.lr=abc"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert named.returncode == 2 and "optim.lr" in named.stderr and "Traceback" not in named.stderr, named.stderr
    # ... and an unknown name lists the available ones.
    unknown = subprocess.run([sys.executable, "-m", "ccr_fast", "train", "--config", "nrccr_multi30k_xx"],
                             cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert unknown.returncode == 2 and "nrccr_multi30k_de" in unknown.stderr, unknown.stderr


@pytest.mark.slow
@pytest.mark.skipif(not IN_CHECKOUT, reason="needs the source checkout to build a wheel from")
def test_wheel_in_fresh_venv(tmp_path):
    """Build a (CPU-only) wheel from the checkout, install it into a fresh venv, import everything from outside."""
    pytest.importorskip("scikit_build_core", reason="building the wheel here needs scikit-build-core")
    pytest.importorskip("pybind11", reason="building the wheel here needs pybind11")
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w",
         str(wheels), "--config-settings", f"build-dir={tmp_path / 'build'}"],
        cwd=tmp_path, env=_clean_env(CCR_FAST_CUDA="OFF", PIP_DISABLE_PIP_VERSION_CHECK="1"),
        capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-4000:]
    (wheel,) = wheels.glob("ccr_fast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n[:-3].replace("/", ".") for n in zf.namelist() if n.endswith(".py")}
        configs_in_wheel = {Path(n).name for n in zf.namelist() if n.startswith("ccr_fast/configs/")}
    shipped = {p.name for p in (REPO / "ccr_fast" / "configs").glob("*.yaml")}
    assert shipped and shipped <= configs_in_wheel, f"configs missing from the wheel: {sorted(shipped - configs_in_wheel)}"
    in_wheel = {n[: -len(".__init__")] if n.endswith(".__init__") else n for n in in_wheel}
    missing = sorted(_source_modules() - in_wheel)
    assert not missing, f"modules of the source tree missing from the wheel: {missing}"

    # A fresh venv. Its own site-packages holds only ccr_fast; the dependencies (torch, transformers, ...) are
    # borrowed from this environment through a .pth file, which sorts after the venv's own site-packages.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], cwd=tmp_path, env=_clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-4000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    report = _import_all(str(py), outside)
    assert Path(report["file"]).resolve().is_relative_to(site.resolve()), report["file"]
    assert not report["failed"], report["failed"]
    expected = {m for m in _source_modules() if not m.endswith("__main__")} - {"ccr_fast"}
    assert not sorted(expected - set(report["modules"])), sorted(expected - set(report["modules"]))
    cli = subprocess.run([str(py), "-m", "ccr_fast", "train", "optim.lr=abc"], cwd=outside, env=_clean_env(),
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 2 and cli.stderr.startswith("error:"), cli.stderr[-2000:]
