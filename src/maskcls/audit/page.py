"""``audit.html``: the findings as one self-contained page — each a strip of the person's photos with
the given → suggested label and the probabilities behind it, filterable by kind, sortable, with
every thumbnail embedded as a data URI (the page opens offline, copied off a GPU box or mailed).
"""
from __future__ import annotations

import html
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..fsutil import atomic_write_text, default_workers
from ..progress import track
from ..report.figures import PAGE_CSS, thumbnail_uri
from .findings import SWAP, Field, label_fields
from .inputs import AuditInput

THUMB = 96  # px, longest side; each photo is embedded once (a CSS class), however many cards show it
STRIP_MAX = 12  # photos per finding: the finding's own first, then the person's others for context
KIND_TITLES = {"person_gender": "person: gender", "person_age": "person: age", SWAP: "swapped incorrect/normal",
               "image_mask": "image: mask", "image_label": "image: label"}

AUDIT_CSS = """
.controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:18px 0 0}
.controls label{font-size:14px}.controls input[type=search]{padding:4px 8px;min-width:220px}
.finding{background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 18px;margin:14px 0}
.finding h3{margin:0 0 6px;font-size:16px;display:flex;gap:10px;flex-wrap:wrap;align-items:baseline}
.kind{border-radius:4px;font-size:12px;padding:1px 7px;color:#fff;background:#6b7280}
.k-person_gender{background:#7c3aed}.k-person_age{background:#2563eb}.k-swap_incorrect_normal{background:#db2777}
.k-image_mask,.k-image_label{background:#0d9488}
.change{font-size:15px}.change .g{color:#b91c1c;text-decoration:line-through}.change .s{color:#047857;font-weight:700}
.strip{display:flex;gap:8px;overflow-x:auto;padding:8px 0}
.ph2{width:112px;flex:none;text-align:center;font-size:11px;border:2px solid transparent;border-radius:6px;padding:3px;
overflow-wrap:anywhere}
.ph2.hit{border-color:#f59e0b;background:#fffbeb}
.ph2 .th,.ph2 .ph{width:96px;height:96px;background-color:#f3f4f6;background-position:center;background-size:contain;
background-repeat:no-repeat;display:block;margin:0 auto 3px}
.probs{display:grid;grid-template-columns:max-content 160px max-content;gap:2px 10px;font-size:13px;align-items:center}
.probs .bar{height:9px;margin:0}.probs .given{color:#b91c1c}.probs .sugg{color:#047857;font-weight:700}
.fixtag{font-size:12px;color:#047857}.nofix{font-size:12px;color:#9ca3af}
.conf{font-size:12px;color:#1d4ed8}.noconf{font-size:12px;color:#9ca3af}
"""

AUDIT_JS = """
const list=document.getElementById('findings');
function applyFilter(){
  const on=new Set([...document.querySelectorAll('.kf:checked')].map(e=>e.value));
  const q=document.getElementById('q').value.trim().toLowerCase();
  const conf=document.getElementById('conf').checked;
  let n=0;
  for(const c of list.children){const show=on.has(c.dataset.kind)&&(!q||c.dataset.search.includes(q))
    &&(!conf||c.dataset.confident==='1');
    c.hidden=!show;n+=show;}
  document.getElementById('shown').textContent=n;
}
function applySort(){
  const key=document.getElementById('sort').value;
  const num=(a,b,k)=>Number(a.dataset[k])-Number(b.dataset[k]);
  const cmp={rank:(a,b)=>num(a,b,'rank'),kind:(a,b)=>a.dataset.kind.localeCompare(b.dataset.kind)||num(a,b,'rank'),
    group:(a,b)=>a.dataset.group.localeCompare(b.dataset.group)||num(a,b,'rank'),
    fold:(a,b)=>num(a,b,'fold')||num(a,b,'rank')}[key];
  [...list.children].sort(cmp).forEach(c=>list.appendChild(c));
}
document.querySelectorAll('.kf').forEach(e=>e.addEventListener('change',applyFilter));
document.getElementById('q').addEventListener('input',applyFilter);
document.getElementById('conf').addEventListener('change',applyFilter);
document.getElementById('sort').addEventListener('change',applySort);
"""


