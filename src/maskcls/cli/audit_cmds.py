"""``maskcls audit``: the labels a k-fold run's out-of-fold predictions contradict, ranked, with fixes to review."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .common import int_range, sub


def register(subs) -> None:
    s = sub(subs, "audit", "rank likely label errors (persons' gender/age, swapped mask photos, single images) "
            "from a k-fold run's out-of-fold predictions",
            "maskcls audit runs/mobilenetv2_100-1            # RUN/audit/: audit.csv, fixes.csv, audit.html\n"
            "maskcls audit runs/mobilenetv2_100-1 --top 300 --out audit-300\n"
            "maskcls audit runs/mobilenetv2_100-1 --partial  # some folds not trained yet")
    s.add_argument("run_dir", metavar="RUN",
                   help="run directory trained on every fold (maskcls train PREPARED --folds all)")
    s.add_argument("--top", type=int_range(1), default=100,
                   help="findings that go into the suggested fixes and the page (default 100; audit.csv has all)")
    s.add_argument("--out", help="new output directory (default RUN/audit, RUN/audit-2 …)")
    s.add_argument("--partial", action="store_true",
                   help="audit the folds that have out-of-fold predictions when some folds were not trained")
    s.add_argument("--data", help="the prepared directory, if it moved since training (it must be unchanged)")
    s.add_argument("--workers", type=int_range(1), default=None, help="threads decoding thumbnails")
    s.set_defaults(handler=cmd_audit)


def cmd_audit(args) -> int:
    from ..audit.findings import SWAP
    from ..audit.page import KIND_TITLES
    from ..audit.pipeline import audit_run
    s = audit_run(args.run_dir, top=args.top, out=args.out, prepared=args.data, partial=args.partial,
                  workers=args.workers)
    folds = ",".join(map(str, s["folds"]))
    print(f"audited {s['images']} images of {s['groups']} persons/groups (folds {folds}) of {s['run']}: "
          f"{s['findings']} findings")
    if s["by_kind"]:
        print("  " + " · ".join(f"{KIND_TITLES.get(k, k)} {n}" for k, n in s["by_kind"].items()))
    for f in s["top_findings"]:
        change = "swap" if f["kind"] == SWAP else f"{f['field']} {f['given']} -> {f['suggested']}"
        print(f"  {f['rank']:4d}  {f['score']:.3f}  {f['kind']:<22} {f['group']}  {change}")
    for note in s["notes"]:
        print(f"note: {note}")
    files = s["files"]
    print(f"wrote {s['out_dir']}: audit.csv, audit.html" + (", fixes.csv" if "fixes" in files else ", corrected.csv")
          + f" ({s['fix_rows']} suggested change(s) from the top {s['top']})")
    if s["findings"] == 0:
        print(f"maskcls: warning: 0 findings: the out-of-fold predictions of folds {folds} agree with every given "
              f"label of the {s['images']} images (no person, photo or swapped pair contradicted), so there is "
              "nothing to review and no fix to apply", file=sys.stderr)
        return 0
    if s["fix_rows"] == 0:
        print(f"maskcls: warning: none of the top {min(s['top'], s['findings'])} findings is a change a fixes file can "
              "make (see the notes above); review audit.html and correct the files themselves", file=sys.stderr)
        return 0
    source = shlex.quote(_source(s["prepared"]))
    if "fixes" in files:
        print(f"next: review {files['fixes']} with audit.html (delete the rows you disagree with), then\n"
              f"  maskcls prepare {source} --fixes {shlex.quote(files['fixes'])} --out PREPARED_FIXED\n"
              "  maskcls train PREPARED_FIXED --folds all")
    else:
        print(f"next: review {files['corrected']} (rows with an audit_fix) with audit.html, then\n"
              f"  maskcls prepare {shlex.quote(files['corrected'])} --allow-absolute --out PREPARED_FIXED\n"
              "  maskcls train PREPARED_FIXED --folds all")
    return 0


def _source(prepared: str) -> str:
    from ..fsutil import read_json
    meta = read_json(Path(prepared) / "prepare.json")
    return str(meta.get("source", "SOURCE") if isinstance(meta, dict) else "SOURCE")
