"""Time to accuracy: maskcls' defaults and timm's ``train.py`` on one prepared set, epoch by epoch.

``maskcls bench time-to-f1 PREPARED --timm-repo GITDIR`` trains one fold of ``PREPARED`` twice, one
process after the other (never at once): first timm's reference train.py (:mod:`.peer_timm`: an
ImageFolder of the same split, the same model and offline weights), then maskcls' defaults; the model,
split, input size, epochs, batch × accumulation, validation batch, loader workers, seed and precision
are the same on both sides. Each side is a fresh Python process, and its clock starts when the
process is started, so imports and set-up count on both sides:

* maskcls: a child process runs the training and notes the wall-clock time after every epoch's
  checkpoint (``run_training(on_epoch_end=…)``) in ``maskcls/epochs.jsonl``; validation macro F1 and
  training images/s come from its ``metrics.csv``.
* timm: the end of an epoch is the modification time of that epoch's checkpoint
  (``checkpoint-<e>.pth.tar``, all kept with ``--checkpoint-hist``); each checkpoint is scored after the
  run with maskcls' metrics on the validation fold (timm logs top-1, not macro F1); training seconds
  per epoch are its logged average update time × updates (loader waits included, validation not).

Two ratios close the table:

* ``time-to-F1 speedup`` = timm's wall time to its best F1 ÷ maskcls' wall time to first reach that F1
  (when maskcls never reaches it, ``< timm's time ÷ maskcls' whole run``: the most it could be);
* ``throughput`` = maskcls' training images/s ÷ timm's, each over all epochs: total images ÷ total
  training seconds, validation excluded on both sides. Each side trains as many images every epoch,
  so that is the harmonic mean of its per-epoch images/s.

Everything lands in a scratch folder (``--out``, default ``.cache/time-to-f1/<set>-<UTC time>``):
both logs, the runs, and ``result.json`` with the per-epoch numbers.
"""
from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from ..config import Config
from ..errors import ConfigError, MaskclsError
from ..fsutil import atomic_write_json, default_workers
from . import peer_timm

log = logging.getLogger(__name__)


class SideFailed(MaskclsError):
    """One side's training process failed; the message names its log."""


@dataclass(frozen=True)
class Budget:
    """The fixed budget of docs/quality.md: fold 0, 128 px, 3 epochs, seed 719, the machine's precision."""
    fold: int = 0
    image_size: int = 128
    epochs: int = 3
    seed: int = 719
    precision: str = "auto"   # auto | no | bf16 (train.mixed_precision)


@dataclass(frozen=True)
class EpochPoint:
    """One side's state after an epoch (1-based): validation macro F1, wall seconds since its process
    started (training and validation so far), and that epoch's training images/s."""
    epoch: int
    f1: float
    wall_s: float
    train_img_s: float


def budget_config(base: Config | None, budget: Budget) -> Config:
    """``base`` (default: the defaults) at ``budget``, with the precision resolved on this machine (so that
    the child trains in exactly what timm is told; ``MASKCLS_CPU_BF16`` is honoured here), validating one view
    (``train.valid_tta=none``): timm's checkpoints are scored on one view, and the two F1s must be alike."""
    from ..engine.accel import resolve_precision
    cfg = base or Config()
    return replace(cfg, data=replace(cfg.data, image_size=budget.image_size),
                   train=replace(cfg.train, epochs=budget.epochs, seed=budget.seed, valid_tta="none",
                                 mixed_precision=resolve_precision(budget.precision)))


def _run_logged(cmd: list[str], log_path: Path, cwd: Path) -> float:
    """Run ``cmd`` with its output in ``log_path``; returns the wall-clock start (time.time())."""
    log.info("running %s (log: %s)", " ".join(cmd[:3]), log_path)
    with open(log_path, "wb") as fh:
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise SideFailed(f"{cmd[1]} exited with status {rc}; its log is {log_path}; last lines:\n  "
                         + "\n  ".join(tail))
    return t0


