"""Every ``*.md`` document that a project file cites exists in the project.

A citation is a path-like token ending in ``.md`` (``docs/methods.md``, ``interop.md`` in a Markdown link). It
resolves relative to the citing file's folder or to the project root. Not citations: a bare file name inside a
Python string literal (a name the code reads or writes, e.g. ``"results.md"`` joined to a folder) and the names of
files the tools write into an output folder (:data:`OUTPUT_NAMES`).

Two parts:
* the package's own files (Python, configs) — always, also against the installed wheel: a citation must resolve
  inside the package or name one of :data:`PROJECT_DOCS` (the project documents outside the package; the
  checkout part checks that they exist);
* the source tree (``ccr_fast/``, ``docs/``, ``README.md``, ``tools/``, ``benchmarks/``, ``python_tests/``,
  ``csrc/``) — whenever it is present (skipped only where the tests run without it).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import ccr_fast

PKG = Path(ccr_fast.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]
HAS_SOURCE = (REPO / "pyproject.toml").is_file() and (REPO / "docs").is_dir() and (REPO / "ccr_fast").is_dir()

# Project documents outside the package that package files may cite (they are not in the wheel).
PROJECT_DOCS = {"README.md", "data/README.md", "benchmarks/RESULTS.md", "docs/methods.md", "docs/training.md",
                "docs/results.md", "docs/interop.md", "docs/gpu.md", "docs/cuda.md", "docs/triton.md",
                "docs/exactness.md", "docs/precision.md"}
# Files the tools write into an output folder (``ccr-fast bench`` -> <out>/RESULTS.md, ``gpu-check`` ->
# <out>/benchmarks.md): named, not cited.
OUTPUT_NAMES = {"RESULTS.md", "benchmarks.md"}
SOURCE_PARTS = ["ccr_fast", "docs", "README.md", "tools", "benchmarks", "python_tests", "csrc"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".cpp", ".cu", ".h", ".cuh", ".sh", ".json", ".in"}
# A path-like token ending in .md, not part of a URL or a longer word.
CITATION = re.compile(r"(?<![\w/.:~-])((?:\.\.?/)*[\w-][\w.-]*(?:/[\w.-]+)*\.md)(?![\w-])")


def citations(path: Path):
    """``(line number, token)`` of every cited ``.md`` path in ``path`` (see the module docstring)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    out = []
    for m in CITATION.finditer(text):
        tok = m.group(1)
        before, after = text[m.start() - 1: m.start()], text[m.end(): m.end() + 1]
        if path.suffix == ".py" and before in "\"'" and before and after == before and "/" not in tok:
            continue  # a file name in a string literal the code builds a path from
        if tok in OUTPUT_NAMES:
            continue
        out.append((text.count("\n", 0, m.start()) + 1, tok))
    return out


def _text_files(root: Path):
    if root.is_file():
        yield root
        return
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts:
            yield p


def test_citation_pattern():
    assert [t for _, t in _cites_of("see docs/methods.md, [x](interop.md) and ../README.md.")] == [
        "docs/methods.md", "interop.md", "../README.md"]
    assert _cites_of("https://github.com/x/y/blob/main/README.md and api.md's key") == [(1, "api.md")]
    assert _cites_of("RESULTS.md is written to <out>") == []


def _cites_of(text: str, suffix: str = ".md"):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        p.write_text(text)
        return citations(p)


def test_package_files_cite_only_documents_the_project_has():
    """Runs against whichever ccr_fast is imported (the installed wheel in CI)."""
    files = list(_text_files(PKG))
    assert any(p.suffix == ".yaml" for p in files) and any(p.suffix == ".py" for p in files)
    bad = []
    for p in files:
        for line, tok in citations(p):
            inside = [(p.parent / tok).resolve(), (PKG.parent / tok).resolve()]
            if any(c.is_file() and PKG in c.parents for c in inside):
                continue
            if tok in PROJECT_DOCS:
                continue
            bad.append(f"{p.relative_to(PKG.parent)}:{line}: {tok}")
    assert not bad, "package files cite documents that are neither in the package nor in PROJECT_DOCS:\n" + \
        "\n".join(bad)


@pytest.mark.skipif(not HAS_SOURCE, reason="needs the source tree (docs/, README.md) next to python_tests/")
def test_source_tree_cites_only_documents_that_exist():
    missing_docs = sorted(d for d in PROJECT_DOCS if not (REPO / d).is_file())
    assert not missing_docs, f"PROJECT_DOCS lists documents the project does not have: {missing_docs}"
    bad = []
    for part in SOURCE_PARTS:
        for p in _text_files(REPO / part):
            if p.resolve() == Path(__file__).resolve():
                continue  # this file's examples
            for line, tok in citations(p):
                if (p.parent / tok).is_file() or (REPO / tok).is_file():
                    continue
                bad.append(f"{p.relative_to(REPO)}:{line}: {tok}")
    assert not bad, "cited documents that do not exist in the project:\n" + "\n".join(bad)
