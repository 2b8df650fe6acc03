"""The package stays readable: the README's code map lists exactly the modules that exist, modules
stay small, and imports flow one way (cli → report/audit/serve → infer → engine → prep → data → core)."""
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
CORE = {"config", "config_io", "task", "errors", "fsutil", "progress"}
ALLOWED = {
    "core": {"core"},
    "data": {"core"},
    "models": {"core"},
    "prep": {"core", "data"},
    "engine": {"core", "data", "models", "prep"},
    "infer": {"core", "data", "models", "prep", "engine"},
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
    text = (ROOT / "README.md").read_text()
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
    assert sorted(listed) == _modules(), (f"missing from the README code map: {sorted(set(_modules()) - set(listed))}; "
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
