"""What a fold's trainer shares with its run and keeps of its own progress: the run's context, the fold's state
(saved in last.pt), and the lines and rows an epoch's metrics become."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from accelerate import Accelerator

from ...config import Config
from ...data.preprocessing import Preprocessing
from ...metrics import EpochMetrics
from ...prep.prepared import Prepared
from ...task import Task


@dataclass
class RunContext:
    """What every fold of a run shares (the config is the resolved one, as config.yaml records it)."""
    cfg: Config
    prep: Prepared
    task: Task
    pp: Preprocessing
    run: Path
    acc: Accelerator
    resume: bool


@dataclass
class FoldState:
    """Progress of one fold; stored as a plain dict in last.pt (``state``) so resuming restores it."""
    epoch: int = 0              # epochs completed
    best_f1: float = -1.0
    best_acc: float = 0.0
    best_epoch: int = -1        # 0-based index of the best epoch; -1 = none yet
    bad_epochs: int = 0         # epochs since the best (early stopping)
    history: list[dict] = field(default_factory=list)  # metrics.csv rows
    lrs: list[float] = field(default_factory=list)     # lr after every optimizer step
    status: str = "running"     # running | done | stopped | diverged
    average: dict | None = None  # train.average's result (extensions.averaging), once computed
    extras: dict = field(default_factory=dict)  # small state callbacks keep across a resume, by callback

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FoldState:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def record(self, row: dict, f1: float, acc: float) -> bool:
        """Add a finished epoch's metrics row; True when it is the best so far."""
        best = f1 > self.best_f1
        self.epoch, self.history = row["epoch"], self.history + [row]
        if best:
            self.best_f1, self.best_acc, self.best_epoch, self.bad_epochs = f1, acc, row["epoch"] - 1, 0
        else:
            self.bad_epochs += 1
        return best

    def result(self) -> dict:
        """The fold's entry in summary.json."""
        return {"best_f1": self.best_f1, "best_acc": self.best_acc, "best_epoch": self.best_epoch + 1,
                "epochs_run": self.epoch, "status": self.status,
                **({"average": self.average} if self.average else {})}


def epoch_line(fold: int, epoch: int, epochs: int, tm: EpochMetrics, vm: EpochMetrics, lr: float, best: bool) -> str:
    heads = " ".join(f"{name} {f1:.3f}" for name, f1 in vm.head_f1.items())
    return (f"fold {fold} epoch {epoch + 1}/{epochs}: train loss {tm.loss:.4f} acc {tm.acc:.3f} "
            f"f1 {tm.f1:.3f} | valid loss {vm.loss:.4f} acc {vm.acc:.3f} f1 {vm.f1:.4f}"
            f"{' (' + heads + ')' if heads else ''} | lr {lr:.2e} | "
            f"{tm.seconds + vm.seconds:.1f}s {tm.images_per_s:.1f} img/s"
            f"{' *best*' if best else ''}")


def metrics_row(epoch: int, tm: EpochMetrics, vm: EpochMetrics, lr: float, task: Task) -> dict:
    """A metrics.csv row (1-based ``epoch``)."""
    return {"epoch": epoch + 1, "train_loss": tm.loss, "train_acc": tm.acc, "train_f1": tm.f1,
            "valid_loss": vm.loss, "valid_acc": vm.acc, "valid_f1": vm.f1,
            **{f"valid_f1_{a.name}": vm.head_f1.get(a.name) for a in task.attributes},
            "lr": lr, "seconds": tm.seconds + vm.seconds, "images_per_s": tm.images_per_s}
