"""One audit, end to end: read and check the run, rank the findings, write the files.

Everything goes into one new directory (default ``RUN/audit``, then ``RUN/audit-2`` …); the
dataset, the prepared directory and the run's own files are only read.
"""
from __future__ import annotations

import logging
import time
from importlib.metadata import version
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, DataError
from ..fsutil import atomic_write_json, atomic_write_text, ensure_new_dir, free_name
from .findings import find_issues
from .inputs import load_audit_input
from .outputs import (
    FIXABLE_KINDS,
    competition_fixes,
    corrected_csv,
    read_source_csv,
    write_audit_csv,
    write_fixes_csv,
)
from .page import write_page

log = logging.getLogger(__name__)

DEFAULT_TOP = 100


def _out_dir(run: Path, out: str | Path | None, read_only: dict[str, Path]) -> Path:
    """A new directory for the audit's files, refused inside the dataset or the prepared directory."""
    dest = free_name(run / "audit") if out is None else Path(out)
    for what, root in read_only.items():
        if dest.resolve() == root.resolve() or root.resolve() in dest.resolve().parents:
            raise DataError(f"--out {dest} lies inside the {what} {root}, which an audit only reads; "
                            "choose a folder outside it")
    return ensure_new_dir(dest)


def audit_run(run_dir: str | Path, *, top: int = DEFAULT_TOP, out: str | Path | None = None,
              prepared: str | Path | None = None, partial: bool = False, workers: int | None = None) -> dict:
    """Audit the labels of a k-fold run from its out-of-fold predictions; returns audit.json's content.

    Args:
        run_dir: a run directory with out-of-fold predictions for every fold (see ``partial``).
        top: how many of the best-ranked findings go into the suggested fixes and the page.
        out: new (or empty) output directory; default ``run_dir/audit`` (``audit-2`` … if taken).
        prepared: the prepared directory when it moved since training (checked to be unchanged).
        partial: audit the folds that have out-of-fold rows when some are missing (said in the output).
        workers: threads decoding thumbnails (default: one per CPU).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"--top must be an integer >= 1, got {top!r}")
    t0 = time.time()
    data = load_audit_input(run_dir, prepared=prepared, partial=partial)
    findings = find_issues(data)
    chosen = findings.head(top)
    source = None
    if data.prep.meta.get("kind") != "competition":  # checked before anything is written
        source = read_source_csv(Path(data.prep.meta["source"]), data.prep.manifest["path"])
    dest = _out_dir(data.run, out, {"dataset": data.prep.root, "prepared directory": data.prep.dir})
    files = {"audit_csv": dest / "audit.csv", "page": dest / "audit.html"}
    notes = list(data.notes)
    write_audit_csv(files["audit_csv"], findings)
    if data.prep.meta.get("kind") == "competition":
        fixes, not_fixable = competition_fixes(chosen, data.rows, data.task)
        files["fixes"] = dest / "fixes.csv"
        write_fixes_csv(files["fixes"], fixes)
        if not_fixable:
            notes.append(f"{not_fixable} of the top {len(chosen)} findings are single photos, whose mask state comes "
                         "from the file name: a fixes file cannot change them (rename or remove those files)")
        fixed_ranks = {int(r) for r in chosen.loc[chosen["kind"].isin(list(FIXABLE_KINDS)), "rank"]}
        n_fixes = len(fixes)
    else:
        corrected = corrected_csv(chosen, data.rows, data.task, source, Path(data.prep.meta["source"]))
        files["corrected"] = dest / "corrected.csv"
        atomic_write_text(files["corrected"], corrected.to_csv(index=False))
        notes.append("prepare --fixes reads the competition layout only: for this CSV manifest, corrected.csv is the "
                     "source CSV with the top findings applied (column audit_fix), absolute paths included")
        fixed_ranks, n_fixes = {int(r) for r in chosen["rank"]}, int((corrected["audit_fix"] != "").sum())
    write_page(files["page"], data, findings, shown=top, fixed_ranks=fixed_ranks, notes=notes, workers=workers)
    summary = {
        "run": str(data.run), "prepared": str(data.prep.dir), "kind": data.prep.meta.get("kind"),
        "folds": data.folds, "missing_folds": data.missing_folds, "partial": data.partial,
        "images": len(data.rows), "groups": int(data.rows["group"].nunique()), "findings": len(findings),
        "by_kind": {k: int(v) for k, v in findings["kind"].value_counts().items()}, "top": top,
        "fix_rows": n_fixes, "notes": notes, "out_dir": str(dest), "files": {k: str(v) for k, v in files.items()},
        "cleanlab_version": version("cleanlab"), "maskcls_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - t0, 2),
    }
    atomic_write_json(dest / "audit.json", summary)
    log.info("audit of %s: %d findings -> %s", data.run, len(findings), dest)
    return {**summary, "top_findings": chosen.head(10).to_dict("records")}

