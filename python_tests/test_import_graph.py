"""No import cycles among ccr_fast's modules (module-level imports, read from the sources with ``ast``); imports
made inside functions are allowed to point back (they run after every module has loaded)."""
import ast
from pathlib import Path

import ccr_fast

ROOT = Path(ccr_fast.__file__).resolve().parent


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict:
    mods = {_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = list(tree.body) + [n for b in tree.body if isinstance(b, (ast.If, ast.Try)) for n in ast.walk(b)]
        for node in top:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_level_import_cycles():
    graph = _graph()
    assert "ccr_fast.training.loop" in graph and "ccr_fast.eval.scoring" in graph["ccr_fast.training.loop"]
    assert _cycles(graph) == []


def test_eval_never_imports_training():
    """Evaluation is below training (architecture revision 3): no module of ccr_fast/eval imports ccr_fast.training,
    at module level or inside a function (ccr_fast.evaluate, which loads checkpoints, lives in training/)."""
    files = sorted((ROOT / "eval").rglob("*.py"))
    assert len(files) >= 5  # the folder was found
    bad = {}
    for path in files:
        name = _name(path)
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = pkg.split(".")
                base = (".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            hits = [t for t in targets if t == "ccr_fast.training" or t.startswith("ccr_fast.training.")]
            if hits:
                bad.setdefault(name, []).extend(hits)
    assert bad == {}


def _all_imports(path: Path, root: Path = ROOT) -> set:
    """Every module a source file imports, at any depth (function-level imports included), as absolute names."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def test_backends_never_import_ops():
    """The backends are the lower layer: nothing in ccr_fast/backends imports ccr_fast.ops (nor the public modules
    built on it), at module level or inside a function."""
    upper = ("ccr_fast.ops", "ccr_fast.losses", "ccr_fast.retrieval", "ccr_fast.metrics")
    bad = {}
    files = sorted((ROOT / "backends").rglob("*.py"))
    assert len(files) > 10  # the folder was found
    for path in files:
        hits = sorted(m for m in _all_imports(path) if m.startswith(upper))
        if hits:
            bad[_name(path)] = hits
    assert bad == {}


def test_upward_import_detector_sees_a_planted_one(tmp_path):
    (tmp_path / "ccr_fast" / "backends").mkdir(parents=True)
    f = tmp_path / "ccr_fast" / "backends" / "x.py"
    f.write_text("def g():\n    from ..ops._common import acc_dtype\n", encoding="utf-8")
    assert "ccr_fast.ops._common" in _all_imports(f, tmp_path / "ccr_fast")