def _thumbnails(paths: list[str], workers: int | None) -> tuple[dict[str, str], str]:
    """({path: CSS class}, the CSS rules holding the data URIs) for the readable ``paths``, decoded
    in threads (PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        uris = list(track(pool.map(lambda p: thumbnail_uri(p, THUMB), paths), total=len(paths),
                          desc="audit thumbnails", unit="img"))
    classes = {p: f"t{i}" for i, (p, u) in enumerate(zip(paths, uris)) if u}
    css = "".join(f'.{classes[p]}{{background-image:url("{u}")}}' for p, u in zip(paths, uris) if u)
    return classes, css


def _strip_rows(finding, by_group: dict[str, np.ndarray], index_of: dict[str, int]) -> list[tuple[int, bool]]:
    hits = [index_of[h] for h in finding.files.split(";")][:STRIP_MAX]
    rest = [int(i) for i in by_group[finding.group] if i not in hits][: STRIP_MAX - len(hits)]
    return [(i, True) for i in hits] + [(i, False) for i in rest]


def _photo(i: int, hit: bool, rows: pd.DataFrame, field: Field, thumbs: dict[str, str]) -> str:
    cls = thumbs.get(rows["abs_path"].iat[i])
    img = f"<i class='th {cls}'></i>" if cls else "<div class=ph>image missing</div>"
    p = field.probs[i]
    top = int(p.argmax())
    return (f"<div class='ph2{' hit' if hit else ''}' title='{html.escape(rows['path'].iat[i])}'>{img}"
            f"{html.escape(Path(rows['path'].iat[i]).name)}<br>label <b>{html.escape(field.classes[field.codes[i]])}"
            f"</b><br>model {html.escape(field.classes[top])} {p[top]:.2f}</div>")


def _probs_html(finding, field: Field) -> str:
    ev = json.loads(finding.evidence)
    dist = ev.get("pooled") or ev.get("probabilities")
    if dist is None:  # a swap: the two photos' mask probabilities
        return "".join(f"<div class=muted>{html.escape(Path(p).name)}: " + ", ".join(
            f"{html.escape(c)} {v:.2f}" for c, v in d.items()) + "</div>" for p, d in ev.items())
    cells = []
    for c, v in dist.items():
        cls = "given" if c == finding.given else "sugg" if c == finding.suggested else ""
        cells.append(f"<span class='{cls}'>{html.escape(c)}</span><span><span class=bar "
                     f"style='width:{v * 150:.0f}px'></span></span><span>{v:.3f}</span>")
    what = "pooled over the person's photos" if "pooled" in ev else "this image"
    return f"<div class=muted>probabilities ({what})</div><div class=probs>{''.join(cells)}</div>"


def _card(f, fields: dict[str, Field], rows: pd.DataFrame, by_group, index_of, thumbs, fixed_ranks: set[int]) -> str:
    field = fields["mask" if f.kind == SWAP else f.field]
    strip = "".join(_photo(i, hit, rows, field, thumbs) for i, hit in _strip_rows(f, by_group, index_of))
    fix = ("<span class=fixtag>in the suggested fixes</span>" if f.rank in fixed_ranks
           else "<span class=nofix>not in the suggested fixes</span>")
    conf = ("<span class=conf>confident (cleanlab)</span>" if f.confident
            else "<span class=noconf>not confident</span>")
    label = html.escape(f.field if f.kind != SWAP else "mask")
    search = html.escape(f"{f.group} {f.files}".lower())
    return (f"<div class=finding data-kind='{f.kind}' data-rank='{f.rank}' data-fold='{f.fold}' "
            f"data-confident='{int(f.confident)}' data-group='{html.escape(str(f.group))}' data-search='{search}'>"
            f"<h3>#{f.rank}<span class='kind k-{f.kind}'>{KIND_TITLES.get(f.kind, f.kind)}</span>"
            f"{html.escape(str(f.group))}<span class=muted>fold {f.fold} · score {f.score:.3f}</span>{conf}{fix}</h3>"
            f"<div class=change>{label}: <span class=g>{html.escape(f.given)}</span> → "
            f"<span class=s>{html.escape(f.suggested)}</span></div>"
            f"<div class=strip>{strip}</div>{_probs_html(f, field)}</div>")


def _header(data: AuditInput, findings: pd.DataFrame, shown: pd.DataFrame, notes: list[str]) -> str:
    counts = findings["kind"].value_counts()
    boxes = "".join(f"<label><input type=checkbox class=kf value='{k}' checked> "
                    f"{KIND_TITLES.get(k, k)} ({int((shown['kind'] == k).sum())} shown / {n})</label>"
                    for k, n in counts.items())
    banner = ("<div class=banner><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
              + "</ul></div>") if notes else ""
    kpis = {"images audited": len(data.rows), "persons/groups": data.rows["group"].nunique(),
            "folds": ",".join(map(str, data.folds)), "findings": len(findings), "shown": len(shown)}
    return (f"<header><div class=wrap><h1>Label audit — {html.escape(data.run.name)}</h1>"
            f"<div class=sub>prepared {html.escape(str(data.prep.dir))} · generated {time.strftime('%Y-%m-%d %H:%M')}"
            "</div><div class=kpis>" + "".join(f"<div class=kpi><span>{k}</span><b>{v}</b></div>" for k, v in
                                               kpis.items()) + "</div></div></header>"
            f"<div class=wrap>{banner}<div class=controls>{boxes}<input id=q type=search "
            "placeholder='filter by person / file'><label><input type=checkbox id=conf> confident only</label>"
            "<label>sort <select id=sort><option value=rank>score</option>"
            "<option value=kind>kind</option><option value=group>person</option><option value=fold>fold</option>"
            "</select></label><span class=muted><span id=shown>" + str(len(shown)) + "</span> shown</span></div>")


def write_page(path: Path, data: AuditInput, findings: pd.DataFrame, *, shown: int, fixed_ranks: set[int],
               notes: list[str], workers: int | None = None) -> None:
    """Write audit.html with the first ``shown`` findings (all kinds; the page filters and sorts).

    Args:
        path: the file to write.
        data: the audit's input (rows, probabilities, run).
        findings: ranked findings (find_issues).
        shown: how many of the top findings get a card.
        fixed_ranks: ranks of the findings that went into fixes.csv / corrected.csv.
        notes: lines for the banner (partial audit, unfinished run …).
        workers: threads decoding thumbnails (default: one per CPU).
    """
    rows = data.rows.reset_index(drop=True)
    fields = {f.name: f for f in label_fields(data.task, rows["label"].to_numpy(), data.probs)}
    index_of = {p: i for i, p in enumerate(rows["path"])}
    by_group = {g: np.asarray(v) for g, v in rows.groupby("group").indices.items()}
    top = findings.head(shown)
    strips = {i for f in top.itertuples() for i, _ in _strip_rows(f, by_group, index_of)}
    thumbs, thumb_css = _thumbnails(sorted({rows["abs_path"].iat[i] for i in strips}), workers)
    cards = "".join(_card(f, fields, rows, by_group, index_of, thumbs, fixed_ranks) for f in top.itertuples())
    if not cards:
        cards = "<p class=muted>No findings: the out-of-fold predictions contradict no label confidently.</p>"
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(data.run.name)} — "
            f"maskcls label audit</title><style>{PAGE_CSS}{AUDIT_CSS}{thumb_css}</style></head><body>"
            f"{_header(data, findings, top, notes)}<div id=findings>{cards}</div></div>"
            f"<script>{AUDIT_JS}</script></body></html>")
    atomic_write_text(path, page)
