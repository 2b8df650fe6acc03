"""Metrics from a confusion matrix: exact macro F1 over all K classes, accuracy, per-attribute F1.

Counts accumulate over the whole epoch (never per-batch averages); F1 of a class with no
true and no predicted examples is 0, as sklearn's ``zero_division=0`` with ``labels=range(K)``.
The run summary, the report and the epoch lines all score through these functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .task import Task


def confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """K×K counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(labels, np.int64) * k + np.asarray(preds, np.int64),
                       minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def macro_f1(cm: np.ndarray) -> float:
    return float(per_class(cm)["f1"].mean())


def accuracy(cm: np.ndarray) -> float:
    n = cm.sum()
    return float(np.trace(cm) / n) if n else 0.0


def head_f1(cm: np.ndarray, task: Task) -> dict[str, float]:
    """Macro F1 of each attribute (mask, gender, age …) of a factored task; {} otherwise."""
    if not task.factored:
        return {}
    return {h: macro_f1(m) for h, m in task.attribute_confusions(cm).items()}


def summarize(cm: np.ndarray, loss_sum: float, n: int, task: Task) -> dict[str, float]:
    """Loss, accuracy, macro F1 and ``f1_<attribute>`` for a factored task."""
    out = {"loss": loss_sum / max(n, 1), "acc": accuracy(cm), "f1": macro_f1(cm)}
    out.update({f"f1_{h}": v for h, v in head_f1(cm, task).items()})
    return out


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's training or validation scores, over the whole epoch (all processes)."""
    loss: float
    acc: float
    f1: float
    images: int
    seconds: float
    head_f1: dict[str, float] = field(default_factory=dict)  # macro F1 per attribute of a factored task

    @classmethod
    def from_confusion(cls, cm: np.ndarray, loss_sum: float, n: int, task: Task, seconds: float) -> EpochMetrics:
        s = summarize(cm, loss_sum, n, task)
        return cls(loss=s["loss"], acc=s["acc"], f1=s["f1"], images=int(n), seconds=float(seconds),
                   head_f1=head_f1(cm, task))

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def class_table(cm: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1, support, predicted (index = class name) plus a 'macro' row
    whose F1 is the macro F1."""
    pc = per_class(cm)
    table = pd.DataFrame({k: pc[k] for k in ("precision", "recall", "f1", "support", "predicted")},
                         index=list(names))
    table.loc["macro"] = [pc["precision"].mean(), pc["recall"].mean(), pc["f1"].mean(), pc["support"].sum(),
                          pc["predicted"].sum()]
    return table


def oof_scores(oof: pd.DataFrame, task: Task) -> dict:
    """Scores of out-of-fold rows (``label``, ``pred`` columns): the one place they are computed.

    Returns {"f1", "acc", "head_f1", "images", "cm"}.
    """
    cm = confusion(oof["label"].to_numpy(), oof["pred"].to_numpy(), task.num_classes)
    return {"f1": macro_f1(cm), "acc": accuracy(cm), "head_f1": head_f1(cm, task), "images": int(cm.sum()),
            "cm": cm}
