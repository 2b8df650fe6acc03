"""Epoch metrics from a confusion matrix: exact macro F1 over all K classes, accuracy, per-head F1.

Counts accumulate over the whole epoch (never per-batch averages); F1 of a class with no
true and no predicted examples is 0, as sklearn's ``zero_division=0`` with ``labels=range(K)``.
"""
from __future__ import annotations

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """K×K counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(labels) * k + np.asarray(preds), minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(cm: np.ndarray) -> float:
    return float(per_class(cm)["f1"].mean())


def accuracy(cm: np.ndarray) -> float:
    n = cm.sum()
    return float(np.trace(cm) / n) if n else 0.0


def head_confusions(cm18: np.ndarray) -> dict[str, np.ndarray]:
    """Marginal mask (3×3), gender (2×2) and age (3×3) matrices of an 18-class matrix."""
    c = cm18.reshape(3, 2, 3, 3, 2, 3)  # true (m,g,a) × pred (m,g,a)
    return {"mask": c.sum((1, 2, 4, 5)), "gender": c.sum((0, 2, 3, 5)), "age": c.sum((0, 1, 3, 4))}


def head_f1(cm18: np.ndarray) -> dict[str, float]:
    return {h: macro_f1(m) for h, m in head_confusions(cm18).items()}


def summarize(cm: np.ndarray, loss_sum: float, n: int, *, heads: bool) -> dict[str, float]:
    out = {"loss": loss_sum / max(n, 1), "acc": accuracy(cm), "f1": macro_f1(cm)}
    if heads:
        out.update({f"f1_{h}": v for h, v in head_f1(cm).items()})
    return out
