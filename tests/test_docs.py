"""The docs cannot go stale silently: generated blocks are current, every output line they quote is one the code
still prints, every relative link and #anchor resolves, and the README stays a front door (≤ 220 lines).

No training, no network: it reads README.md, docs/ and the source."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "maskcls"
CODE = (SRC, ROOT / "scripts")  # what prints: the package, and the measuring scripts the docs quote
FIGURE = re.compile(r"(?<![\w.])[<>]?\d+(?:\.\d+)?(?![\w.])")  # 0.9851, 5.39, 2000; not the 1 of F1
README_MAX_LINES = 220
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
OUTPUT_LANGS = {"", "text", "console", "output"}  # code blocks that show what a command printed


def _doc_files(history: bool = True) -> list[Path]:
    docs = sorted((ROOT / "docs").rglob("*.md"))
    return [ROOT / "README.md"] + [p for p in docs if history or "history" not in p.relative_to(ROOT / "docs").parts]


def _update_docs():
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------ generated blocks
def test_generated_blocks_are_current():
    """README's demo block, docs/results.md's tables and docs/configuration.md's table are what
    scripts/update_docs.py makes from docs/recorded/ and the config dataclasses."""
    stale = [str(p.relative_to(ROOT)) for p, text in _update_docs().rendered().items()
             if p.read_text(encoding="utf-8") != text]
    assert not stale, f"generated blocks are stale in {stale}: run python scripts/update_docs.py"


def test_a_recorded_quality_bench_becomes_rows(tmp_path):
    """The quality bench's own output (this round's out-of-fold form), saved under docs/recorded/quality/, becomes
    one row per set with its out-of-fold macro F1."""
    docs = _update_docs()
    (tmp_path / "q.txt").write_text(
        "benchmark: quality\nmachine: Zen 3 EPYC\nprecision: fp32\ndate: 2026-12-08 10:00 UTC\n"
        "command: maskcls bench quality\nsource: quality.md#current-results\n--- output\n"
        "quality bench, quick budget (data.image_size=128 train.epochs=3): folds 0, 1, 2 of 5, seed(s) 719; F1 = "
        "validation macro F1 (the run's valid_tta view), out-of-fold = the folds' best epochs pooled\n"
        "quality, out-of-fold macro F1: mask3dev 0.9001, agegender6dev 0.6902\n")
    table = docs.render_quality([docs.read_record(tmp_path / "q.txt")])
    assert "| mask3dev | **0.9001** | out of fold over folds 0, 1, 2, quick budget, defaults | 719 |" in table
    assert "| agegender6dev | **0.6902** |" in table


def test_a_quality_bench_with_a_variant_becomes_rows_for_both_in_their_precisions(tmp_path):
    """With ``--set``, the bench ends with the variant's line; both become rows, the variant's in the precision
    the header names for it."""
    docs = _update_docs()
    (tmp_path / "q.txt").write_text(
        "benchmark: quality\nmachine: Zen 4 EPYC\nprecision: fp32\nvariant precision: bf16 autocast\n"
        "date: 2026-12-08 10:00 UTC\ncommand: maskcls bench quality --set train.mixed_precision=bf16\n"
        "source: quality.md#current-results\n--- output\n"
        "quality bench, standard budget (data.image_size=128 train.epochs=10): folds 0, 1, 2 of 5, seed(s) 719; F1 = "
        "validation macro F1 (the run's valid_tta view), out-of-fold = the folds' best epochs pooled\n"
        "quality, out-of-fold macro F1: mask3dev 0.9301\n"
        "quality of the variant, out-of-fold macro F1: mask3dev 0.9250 (variant: train.mixed_precision=bf16)\n")
    table = docs.render_quality([docs.read_record(tmp_path / "q.txt")])
    assert "| mask3dev | **0.9301** | out of fold over folds 0, 1, 2, standard budget, defaults | 719 | " \
           "[Zen 4 EPYC](#machines) | fp32 |" in table
    assert "| mask3dev | **0.9250** | out of fold over folds 0, 1, 2, standard budget, " \
           "`train.mixed_precision=bf16` | 719 | [Zen 4 EPYC](#machines) | bf16 autocast |" in table


def test_a_quality_bench_with_a_base_becomes_rows_for_the_base_and_the_variant(tmp_path):
    """With ``--base-set``, the base's line names its overrides; both become rows labelled with them, the base's
    first, and no row claims to be the defaults."""
    docs = _update_docs()
    (tmp_path / "q.txt").write_text(
        "benchmark: quality\nmachine: Zen 3 EPYC\nprecision: fp32\ndate: 2026-12-08 10:00 UTC\n"
        "command: maskcls bench quality --budget standard --base-set train.epochs=20 --set train.epochs=30\n"
        "source: quality.md#current-results\n--- output\n"
        "quality bench, standard budget (data.image_size=128 train.epochs=10): folds 0 of 5, seed(s) 719; F1 = "
        "validation macro F1 (the run's valid_tta view), out-of-fold = the folds' best epochs pooled\n"
        "quality of the variant, out-of-fold macro F1: mask3dev 0.9250 (variant: train.epochs=30)\n"
        "quality of the base, out-of-fold macro F1: mask3dev 0.9301 (base: train.epochs=20)\n")
    table = docs.render_quality([docs.read_record(tmp_path / "q.txt")])
    base = "| mask3dev | **0.9301** | out of fold over folds 0, standard budget, `train.epochs=20` | 719 |"
    variant = "| mask3dev | **0.9250** | out of fold over folds 0, standard budget, `train.epochs=30` | 719 |"
    assert base in table and variant in table and table.index(base) < table.index(variant)
    assert "defaults" not in table


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move depth into docs/"
    first_screen = "\n".join(lines[:70])
    assert "make demo" in first_screen and "## Your own data" in first_screen and "CSV" in first_screen


# ------------------------------------------------------------------------------------------ quoted output lines
def _strip_fences(text: str) -> list[tuple[str, str | None]]:
    """(line, code-block language or None outside a fenced block) for every line of a markdown file."""
    out, lang = [], None
    for line in text.splitlines():
        m = FENCE.match(line.strip())
        if m:
            lang = None if lang is not None else m.group(2).lower()
            continue
        out.append((line, lang))
    return out


def _is_metric_line(line: str) -> bool:
    """A line naming a figure: ``… vs …: 1.23``, ``… speedup …: 1.23`` or ``… macro F1 …: 0.97``."""
    i = line.find(": ")
    return i > 0 and bool(FIGURE.search(line, i + 2)) and any(k in line for k in (" vs ", "speedup", "macro F1"))


def _normalise(line: str) -> str:
    return line.strip().replace("X.XX", "0.00").replace("…", "0")


def quoted_output_lines() -> list[tuple[str, str]]:
    """(where, line) for every output line quoted in README.md, docs/ (the journals of docs/history/ aside, which
    keep what earlier code printed) and the recorded outputs of docs/recorded/."""
    found = []
    for path in _doc_files(history=False):
        rel = str(path.relative_to(ROOT))
        lines = _strip_fences(path.read_text(encoding="utf-8"))
        spans = [line for line, lang in lines if lang in OUTPUT_LANGS]
        prose = "\n".join(line if lang is None else "" for line, lang in lines)
        for paragraph in prose.split("\n\n"):  # inline code spans, which may wrap onto the next line
            spans += [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", paragraph)]
        found += [(rel, _normalise(s)) for s in spans if _is_metric_line(_normalise(s))]
    for path in sorted((ROOT / "docs" / "recorded").rglob("*.txt")):
        text = path.read_text(encoding="utf-8")
        if "\n--- output\n" in text:
            body = text.split("\n--- output\n", 1)[1]
            found += [(str(path.relative_to(ROOT)), _normalise(s)) for s in body.splitlines()
                      if _is_metric_line(_normalise(s))]
    return found


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                ids.add(id(first.value))
    return ids


def source_templates(*roots: Path) -> list[tuple[re.Pattern, int]]:
    """Every line the code can print, as (regex, number of fixed characters): each f-string and string
    constant under ``roots`` (default: src/maskcls and scripts; docstrings aside), its ``{…}`` fields matching
    anything, one template per line."""
    out = []
    for py in sorted(p for root in (roots or CODE) for p in root.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        docs = _docstring_ids(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = re.sub(r"\{[^{}]*\}", "\0", node.value)
            else:
                continue
            for piece in text.split("\n"):
                fixed = len(piece.replace("\0", "").strip())
                if fixed >= 4:
                    out.append((re.compile(".*?".join(re.escape(p) for p in piece.lstrip().split("\0"))), fixed))
    return out


def printed_by_code(line: str, templates: list[tuple[re.Pattern, int]]) -> bool:
    """Whether some template prints ``line``'s label: the text up to its first figure after ': ' (or at least up
    to that ': ', for a line whose figures are joined on after it), with most of the label fixed text."""
    colon = line.find(": ") + 2
    figure = FIGURE.search(line, colon)
    label = figure.start() if figure else colon
    for rx, fixed in templates:
        m = rx.match(line)
        if m and fixed >= 0.6 * colon and (m.end() >= label or m.end() == colon):
            return True
    return False


def test_quoted_output_lines_are_printed_by_the_code():
    """A figure's line in the docs (``serve speedup vs naive server: 5.39``, ``validation macro F1 (…): 0.98``)
    must still be printed by some f-string or format string in src/: when the code renames a metric or a line,
    the docs that quote it (and the recorded outputs behind README and docs/results.md) fail here, and the
    fix is to measure again (or to drop the quote), not to edit the recorded output."""
    templates = source_templates()
    lines = quoted_output_lines()
    assert len(lines) >= 10, "the scan found almost no quoted output lines: is the metric-line rule broken?"
    stale = sorted({f"{where}: {line}" for where, line in lines if not printed_by_code(line, templates)})
    assert not stale, "output lines the code no longer prints:\n" + "\n".join(stale)


def test_the_output_line_check_finds_a_stale_line(tmp_path):
    (tmp_path / "bench.py").write_text(
        'def ratio_line(name, ratio):\n    return f"{name} speedup vs reference: {ratio:.2f}"\n'
        'def serve(r):\n    """Ends with ``serve speedup vs one-at-a-time: X.XX`` (a docstring: not printed)."""\n'
        '    return f"serve speedup vs naive server: {r:.2f}"\n'
        'def q(s):\n    return f"quality, out-of-fold macro F1: " + ", ".join(s)\n'
        'def kv(k, v):\n    return f"{k}: {v}"\n')
    t = source_templates(tmp_path)
    assert printed_by_code("stats speedup vs reference: 35.52", t)
    assert printed_by_code("serve speedup vs naive server: 5.39", t)
    assert printed_by_code("quality, out-of-fold macro F1: mask3dev 0.9003, agegender6dev 0.6870", t)
    assert not printed_by_code("serve speedup vs one-at-a-time: 1.34", t)  # the docstring and k: v don't count
    assert not printed_by_code("validation macro F1 (fold 0, best epoch 7): 0.9851", t)
    assert _is_metric_line("throughput vs timm train.py: 1.31 (training images/s: maskcls 87.7, timm 66.8)")
    assert not _is_metric_line("maskcls demo finished in 208 s (synth 6s, prepare 2s)")


# ------------------------------------------------------------------------------------------ links and anchors
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown links and code marks dropped, lower case, punctuation removed
    (letters, digits, '_', '-' and spaces kept), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file: its headings' slugs, repeats numbered as GitHub does (-1, -2, …)."""
    seen: dict[str, int] = {}
    out = set()
    for line, lang in _strip_fences(path.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if lang is None and m:
            s = slug(m.group(2))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links and #anchors in ``path`` (outside code) that point at no file or no heading."""
    bad = []
    for line, lang in _strip_fences(path.read_text(encoding="utf-8")):
        if lang is not None:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            if problem := _target_problem(target, path, root):
                bad.append(problem)
    return bad


def _target_problem(target: str, path: Path, root: Path = ROOT) -> str | None:
    """What is wrong with link ``target`` written in ``path``, or None (web links are not checked)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path.resolve()
    if not dest.exists():
        return f"{target}: no such file"
    if root.resolve() not in (dest, *dest.parents):
        return f"{target}: outside the repository"
    if anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
        return f"{target}: no heading #{anchor} in {dest.name}"
    return None


def test_links_and_anchors_resolve():
    """Every relative link and #anchor of README.md and docs/ (the journals included), and the journal entry
    each recorded output names as its source (docs/results.md links them)."""
    bad = [f"{p.relative_to(ROOT)}: {b}" for p in _doc_files() for b in broken_links(p)]
    for rec in sorted((ROOT / "docs" / "recorded").rglob("*.txt")):
        source = re.search(r"^source: (\S+)$", rec.read_text(encoding="utf-8"), re.M)
        problem = _target_problem(source.group(1), ROOT / "docs" / "results.md") if source else "no source: line"
        bad += [f"{rec.relative_to(ROOT)}: {problem}"] if problem else []
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_check_finds_broken_ones(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Set-up: two commands\n\n## Set-up: two commands\n\n"
                                   "```bash\n# not a heading\n```\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md#set-up-two-commands) [second](a.md#set-up-two-commands-1) [top](a.md) [self](#links)\n"
        "## Links\n[gone](missing.md) [no anchor](a.md#not-a-heading) [code](a.md#install)\n"
        "`[in code](nowhere.md)` [web](https://example.org/x#y)\n")
    assert broken_links(tmp_path / "b.md", tmp_path) == [
        "missing.md: no such file", "a.md#not-a-heading: no heading #not-a-heading in a.md",
        "a.md#install: no heading #install in a.md"]
    assert slug("Time to F1, against timm's `train.py`") == "time-to-f1-against-timms-trainpy"
    assert slug("Loader — `maskcls bench loader`") == "loader--maskcls-bench-loader"