def run_timm(prep, cfg: Config, fold: int, out: Path, rev: str = "HEAD", timm_repo: str | Path = "") -> dict:
    """timm's train.py at ``cfg``'s settings on ``fold``; returns its per-epoch points and command."""
    import torch
    if cfg.model.pretrained not in ("package", "none"):
        raise ConfigError(f"model.pretrained={cfg.model.pretrained}: the bench gives timm's train.py the same "
                          "weights through --pretrained-path, from model.pretrained=package (or none)")
    out.mkdir(parents=True)
    train_py = peer_timm.fetch_train_py(timm_repo, out, rev)
    k = prep.task.num_classes
    data, n_train, _ = peer_timm.image_folder(prep, out, fold)
    s = peer_timm.PeerSettings(
        arch=cfg.model.name, img_size=cfg.data.image_size, epochs=cfg.train.epochs, batch=cfg.train.batch_size,
        valid_batch=cfg.train.valid_batch_size, accum=cfg.train.accum_steps, seed=cfg.train.seed,
        workers=cfg.data.num_workers if cfg.data.num_workers is not None else default_workers(),
        precision=cfg.train.mixed_precision, device="cuda" if torch.cuda.is_available() else "cpu")
    weights = peer_timm.timm_weights(out, s.arch) if cfg.model.pretrained == "package" else None
    cmd = peer_timm.timm_command(train_py, data, s, num_classes=k,
                                 classes=peer_timm.class_map(out, k), weights=weights, output=out / "runs")
    t0 = _run_logged(cmd, out / "train.log", out)
    seconds = peer_timm.train_seconds((out / "train.log").read_text(errors="replace"))
    images = (n_train // s.batch) * s.batch  # its training loader drops the last incomplete batch
    points = []
    for e in range(s.epochs):
        ck = out / "runs" / "peer" / f"checkpoint-{e}.pth.tar"
        if not ck.is_file() or e not in seconds:
            raise SideFailed(f"timm's train.py left no checkpoint or no training time for epoch {e + 1} "
                             f"({ck}, {out / 'train.log'}): has its output layout or log format changed?")
        points.append(EpochPoint(e + 1, peer_timm.score_checkpoint(ck, data, k, s.img_size, s.arch),
                                 ck.stat().st_mtime - t0, images / seconds[e]))
    return {"points": points, "command": cmd, "started": t0}


def run_maskcls(prep, cfg: Config, fold: int, out: Path) -> dict:
    """maskcls at ``cfg`` on ``fold``, in a child process; returns its per-epoch points."""
    from ..config_io import dump_yaml
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    cmd = [sys.executable, "-m", __name__, str(out / "config.yaml"), str(Path(prep.dir).resolve()), str(fold),
           str(out / "run"), str(out / "epochs.jsonl")]
    t0 = _run_logged(cmd, out / "train.log", out)
    ends = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines() if line.strip()]
    m = pd.read_csv(out / "run" / f"fold{fold}" / "metrics.csv")
    if len(ends) != len(m):
        raise SideFailed(f"{out / 'epochs.jsonl'} has {len(ends)} epochs, metrics.csv {len(m)}; "
                         f"see {out / 'train.log'}")
    points = [EpochPoint(int(row["epoch"]), float(row["valid_f1"]), end["time"] - t0, float(row["images_per_s"]))
              for end, (_, row) in zip(ends, m.iterrows())]
    return {"points": points, "command": cmd, "started": t0}


def speedup(timm: list[EpochPoint], mask: list[EpochPoint]) -> dict:
    """Time-to-F1 and throughput ratios from the two sides' epochs (see the module docstring)."""
    best = max(timm, key=lambda p: p.f1)  # max keeps the first epoch that reached the best F1
    reached = next((p for p in mask if p.f1 >= best.f1), None)
    out = {"timm_best_f1": best.f1, "timm_best_epoch": best.epoch, "timm_wall_s": best.wall_s,
           "maskcls_epoch": reached.epoch if reached else None, "reached": reached is not None}
    out["maskcls_wall_s"] = reached.wall_s if reached else mask[-1].wall_s
    out["time_to_f1"] = best.wall_s / out["maskcls_wall_s"]
    out["timm_img_s"] = len(timm) / sum(1 / p.train_img_s for p in timm)
    out["maskcls_img_s"] = len(mask) / sum(1 / p.train_img_s for p in mask)
    out["throughput"] = out["maskcls_img_s"] / out["timm_img_s"]
    return out


