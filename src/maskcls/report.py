"""One self-contained HTML page per run: ``maskcls report RUN`` → ``RUN/report.html``.

Reads what the trainer writes (config.yaml, summary.json, fold<k>/{metrics,lr,oof}.csv),
computes what is missing from the per-fold files, and embeds every figure and thumbnail
as a data URI so the page opens offline, attached to an e-mail or copied off a GPU box.
A run still in progress is reported as far as it got, with a banner saying so.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from . import report_figures as figs
from .errors import CheckpointError, DataError
from .labels import GENDER_NAMES, MASK_NAMES, age_names, class_names, decode

log = logging.getLogger(__name__)

WEAK_MARGIN = 0.10  # a class is "weak" when its F1 is this far below the macro F1


@dataclass
class FoldFiles:
    metrics: pd.DataFrame  # one row per finished epoch (may be empty)
    lr: pd.DataFrame  # one row per optimizer step (may be empty)
    oof: pd.DataFrame | None  # best-epoch validation rows, None until written


@dataclass
class RunData:
    run_dir: Path
    name: str
    config_text: str
    config: dict
    summary: dict | None
    folds: dict[int, FoldFiles] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    task: str = "generic"

    def oof(self) -> pd.DataFrame | None:
        """All out-of-fold rows written so far, with a ``fold`` column."""
        parts = [f.oof.assign(fold=k) for k, f in self.folds.items() if f.oof is not None]
        return pd.concat(parts, ignore_index=True) if parts else None


# --------------------------------------------------------------------------- loading
def _read_csv(path: Path, numeric: bool = True) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, on_bad_lines="skip")  # a trainer may be mid-write
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        log.warning("report: %s is empty or unreadable (%s)", path, exc)
        return pd.DataFrame()
    return df.apply(pd.to_numeric, errors="coerce") if numeric else df


METRIC_COLUMNS = ("epoch", "train_loss", "train_f1", "valid_loss", "valid_f1", "valid_acc")


def _read_fold(fold_dir: Path) -> FoldFiles:
    metrics = _read_csv(fold_dir / "metrics.csv")
    if metrics is None or metrics.empty:
        metrics = pd.DataFrame(columns=list(METRIC_COLUMNS))
    elif missing := sorted(set(METRIC_COLUMNS) - set(metrics.columns)):
        raise DataError(f"{fold_dir / 'metrics.csv'} lacks column(s) {missing}; is it from maskcls train?")
    lr = _read_csv(fold_dir / "lr.csv")
    lr = lr.dropna() if lr is not None and {"step", "lr"} <= set(lr.columns) else pd.DataFrame()
    oof = _read_csv(fold_dir / "oof.csv", numeric=False)
    if oof is not None:
        if not {"path", "label", "pred"} <= set(oof.columns):
            raise DataError(f"{fold_dir / 'oof.csv'} lacks path/label/pred; expected path,label,pred,prob_0,…")
        oof[["label", "pred"]] = oof[["label", "pred"]].apply(pd.to_numeric, errors="coerce")
        oof = oof.dropna(subset=["label", "pred"]).astype({"label": int, "pred": int})
    return FoldFiles(metrics=metrics.dropna(subset=["epoch"]), lr=lr, oof=oof)


def _cfg(cfg: dict, *paths: str):
    """First value found at one of the dotted ``paths`` (e.g. 'data.image_size')."""
    for p in paths:
        node = cfg
        for part in p.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _resolve_classes(run: RunData) -> None:
    s, oof = run.summary or {}, run.oof()
    task = s.get("task") or _cfg(run.config, "data.task", "task")
    run.task = task or "generic"
    if s.get("class_names"):
        run.class_names = list(s["class_names"])
        return
    k = s.get("num_classes") or _cfg(run.config, "model.num_classes", "data.num_classes")
    if k is None and oof is not None and len(oof):
        k = sum(c.startswith("prob_") for c in oof.columns) or int(oof[["label", "pred"]].max().max()) + 1
    if k == 18 and task in (None, "mask_gender_age"):  # unlabelled 18-class runs are the competition's
        run.task = "mask_gender_age"
        run.class_names = class_names(int(_cfg(run.config, "data.old_age") or 60))
    elif k:
        run.class_names = [str(i) for i in range(int(k))]


def load_run(run_dir: str | Path) -> RunData:
    """Read everything a (possibly unfinished) run directory holds.

    Args:
        run_dir: the training run directory.
    Raises:
        CheckpointError: when the directory holds no run files at all.
    """
    run_dir = Path(run_dir)
    fold_dirs = sorted((p for p in run_dir.glob("fold*") if re.fullmatch(r"fold\d+", p.name)),
                       key=lambda p: int(p.name[4:])) if run_dir.is_dir() else []
    files = [run_dir / "config.yaml", run_dir / "summary.json"]
    files += [d / f for d in fold_dirs for f in ("metrics.csv", "lr.csv", "oof.csv")]
    if not any(f.is_file() for f in files):
        raise CheckpointError(f"{run_dir} holds no run files (config.yaml, summary.json, fold<k>/metrics.csv); "
                              "train first with `maskcls train`, then report on its run directory")
    text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        log.warning("report: config.yaml does not parse (%s); showing it as text only", exc)
        config = {}
    summary_path = run_dir / "summary.json"
    summary = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as exc:  # caught mid-write: report as if not written yet
            log.warning("report: %s does not parse (%s); ignoring it", summary_path, exc)
    run = RunData(run_dir=run_dir, name=(summary or {}).get("run") or run_dir.resolve().name,
                  config_text=text, config=config if isinstance(config, dict) else {}, summary=summary,
                  folds={int(d.name[4:]): _read_fold(d) for d in fold_dirs})
    _resolve_classes(run)
    return run


# --------------------------------------------------------------------------- tables
def confusion_counts(labels, preds, num_classes: int) -> np.ndarray:
    """K×K counts, rows = true class, columns = predicted class."""
    return confusion_matrix(labels, preds, labels=list(range(num_classes)))


def class_table(labels, preds, names: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1, support (index = class name) plus a final 'macro' row.

    The macro row's F1 equals ``f1_score(average='macro', labels=range(K), zero_division=0)``.
    """
    k = len(names)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=list(range(k)), zero_division=0)
    table = pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s,
                          "predicted": np.bincount(np.asarray(preds, int), minlength=k)[:k]}, index=names)
    table.loc["macro"] = [p.mean(), r.mean(), f.mean(), s.sum(), len(preds)]
    return table


