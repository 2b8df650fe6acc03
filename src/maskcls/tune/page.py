"""``DIR/study.html``: one self-contained page about a study (figures embedded as PNG data URIs, as
report.html's are): the counts, the best trial and a link to its run, Optuna's own matplotlib
figures — optimisation history, each trial's per-epoch F1 (where the pruner stopped it), the
parameters' importances, parallel coordinates and slices — and the trials table.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import os
import warnings
from pathlib import Path

import optuna
import pandas as pd
from matplotlib.ticker import NullFormatter
from optuna.trial import TrialState

from ..fsutil import atomic_write_text
from ..report.figures import PAGE_CSS

log = logging.getLogger(__name__)

FIGURES = (("Optimisation history", "plot_optimization_history"),
           ("Validation F1 per epoch (pruned trials stop early)", "plot_intermediate_values"),
           ("Parameter importances (fANOVA)", "plot_param_importances"),
           ("Parallel coordinates", "plot_parallel_coordinate"),
           ("Slices: the value against each parameter", "plot_slice"))


@contextlib.contextmanager
def _quiet_optuna_plots():
    """Optuna's plots log a warning each ('There are no complete trials.') when there is nothing to draw yet: the
    page says so itself, so those lines would only fill a worker's log after every trial."""
    loggers = [logging.getLogger(name) for name in ("optuna.visualization", "optuna.importance")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _figure(study: optuna.Study, plot: str) -> str | None:
    """Optuna's matplotlib figure ``plot`` as a data URI; None when it cannot be drawn yet."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis
    with warnings.catch_warnings(), matplotlib.rc_context({"figure.max_open_warning": 0}), _quiet_optuna_plots():
        warnings.simplefilter("ignore")  # Optuna marks these plots experimental; they are drawn all the same
        try:
            ax = getattr(vis, plot)(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials, one value only, …
            log.debug("%s: %s", plot, e)
            return None
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    if plot == "plot_slice" and hasattr(ax, "flat"):
        fig.set_size_inches(min(4.0 * len(ax.flat), 16), 4)
        for a in ax.flat:  # a log axis labels its minor ticks too, and they overlap
            a.xaxis.set_minor_formatter(NullFormatter())
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _run_link(run_dir: str | None, page_dir: Path) -> str:
    """A link to a trial's report (or its directory), relative to the page; plain text when elsewhere."""
    if not run_dir:
        return ""
    run = Path(run_dir)
    if not run.is_dir():  # a trial of another machine
        return f"<code>{html.escape(run_dir)}</code>"
    target = run / "report.html" if (run / "report.html").is_file() else run
    rel = os.path.relpath(target, page_dir)
    return f'<a href="{html.escape(Path(rel).as_posix())}">{html.escape(run.name)}</a>'


def _kpis(study: optuna.Study, best) -> str:
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    durations = [t.duration.total_seconds() for t in trials if t.state == TrialState.COMPLETE and t.duration]
    kpis = [("best F1", f"{best.value:.4f}" if best else "–"), ("finished", str(done)),
            ("pruned", f"{count[TrialState.PRUNED]} ({count[TrialState.PRUNED] / max(done, 1):.0%})"),
            ("failed", str(count[TrialState.FAIL])), ("running", str(count[TrialState.RUNNING])),
            ("median trial", f"{sorted(durations)[len(durations) // 2]:.0f} s" if durations else "–")]
    return '<div class="kpis">' + "".join(f'<div class="kpi"><b>{v}</b><span>{k}</span></div>' for k, v in kpis) + \
        "</div>"


def _best_section(best, page_dir: Path) -> str:
    if best is None:
        return "<section><h2>Best trial</h2><p class='muted'>No trial has completed yet.</p></section>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in best.params.items())
    return (f"<section><h2>Best trial: {best.number} (validation macro F1 {best.value:.4f})</h2>"
            f"<p>Run: {_run_link(best.user_attrs.get('run_dir'), page_dir)} · its config: "
            f"<a href='best.yaml'>best.yaml</a> (<code>maskcls train PREPARED -c best.yaml</code>)</p>"
            f"<table><tr><th>parameter</th><th>value</th></tr>{rows}</table></section>")


def _trials_section(table: pd.DataFrame, page_dir: Path) -> str:
    cols = [c for c in table.columns if c not in ("run_dir", "host")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "<th>run</th>"
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + f"<td>{_run_link(r['run_dir'], page_dir)}"
                   "</td></tr>" for _, r in table.iterrows())
    return (f"<section><h2>Trials</h2><div style='overflow-x:auto;font-size:13px'><table><tr>{head}</tr>{body}"
            "</table></div></section>")


def write_page(study: optuna.Study, study_dir: Path, table: pd.DataFrame, best) -> Path:
    """Write ``study_dir/study.html``; returns its path."""
    study_dir = Path(study_dir)
    figures = []
    for title, plot in FIGURES:
        uri = _figure(study, plot)
        body = (f'<img class="fig" src="{uri}" alt="{html.escape(title)}">' if uri else
                "<p class='muted'>Not drawn yet: it needs more finished trials (or more than one value).</p>")
        figures.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>maskcls tune: {html.escape(study.study_name)}"
            f"</title><style>{PAGE_CSS}</style></head><body><header><div class='wrap'><h1>Study "
            f"{html.escape(study.study_name)}</h1><div class='sub'>maskcls tune · maximising validation macro F1"
            f"</div>{_kpis(study, best)}</div></header><div class='wrap'>{_best_section(best, study_dir)}"
            f"{''.join(figures)}{_trials_section(table, study_dir)}</div></body></html>")
    out = study_dir / "study.html"
    atomic_write_text(out, page)
    return out
