"""One self-contained HTML page per run: ``maskcls report RUN`` → ``RUN/report.html``.

Reads the run through :mod:`.report_data`, scores out-of-fold rows with the same metrics as
training (:mod:`.engine.metrics`), and embeds every figure and thumbnail as a data URI so the
page opens offline, attached to an e-mail or copied off a GPU box. A run still in progress is
reported as far as it got, with a banner saying so.
"""
from __future__ import annotations

import html
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..fsutil import atomic_write_text
from ..metrics import class_table, confusion, oof_scores
from . import figures as figs
from .run_data import RunData, incomplete_reasons, load_run

log = logging.getLogger(__name__)

WEAK_MARGIN = 0.10  # a class is "weak" when its F1 is this far below the macro F1


def _fmt(x, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _fig(uri: str | None, what: str) -> str:
    return f'<img class="fig" src="{uri}" alt="{what}">' if uri else f'<p class="muted">No {what} yet.</p>'


def _kpis(run: RunData, oof: pd.DataFrame | None) -> str:
    """The headline tiles. Out of fold needs two folds or more: a single-fold run's rows are its validation F1 (the
    first tile), so its out-of-fold tile shows no number, as its summary.json (oof_f1 null) says; a run still
    training shows the folds done so far, "(1/3 folds)"."""
    s = run.summary or {}
    best = [f.metrics["valid_f1"].max() for f in run.folds.values() if len(f.metrics)]
    items = {"mean best valid F1": (s.get("mean_f1") or (np.nanmean(best) if best else None), None)}
    heads = s.get("head_f1") or {}
    if oof is not None and len(oof) and run.class_names:
        done = oof["fold"].nunique()
        scores = oof_scores(oof, run.task)
        heads = scores["head_f1"] or heads
        if len(run.folds) > 1 and not ("oof_f1" in s and s["oof_f1"] is None):
            key = "out-of-fold F1" + (f" ({done}/{len(run.folds)} folds)" if done < len(run.folds) else "")
            items[key], items["oof images"] = (scores["f1"], None), (scores["images"], None)
        else:
            items["out-of-fold F1"] = (None, "needs two folds or more: with one fold, its validation F1 is the "
                                             "mean best valid F1")
    else:
        items["out-of-fold F1"] = (s.get("oof_f1"), None)
    items.update({f"{h} F1": (v, None) for h, v in heads.items()})
    return "".join(f"<div class=kpi{_title(why)}><span>{html.escape(k)}</span>"
                   f"<b>{v if isinstance(v, int) else _fmt(v)}</b></div>" for k, (v, why) in items.items())


def _title(why: str | None) -> str:
    return f' title="{html.escape(why, quote=True)}"' if why else ""


def _header(run: RunData, oof: pd.DataFrame | None, reasons: list[str]) -> str:
    c = run.config
    model = c.model.name if c is not None else run.meta.get("model_name")
    folds = len((run.summary or {}).get("folds") or {}) or len(run.folds)
    bits = [f"model <b>{html.escape(str(model or '?'))}</b>", f"image size {run.image_size or '?'}",
            f"epochs {c.train.epochs if c is not None else '?'}", f"folds {folds}", f"{len(run.class_names)} classes",
            *([f"scores: validation macro F1, {html.escape(run.view)}"] if run.view else []),
            f"<span title='{html.escape(str(run.run_dir.resolve()))}'>"
            f"generated {time.strftime('%Y-%m-%d %H:%M')}</span>"]
    banner = ("<div class=banner><b>Run incomplete</b> — this report shows what exists so far.<ul>"
              + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul></div>") if reasons else ""
    return (f"<header><div class=wrap><h1>{html.escape(run.name)}</h1><div class=sub>{' · '.join(bits)}"
            f"</div><div class=kpis>{_kpis(run, oof)}</div></div></header><div class=wrap>{banner}")


def _fold_table(run: RunData) -> str:
    st = (run.summary or {}).get("folds") or {}
    rows = []
    for k, f in run.folds.items():
        m = f.metrics
        s = st.get(str(k)) or {"status": "running" if f.oof is None else "best epoch saved"}
        best = m.loc[m["valid_f1"].idxmax()] if len(m) and m["valid_f1"].notna().any() else None
        rows.append(f"<tr><td>fold {k}</td><td>{html.escape(s.get('status', '—'))}</td><td>{len(m)}</td>"
                    f"<td>{'—' if best is None else int(best['epoch'])}</td>"
                    f"<td>{_fmt(None if best is None else best['valid_f1'])}</td>"
                    f"<td>{_fmt(None if best is None else best['valid_acc'])}</td>"
                    f"<td>{'—' if f.oof is None else len(f.oof)}</td>"
                    f"<td>{_fmt(m['seconds'].sum() / 60, 1) if 'seconds' in m else '—'}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("fold", "status", "epochs", "best epoch", "best F1",
                                             "best acc", "oof rows", "minutes"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _class_table_html(table: pd.DataFrame) -> str:
    macro = table.loc["macro", "f1"]
    rows = []
    for name, r in table.iterrows():
        weak = name != "macro" and r["f1"] < macro - WEAK_MARGIN
        cls = "macro" if name == "macro" else "weak" if weak else ""
        tag = "<span class=tag>weak</span>" if weak else ""
        bar = f"<span class=bar style='width:{r['f1'] * 90:.0f}px'></span>"
        rows.append(f"<tr class='{cls}' data-f1='{r['f1']:.6f}'><td>{html.escape(str(name))}{tag}</td>"
                    f"<td>{_fmt(r['precision'])}</td><td>{_fmt(r['recall'])}</td><td>{bar}{_fmt(r['f1'])}</td>"
                    f"<td>{int(r['support'])}</td><td>{int(r['predicted'])}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "support", "predicted"))
    note = (f"<p class=muted>Rows in red: F1 more than {WEAK_MARGIN:.2f} below the macro F1. "
            "The macro row averages the classes with equal weight, as the competition scores.</p>")
    return f"{note}<table id=class-table><tr>{head}</tr>{''.join(rows)}</table>"


def _oof_sections(run: RunData, oof: pd.DataFrame, gallery_size: int) -> list[str]:
    names, k = run.class_names, len(run.class_names)
    y, p = oof["label"], oof["pred"]
    bad = oof[~y.between(0, k - 1) | ~p.between(0, k - 1)]
    if len(bad):
        raise DataError(f"{run.run_dir}: oof.csv holds class ids outside 0..{k - 1} "
                        f"(first: {bad.iloc[0][['path', 'label', 'pred']].to_dict()})")
    cm = confusion(y.to_numpy(), p.to_numpy(), k)
    out = [_section("Confusion matrix", _fig(figs.confusion_figure(cm, names), "confusion matrix"))]
    if run.task.factored:
        per_attr = {a.name: (m, list(a.classes)) for a, m in
                    zip(run.task.attributes, run.task.attribute_confusions(cm).values())}
        out.append(_section("Per-head confusion", _fig(figs.heads_figure(per_attr), "per-head matrices")))
    out.append(_section("Per-class metrics (out-of-fold)", _class_table_html(class_table(cm, names))))
    if gallery_size:
        gallery = figs.gallery_html(oof, names, gallery_size)
        out.append(_section(f"Most confidently wrong (top {gallery_size})", gallery))
    return out


def write_report(run_dir: str | Path, *, out: str | Path | None = None, gallery_size: int = 24) -> Path:
    """Write a self-contained HTML report of a (possibly unfinished) run and return its path.

    Args:
        run_dir: run directory written by ``maskcls train``.
        out: output file; defaults to ``run_dir/report.html``.
        gallery_size: how many confidently wrong validation images to show.
    Raises:
        CheckpointError: when ``run_dir`` holds no run files.
    """
    if gallery_size < 0:
        raise ValueError(f"gallery_size must be >= 0, got {gallery_size}")
    run = load_run(run_dir)
    oof, reasons = run.oof(), incomplete_reasons(run)
    parts = [_header(run, oof, reasons), _section("Folds", _fold_table(run)),
             _section("Training curves", _fig(figs.curves_figure({k: f.metrics for k, f in run.folds.items()}),
                                              "training curves")),
             _section("Learning-rate schedule", _fig(figs.lr_figure({k: f.lr for k, f in run.folds.items()}),
                                                     "learning-rate log"))]
    if oof is not None and len(oof) and run.class_names:
        parts += _oof_sections(run, oof, gallery_size)
    else:
        parts.append(_section("Out-of-fold results", "<p class=muted>No oof.csv written yet.</p>"))
    parts.append(_section("Configuration", f"<details><summary>config.yaml</summary>"
                                           f"<pre>{html.escape(run.config_text or '(none)')}</pre></details>"))
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(run.name)} — maskcls report"
            f"</title><style>{figs.PAGE_CSS}</style></head><body>{''.join(parts)}</div></body></html>")
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    log.info("report written to %s (%d KiB)", out, out.stat().st_size // 1024)
    return out
