"""The package stays readable: the code map of docs/development.md lists exactly the modules that exist, modules
stay small, imports flow one way (cli → report/audit/serve → infer → engine → rundir → prep → data → core), and no
module reaches itself through imports."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "maskcls"
MAX_LINES = 310  # "~300 lines": a module that needs more says why in LONG_MODULES
LONG_MODULES: dict[str, str] = {
    "engine/lr_find.py": "the sweep, its stopping rule, the two suggestion rules and their plot: one command's parts",
}

# Which top-level parts a part may import (besides itself). Core modules import only core.
CORE = {"config", "config_io", "task", "errors", "fsutil", "progress", "metrics"}
ALLOWED = {
    "core": {"core"},
    "data": {"core"},
    "models": {"core"},
    "prep": {"core", "data"},
    "rundir": {"core", "data", "models", "prep"},
    "engine": {"core", "data", "models", "prep", "rundir"},
    "infer": {"core", "data", "models", "prep", "rundir", "engine"},
    "synth": {"core"},
}


def test_top_level_holds_few_modules():
    """A newcomer reads the top level first: at most 8 modules there, packages hold the rest."""
    top = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 8, top


def _modules() -> list[str]:
    """Every module of the package that holds code (relative paths), empty __init__ files aside."""
    out = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).as_posix()
        if rel in ("__init__.py", "__main__.py") or (p.name == "__init__.py" and not p.read_text().strip()):
            continue
        out.append(rel)
    return out


def _code_map() -> list[str]:
    text = (ROOT / "docs" / "development.md").read_text()
    block = re.search(r"<!-- code-map -->\n```\n(.*?)```\n<!-- /code-map -->", text, re.S).group(1)
    paths, stack = [], []
    for line in block.splitlines()[1:]:  # the first line is src/maskcls/
        m = re.match(r"^((?:│   |    )*)(?:├── |└── )(\S+)", line)
        assert m, f"code map line not in tree form: {line!r}"
        depth, name = len(m.group(1)) // 4, m.group(2)
        stack = stack[:depth] + [name.rstrip("/")]
        if name.endswith(".py"):
            paths.append("/".join(stack))
    return paths


def test_readme_code_map_lists_every_module_once():
    listed = _code_map()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == _modules(), (f"missing from the code map: {sorted(set(_modules()) - set(listed))}; "
                                          f"listed but absent: {sorted(set(listed) - set(_modules()))}")


def test_modules_stay_small():
    long = {m: n for m in _modules() if (n := len((PKG / m).read_text().splitlines())) > MAX_LINES}
    unexplained = {m: n for m, n in long.items() if m not in LONG_MODULES}
    assert not unexplained, f"modules over {MAX_LINES} lines (split them, or say why in LONG_MODULES): {unexplained}"


def _part(rel: str) -> str:
    top = rel.split("/")[0].removesuffix(".py")
    return "core" if top in CORE or top == "__version__" else top  # the package root (__version__) is core


def _imported_parts(path: Path) -> set[str]:
    """Top-level maskcls parts a module imports (module level and inside functions alike)."""
    rel_parts = path.relative_to(PKG).parts
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel_parts[:-1])[: len(rel_parts) - node.level]
            target = base + (node.module.split(".") if node.module else [node.names[0].name])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maskcls"):
            target = node.module.split(".")[1:] or [node.names[0].name]
        else:
            continue
        if target:
            parts.add(_part(target[0] + ("" if len(target) > 1 else ".py")))
    return parts


def test_imports_flow_one_way():
    bad = []
    for rel in _modules():
        part = _part(rel)
        if part not in ALLOWED:
            continue  # cli, bench and the top-level user-facing modules may import anything below them
        for target in _imported_parts(PKG / rel) - {part}:
            if target not in ALLOWED[part]:
                bad.append(f"{rel} imports {target}")
    assert not bad, "imports against the layering: " + "; ".join(bad)


def _module_of(parts: list[str]) -> str | None:
    """The module file (relative path) that dotted ``parts`` under maskcls name, or None."""
    if not parts:
        return "__init__.py"
    path = "/".join(parts)
    if (PKG / f"{path}.py").is_file():
        return f"{path}.py"
    if (PKG / path / "__init__.py").is_file():
        return f"{path}/__init__.py"
    return None


def _imported_modules(rel: str) -> set[str]:
    """Every maskcls module ``rel`` imports: at module level, inside functions and under TYPE_CHECKING alike; a
    ``from PKG import name`` counts name's module when it is one, else PKG's __init__."""
    pkg = rel.split("/")[:-1]
    out = set()
    for node in ast.walk(ast.parse((PKG / rel).read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = pkg[: len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "maskcls":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                found = _module_of(target + [alias.name]) or _module_of(target)
                if found:
                    out.add(found)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "maskcls" and (found := _module_of(alias.name.split(".")[1:])):
                    out.add(found)
    out.discard(rel)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_files():
    """No module reaches itself through imports, counting those inside functions and under TYPE_CHECKING: a
    circle means two modules each need the other, so neither can be read (or changed) alone. Package __init__ files
    that re-export their modules are left out (importing a package runs its __init__, not the other way round)."""
    modules = [m for m in _modules() if not m.endswith("__init__.py")]
    graph = {m: {t for t in _imported_modules(m) if not t.endswith("__init__.py")} for m in modules}
    assert _cycles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a.py": {"b.py"}, "b.py": {"c.py"}, "c.py": {"a.py"}, "d.py": {"a.py"}}) == [
        ["a.py", "b.py", "c.py"]]
    assert _imported_modules("engine/trainer/fold.py") >= {"engine/trainer/callbacks.py", "engine/trainer/loop.py"}
