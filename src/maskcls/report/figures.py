"""Figures, thumbnails, the misclassified-image gallery and the page style of the run report.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no global backend switch),
so building a report never opens a window and is safe inside other programs.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

PAGE_CSS = """
body{margin:0;background:#f3f4f6;color:#111827;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:linear-gradient(135deg,#111827,#1e3a8a);color:#fff;padding:28px 0 22px}
.wrap{max-width:1180px;margin:0 auto;padding:0 24px}
h1{margin:0;font-size:28px}.sub{color:#c7d2fe;margin-top:4px}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin-top:18px}
.kpi{background:rgba(255,255,255,.1);border-radius:10px;padding:10px 16px;min-width:120px}
.kpi b{display:block;font-size:24px}
.kpi span{font-size:12px;color:#c7d2fe;text-transform:uppercase;letter-spacing:.04em}
.banner{background:#fef3c7;border:1px solid #f59e0b;border-radius:10px;padding:12px 18px;margin:18px 0 0}
section{background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 22px;margin:18px 0}
h2{margin:0 0 12px;font-size:19px}img.fig{max-width:100%;display:block;margin:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #e5e7eb;text-align:right}th{background:#f9fafb}
td:first-child,th:first-child{text-align:left}
tr.weak td{background:#fee2e2}tr.weak .bar{background:#dc2626}tr.macro td{font-weight:700;border-top:2px solid #111827}
.bar{display:inline-block;height:9px;border-radius:4px;background:#3b82f6;margin-right:8px;vertical-align:middle}
.tag{background:#dc2626;color:#fff;border-radius:4px;font-size:11px;padding:1px 5px;margin-left:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(172px,1fr));gap:12px}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:6px;font-size:12px;text-align:center}
.card img,.ph{width:128px;height:128px;object-fit:contain;background:#f3f4f6;display:block;margin:0 auto 4px}
.ph{display:flex;align-items:center;justify-content:center;color:#9ca3af}
.t{color:#047857}.p{color:#b91c1c}.muted{color:#6b7280}
.card small{display:block;color:#6b7280;font-size:10px;text-transform:uppercase;letter-spacing:.05em;margin-top:3px}
pre{background:#0f172a;color:#e2e8f0;padding:14px;border-radius:8px;overflow:auto;font-size:13px}
summary{cursor:pointer;font-weight:600}
"""

FOLD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _fig_to_uri(fig: Figure, dpi: int = 110) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left", fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def curves_figure(metrics: dict[int, pd.DataFrame]) -> str | None:
    """Loss and macro-F1 per epoch, folds overlaid (train dashed, valid solid).

    Args:
        metrics: fold index → metrics.csv rows (folds without epochs are skipped).
    """
    metrics = {k: m for k, m in metrics.items() if len(m)}
    if not metrics:
        return None
    fig = Figure(figsize=(11, 3.8))
    ax_loss, ax_f1 = fig.subplots(1, 2)
    for k, m in metrics.items():
        color = FOLD_COLORS[k % len(FOLD_COLORS)]
        for ax, col in ((ax_loss, "loss"), (ax_f1, "f1")):
            ax.plot(m["epoch"], m[f"train_{col}"], "--", color=color, alpha=0.7, lw=1.3)
            ax.plot(m["epoch"], m[f"valid_{col}"], "-", color=color, lw=2, marker="o", ms=3)
        if m["valid_f1"].notna().any():
            best = m.loc[m["valid_f1"].idxmax()]
            ax_f1.plot(best["epoch"], best["valid_f1"], "*", color=color, ms=13, mec="black", mew=0.6)
    _style(ax_loss, "Loss", "epoch", "cross-entropy")
    _style(ax_f1, "Macro F1  (★ best epoch)", "epoch", "macro F1")
    handles = [Line2D([], [], color=FOLD_COLORS[k % len(FOLD_COLORS)], lw=2, label=f"fold {k}")
               for k in metrics]
    handles += [Line2D([], [], color="#555", ls="--", label="train"),
                Line2D([], [], color="#555", ls="-", label="valid")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return _fig_to_uri(fig)


def lr_figure(lrs: dict[int, pd.DataFrame]) -> str | None:
    """Learning rate per optimizer step, one line per fold.

    Args:
        lrs: fold index → lr.csv rows (``step,lr``).
    """
    lrs = {k: d for k, d in lrs.items() if len(d)}
    if not lrs:
        return None
    fig = Figure(figsize=(11, 2.8))
    ax = fig.subplots()
    for i, (k, d) in enumerate(lrs.items()):  # earlier folds drawn wider: equal schedules stay visible
        ax.plot(d["step"], d["lr"], color=FOLD_COLORS[k % len(FOLD_COLORS)], lw=max(3.2 - 0.7 * i, 1.0),
                label=f"fold {k}")
    _style(ax, "Learning rate", "optimizer step", "lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return _fig_to_uri(fig)


def _draw_matrix(ax, counts: np.ndarray, names: list[str], title: str, fontsize: float) -> None:
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(names)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=fontsize,
                        color="white" if norm[i, j] > 0.55 else "#1f2937")
    short = max(map(len, names)) <= 3
    ax.set_xticks(range(n), names, rotation=0 if short else 45 if n <= 4 else 60,
                  ha="center" if short else "right", fontsize=fontsize + 1)
    ax.set_yticks(range(n), names, fontsize=fontsize + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11, loc="left", fontweight="bold")


def confusion_figure(counts: np.ndarray, names: list[str]) -> str:
    """K×K confusion matrix: colours are row-normalised (recall), cells show counts.

    Args:
        counts: K×K integer counts, rows = true class, columns = predicted class.
        names: the K class names, in class-id order.
    """
    k = len(names)
    side = min(max(4.5, 0.55 * k + 2.5), 13)
    fig = Figure(figsize=(side, side * 0.92))
    ax = fig.subplots()
    _draw_matrix(ax, counts, names, f"Confusion matrix ({int(counts.sum())} out-of-fold images)",
                 fontsize=7 if k > 12 else 9)
    fig.tight_layout()
    return _fig_to_uri(fig)


def heads_figure(heads: dict[str, tuple[np.ndarray, list[str]]]) -> str:
    """Side-by-side per-head confusion matrices (e.g. mask 3×3, gender 2×2, age 3×3).

    Args:
        heads: head name → (counts, class names of that head).
    """
    fig = Figure(figsize=(4.0 * len(heads), 3.7))
    axes = np.atleast_1d(fig.subplots(1, len(heads)))
    for ax, (head, (counts, names)) in zip(axes, heads.items()):
        _draw_matrix(ax, counts, names, head, fontsize=10)
    fig.tight_layout()
    return _fig_to_uri(fig)


def thumbnail_uri(path: str | Path, size: int = 128) -> str | None:
    """A JPEG data URI of the image fitted into ``size``×``size``, or None if unreadable.

    Args:
        path: image file path.
        size: longest side of the thumbnail in pixels.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        log.warning("report gallery: cannot read %s (%s); showing a placeholder", path, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_html(oof: pd.DataFrame, names: list[str], size: int = 24, thumb: int = 128) -> str:
    """Cards of the ``size`` most confidently wrong rows (confidence = prob of the predicted class).

    Args:
        oof: out-of-fold rows with path, label, pred, prob_* and fold columns.
        names: class names indexed by class id.
        size: how many cards at most.
        thumb: thumbnail side in pixels.
    """
    wrong = oof[oof["label"] != oof["pred"]]
    if not len(wrong):
        return "<p class=muted>No misclassified validation images.</p>"
    probs = wrong.filter(regex=r"^prob_\d+$").apply(pd.to_numeric, errors="coerce")
    conf = [probs.at[i, f"prob_{p}"] if f"prob_{p}" in probs else np.nan
            for i, p in zip(wrong.index, wrong["pred"])]
    wrong = wrong.assign(conf=conf).sort_values("conf", ascending=False, na_position="last")
    cards = []
    for r in wrong.head(size).itertuples():
        uri = thumbnail_uri(r.path, thumb) if isinstance(r.path, str) and r.path else None
        img = f'<img src="{uri}" alt="">' if uri else "<div class=ph>image missing</div>"
        conf_txt = "—" if np.isnan(r.conf) else f"{r.conf * 100:.1f}%"
        cards.append(f"<div class=card title='{html.escape(str(r.path))}'>{img}"
                     f"<small>true</small><div class=t>{html.escape(names[r.label])}</div>"
                     f"<small>predicted</small><div class=p>{html.escape(names[r.pred])}</div>"
                     f"<div class=muted>conf {conf_txt} · fold {r.fold}</div></div>")
    return f"<div class=gallery>{''.join(cards)}</div>"