def head_confusions(labels, preds, names: list[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Mask 3×3, gender 2×2 and age 3×3 counts derived from 18-class ids with ``decode``."""
    t = np.array([decode(v) for v in labels]).reshape(-1, 3)
    q = np.array([decode(v) for v in preds]).reshape(-1, 3)
    ages = [n.split("/")[-1] for n in names[:3]] if len(names) == 18 else list(age_names())
    heads = {"mask": list(MASK_NAMES), "gender": list(GENDER_NAMES), "age": ages}
    return {h: (confusion_matrix(t[:, i], q[:, i], labels=list(range(len(n)))), n)
            for i, (h, n) in enumerate(heads.items())}


def head_f1(labels, preds) -> dict[str, float]:
    """Macro F1 of the mask, gender and age attributes decoded from 18-class ids."""
    t = np.array([decode(v) for v in labels]).reshape(-1, 3)
    q = np.array([decode(v) for v in preds]).reshape(-1, 3)
    return {h: float(f1_score(t[:, i], q[:, i], average="macro", labels=list(range(n)), zero_division=0))
            for i, (h, n) in enumerate((("mask", 3), ("gender", 2), ("age", 3)))}


def incomplete_reasons(run: RunData) -> list[str]:
    """Why the run is not finished yet; empty when it is."""
    s = run.summary
    reasons = [] if s else ["summary.json not written yet: training is running or was interrupted"]
    if s and not s.get("finished", False):
        reasons.append("summary.json says the run has not finished")
    for k, st in ((s or {}).get("folds") or {}).items():
        if st.get("status", "done") != "done":
            reasons.append(f"fold {k} is {st['status']}")
    for k, f in run.folds.items():
        if not len(f.metrics):
            reasons.append(f"fold {k}: no epoch finished yet")
        elif f.oof is None:
            reasons.append(f"fold {k}: no oof.csv yet")
    return reasons


# --------------------------------------------------------------------------- html
def _fmt(x, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _fig(uri: str | None, what: str) -> str:
    return f'<img class="fig" src="{uri}" alt="{what}">' if uri else f'<p class="muted">No {what} yet.</p>'


def _kpis(run: RunData, oof: pd.DataFrame | None) -> str:
    s = run.summary or {}
    best = [f.metrics["valid_f1"].max() for f in run.folds.values() if len(f.metrics)]
    items = {"mean best valid F1": s.get("mean_f1") or (np.nanmean(best) if best else None)}
    heads = s.get("head_f1") or {}
    if oof is not None and len(oof) and run.class_names:
        done = oof["fold"].nunique()
        key = "out-of-fold F1" + (f" ({done}/{len(run.folds)} folds)" if done < len(run.folds) else "")
        items[key] = f1_score(oof["label"], oof["pred"], average="macro",
                              labels=list(range(len(run.class_names))), zero_division=0)
        items["oof images"] = len(oof)
        if run.task == "mask_gender_age":
            heads = head_f1(oof["label"], oof["pred"])
    else:
        items["out-of-fold F1"] = s.get("oof_f1")
    items.update({f"{h} F1": v for h, v in heads.items()})
    return "".join(f"<div class=kpi><span>{html.escape(k)}</span><b>"
                   f"{v if isinstance(v, int) else _fmt(v)}</b></div>" for k, v in items.items())


def _header(run: RunData, oof: pd.DataFrame | None, reasons: list[str]) -> str:
    c = run.config
    size = _cfg(c, "data.image_size", "model.image_size")
    folds = len((run.summary or {}).get("folds") or {}) or len(run.folds)
    bits = [f"model <b>{html.escape(str(_cfg(c, 'model.name') or '?'))}</b>", f"image size {size or '?'}",
            f"epochs {_cfg(c, 'train.epochs') or '?'}", f"folds {folds}", f"{len(run.class_names)} classes",
            f"<span title='{html.escape(str(run.run_dir.resolve()))}'>generated {time.strftime('%Y-%m-%d %H:%M')}</span>"]
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
    cm = figs.confusion_figure(confusion_counts(y, p, k), names)
    out = [_section("Confusion matrix", _fig(cm, "confusion matrix"))]
    if run.task == "mask_gender_age":
        heads = figs.heads_figure(head_confusions(y, p, names))
        out.append(_section("Per-head confusion", _fig(heads, "per-head matrices")))
    out.append(_section("Per-class metrics (out-of-fold)", _class_table_html(class_table(y, p, names))))
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
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    log.info("report written to %s (%d KiB)", out, out.stat().st_size // 1024)
    return out