def format_table(title: str, sides: dict[str, list[EpochPoint]], r: dict) -> str:
    lines = [title, f"{'side':<8} {'epoch':>5} {'val macro F1':>12} {'wall s':>8} {'train img/s':>11}"]
    for name, points in sides.items():
        lines += [f"{name:<8} {p.epoch:>5} {p.f1:>12.4f} {p.wall_s:>8.1f} {p.train_img_s:>11.1f}"
                  for p in points]
    lines.append(f"timm's best F1 {r['timm_best_f1']:.4f}: epoch {r['timm_best_epoch']}, {r['timm_wall_s']:.1f} s")
    if r["reached"]:
        lines.append(f"maskcls first reaches it at epoch {r['maskcls_epoch']}, {r['maskcls_wall_s']:.1f} s")
        lines.append(f"time-to-F1 speedup vs timm train.py: {r['time_to_f1']:.2f}")
    else:
        lines.append(f"maskcls never reaches it (best {max(p.f1 for p in sides['maskcls']):.4f} in "
                     f"{r['maskcls_wall_s']:.1f} s)")
        lines.append(f"time-to-F1 speedup vs timm train.py: < {r['time_to_f1']:.2f}")
    lines.append(f"throughput vs timm train.py: {r['throughput']:.2f} "
                 f"(training images/s: maskcls {r['maskcls_img_s']:.1f}, timm {r['timm_img_s']:.1f})")
    return "\n".join(lines)


def bench_time_to_f1(prepared: str | Path, timm_repo: str | Path, *, budget: Budget = Budget(),
                     base: Config | None = None, out: str | Path | None = None, rev: str = "HEAD") -> dict:
    """Both sides on ``prepared``, timm first; returns {"text", "timm", "maskcls", "ratios", "out"}.

    Args:
        prepared: a prepared directory (``maskcls prepare``) with folds.
        timm_repo: git directory of a copy of huggingface/pytorch-image-models.
        budget: fold, input size, epochs, seed and precision, given to both sides.
        base: maskcls' config before the budget is applied (default: the defaults).
        out: new scratch folder (default ``.cache/time-to-f1/<set>-<UTC time>``).
        rev: the revision of timm's train.py.
    """
    from ..prep.prepared import load_prepared
    prep = load_prepared(prepared)
    if not 0 <= budget.fold < prep.num_folds:
        raise ConfigError(f"--fold {budget.fold}: {prepared} has folds 0..{prep.num_folds - 1}")
    cfg = copy.deepcopy(budget_config(base, budget))  # resolved below in place: the caller's config stays as it was
    if cfg.train.batch_size == "auto":  # resolved here, so that timm's train.py gets the batch maskcls trains with
        import torch

        from ..engine.run import resolve_batch
        resolve_batch(cfg, prep, budget.image_size, torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                      [budget.fold])
    name = Path(prepared).resolve().name
    out = Path(out or Path(".cache/time-to-f1") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder with --out")
    timm = run_timm(prep, cfg, budget.fold, out.resolve() / "timm", rev, timm_repo)
    mask = run_maskcls(prep, cfg, budget.fold, out.resolve() / "maskcls")
    r = speedup(timm["points"], mask["points"])
    title = (f"time to F1: {name}, fold {budget.fold}, {cfg.model.name}, {cfg.data.image_size} px, "
             f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size} x {cfg.train.accum_steps}, seed "
             f"{cfg.train.seed}, precision {cfg.train.mixed_precision} (both sides); wall s = since process start")
    text = format_table(title, {"timm": timm["points"], "maskcls": mask["points"]}, r)
    atomic_write_json(out / "result.json", {
        "prepared": str(Path(prepared).resolve()), "budget": asdict(budget), "ratios": r,
        **{side: {"points": [asdict(p) for p in d["points"]], "started": d["started"], "command": d["command"]}
           for side, d in (("timm", timm), ("maskcls", mask))}, "text": text})
    return {"text": text, "timm": timm["points"], "maskcls": mask["points"], "ratios": r, "out": str(out)}


def _child(argv: list[str]) -> int:
    """``python -m maskcls.bench.time_to_f1 CONFIG PREPARED FOLD RUN_DIR EPOCH_LOG``: train one fold and
    append one JSON line per epoch (its number and wall-clock end, time.time()) to EPOCH_LOG."""
    from ..config_io import read_config
    from ..engine.run import run_training
    from ..prep.prepared import load_prepared
    config, prepared, fold, run_dir, epoch_log = argv
    cfg, prep = read_config(config), load_prepared(prepared)

    def mark(_fold: int, row: dict) -> None:
        with open(epoch_log, "a") as fh:
            fh.write(json.dumps({"epoch": int(row["epoch"]), "time": time.time()}) + "\n")

    run_training(cfg, prep, folds=[int(fold)], run_dir=run_dir, on_epoch_end=mark)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(_child(sys.argv[1:]))
