"""``maskcls train``: k-fold training on a prepared directory, on HF Accelerate.

One process or many (``accelerate launch`` / ``torchrun``): every rank trains on its shard,
rank 0 alone writes. Each epoch ends with exact validation metrics, ``metrics.csv`` and
``last.pt`` (full state); ``best.pt`` and ``oof.csv`` follow the best validation macro F1.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .. import __version__
from ..config import Config, config_from_dict, dump_yaml, load_config
from ..data.loader import build_loader
from ..data.pipeline import Preprocessing, fold_rows, make_dataset, resolve_preprocessing
from ..data.prepared import Prepared, load_prepared
from ..errors import ConfigError
from ..models.factory import build_model, pretrained_info, unwrap_model
from ..utils import atomic_write_text, seed_everything
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .losses import build_loss
from .loop import TrainingDiverged, evaluate, steps_per_epoch, train_one_epoch
from .optim import build_optimizer, build_scheduler, param_groups
from .rundir import (create_run_dir, next_run_dir, read_run_info, summarize_run, write_lr_csv, write_metrics_csv,
                     write_oof)
from .sampler import EpochSampler, balanced_weights

log = logging.getLogger(__name__)


def parse_folds(spec: str, k: int) -> list[int]:
    if spec in ("all", "", None):
        return list(range(k))
    try:
        folds = sorted({int(s) for s in str(spec).split(",")})
    except ValueError:
        raise ConfigError(f"--folds {spec!r}: use 'all', one fold like 0, or a list like 0,2") from None
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise ConfigError(f"--folds {spec!r}: fold(s) {bad} do not exist; the prepared dir has folds 0..{k - 1}")
    return folds


def mixed_precision(choice: str) -> str:
    if choice != "auto":
        if choice == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 (works on CPU) or no")
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: there bf16 autocast speeds CPU training up; on AVX2-only CPUs it is
    emulated and measured ~8x slower than fp32 (docs/benchmarks.md)."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(c() for c in checks if c is not None)


def make_accelerator(cfg: Config) -> Accelerator:
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    acc = Accelerator(mixed_precision=mixed_precision(cfg.train.mixed_precision), cpu=not torch.cuda.is_available())
    if not acc.is_main_process:
        logging.getLogger("maskcls").setLevel(logging.WARNING)
    return acc


@dataclass
class FoldContext:
    """What every fold shares."""
    cfg: Config
    prep: Prepared
    run: Path
    acc: Accelerator
    resume: bool


def _loaders(ctx: FoldContext, fold: int, pp: Preprocessing):
    cfg, acc = ctx.cfg, ctx.acc
    tr_rows, va_rows = fold_rows(ctx.prep, fold)
    seed = cfg.train.seed + fold
    train_ds = make_dataset(ctx.prep, tr_rows, cfg.data, pp, training=True, seed=seed)
    valid_ds = make_dataset(ctx.prep, va_rows, cfg.data, pp, training=False, seed=seed)
    per_rank = len(train_ds) // acc.num_processes
    if cfg.train.batch_size > per_rank:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the training set of fold {fold} "
                          f"({per_rank} images per process); lower train.batch_size")
    weights = balanced_weights(tr_rows["label"].to_numpy()) if cfg.data.sampler == "balanced" else None
    sampler = EpochSampler(len(train_ds), seed=seed, weights=weights, rank=acc.process_index,
                           world=acc.num_processes)
    nw = cfg.data.num_workers if cfg.data.num_workers is not None else min(8, os.cpu_count() or 1)
    common = {"workers": nw, "kind": cfg.data.loader}
    train_loader = build_loader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler, **common)
    vs = EpochSampler(len(valid_ds), seed=0, shuffle=False, rank=acc.process_index, world=acc.num_processes,
                      drop_uneven=False)
    valid_loader = build_loader(valid_ds, batch_size=cfg.train.valid_batch_size, sampler=vs, **common)
    return tr_rows, va_rows, train_ds, sampler, train_loader, valid_loader


def _model_meta(ctx: FoldContext, fold: int, pp: Preprocessing, weights: str) -> dict:
    meta = {"num_classes": ctx.prep.num_classes, "class_names": ctx.prep.class_names, "task": ctx.prep.task,
            "heads": ctx.cfg.model.heads, "model_name": ctx.cfg.model.name, "fold": fold,
            "preprocessing": pp.to_dict(), "prepared": str(ctx.prep.dir.resolve()), "weights": weights,
            "maskcls_version": __version__}
    if pp.faces:  # predict on new photos must crop them the same way
        from ..data.faces import face_settings, load_face_crops
        meta["face_settings"] = face_settings(load_face_crops(ctx.prep.dir)[1])
    return meta


def _epoch_line(fold: int, epoch: int, epochs: int, tm: dict, vm: dict, lr: float, best: bool) -> str:
    heads = "".join(f" {h} {vm[f'f1_{h}']:.3f}" for h in ("mask", "gender", "age") if f"f1_{h}" in vm)
    return (f"fold {fold} epoch {epoch + 1}/{epochs}: train loss {tm['loss']:.4f} acc {tm['acc']:.3f} "
            f"f1 {tm['f1']:.3f} | valid loss {vm['loss']:.4f} acc {vm['acc']:.3f} f1 {vm['f1']:.4f}"
            f"{' (' + heads.strip() + ')' if heads else ''} | lr {lr:.2e} | "
            f"{tm['seconds'] + vm['seconds']:.1f}s {tm['images'] / max(tm['seconds'], 1e-9):.1f} img/s"
            f"{' *best*' if best else ''}")


def train_fold(ctx: FoldContext, fold: int) -> dict:
    cfg, acc, fold_dir = ctx.cfg, ctx.acc, ctx.run / f"fold{fold}"
    if acc.is_main_process:
        fold_dir.mkdir(exist_ok=True)
    seed_everything(cfg.train.seed + fold)
    info = pretrained_info(cfg.model.name)
    pp = resolve_preprocessing(cfg.data, ctx.prep, info.image_size, info.mean, info.std)
    model, info = build_model(cfg.model.name, num_classes=ctx.prep.num_classes, heads=cfg.model.heads,
                              pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate, mean=pp.mean, std=pp.std)
    tr_rows, va_rows, train_ds, sampler, train_loader, valid_loader = _loaders(ctx, fold, pp)
    counts = np.bincount(tr_rows["label"].to_numpy(), minlength=ctx.prep.num_classes)
    criterion = build_loss(cfg.loss.name, num_classes=ctx.prep.num_classes, class_counts=counts,
                           heads=cfg.model.heads, label_smoothing=cfg.loss.label_smoothing,
                           focal_gamma=cfg.loss.focal_gamma, head_weights=cfg.loss.head_weights,
                           weight_power=cfg.loss.weight_power).to(acc.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups(model, lr=cfg.optim.lr, head_lr_mult=cfg.optim.head_lr_mult)
    optimizer = build_optimizer(groups, name=cfg.optim.name, lr=cfg.optim.lr,
                                weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov)
    spe = steps_per_epoch(len(train_loader), cfg.train.accum_steps, cfg.train.max_train_batches)
    scheduler = build_scheduler(optimizer, name=cfg.sched.name, steps_per_epoch=spe, epochs=cfg.train.epochs,
                                base_lr=cfg.optim.lr, warmup_epochs=cfg.sched.warmup_epochs, T_0=cfg.sched.T_0,
                                T_mult=cfg.sched.T_mult, max_lr=cfg.sched.max_lr, min_lr=cfg.sched.min_lr)
    if cfg.train.compile:
        model = torch.compile(model)
    model, optimizer = acc.prepare(model, optimizer)
    st = {"epoch": 0, "best_f1": -1.0, "best_acc": 0.0, "best_epoch": -1, "bad_epochs": 0, "history": [],
          "lrs": [], "status": "running"}
    if ctx.resume and ((fold_dir / "last.pt").exists() or (fold_dir / "last.prev.pt").exists()):
        ck = load_checkpoint(fold_dir / "last.pt")
        unwrap_model(acc.unwrap_model(model)).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if acc.scaler is not None and ck.get("scaler"):
            acc.scaler.load_state_dict(ck["scaler"])
        st = ck["state"]
        set_rng_state(ck["rng"])
        log.info("fold %d: resuming after epoch %d (best f1 %.4f)", fold, st["epoch"], st["best_f1"])
    meta = _model_meta(ctx, fold, pp, info.weights)
    if st["status"] in ("done", "stopped"):
        return _fold_result(st)
    writer = _writer(cfg, fold_dir) if acc.is_main_process else None
    per_head = ctx.prep.task == "mask_gender_age"
    labels = va_rows["label"].to_numpy()
    try:
        for epoch in range(st["epoch"], cfg.train.epochs):
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            try:
                tm = train_one_epoch(model, criterion, optimizer, scheduler, train_loader, acc, epoch=epoch,
                                     num_classes=ctx.prep.num_classes, heads=cfg.model.heads,
                                     accum_steps=cfg.train.accum_steps, clip_grad=cfg.train.clip_grad,
                                     channels_last=cfg.train.channels_last, max_batches=cfg.train.max_train_batches,
                                     per_head=per_head, lr_log=st["lrs"])
            except TrainingDiverged as e:
                log.error("fold %d stopped: %s; the last good checkpoint %s is kept", fold, e, fold_dir / "last.pt")
                st["status"] = "diverged"
                break
            vm, probs = evaluate(model, valid_loader, acc, criterion=criterion, labels=labels,
                                 num_classes=ctx.prep.num_classes, heads=cfg.model.heads,
                                 channels_last=cfg.train.channels_last, per_head=per_head)
            st = _after_epoch(ctx, fold, epoch, st, tm, vm, probs, model, optimizer, scheduler, meta, va_rows,
                              writer)
            if cfg.train.patience and st["bad_epochs"] >= cfg.train.patience:
                log.info("fold %d: no better validation F1 for %d epochs; stopping early", fold, st["bad_epochs"])
                st["status"] = "stopped"
                break
        else:
            st["status"] = "done"
        if acc.is_main_process:  # the same state with its final status; last.prev.pt stays the epoch before
            _save_last(ctx, fold_dir, st, model, optimizer, scheduler, meta, rotate=False)
    finally:
        if writer is not None:
            writer.close()
    acc.wait_for_everyone()
    return _fold_result(st)


def _fold_result(st: dict) -> dict:
    return {"best_f1": st["best_f1"], "best_acc": st["best_acc"], "best_epoch": st["best_epoch"] + 1,
            "epochs_run": st["epoch"], "status": st["status"]}


def _writer(cfg: Config, fold_dir: Path):
    if not cfg.run.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(fold_dir / "tb"))


def _after_epoch(ctx, fold, epoch, st, tm, vm, probs, model, optimizer, scheduler, meta, va_rows, writer) -> dict:
    cfg, acc, fold_dir = ctx.cfg, ctx.acc, ctx.run / f"fold{fold}"
    lr = optimizer.param_groups[0]["lr"]
    row = {"epoch": epoch + 1, "train_loss": tm["loss"], "train_acc": tm["acc"], "train_f1": tm["f1"],
           "valid_loss": vm["loss"], "valid_acc": vm["acc"], "valid_f1": vm["f1"],
           "valid_f1_mask": vm.get("f1_mask"), "valid_f1_gender": vm.get("f1_gender"),
           "valid_f1_age": vm.get("f1_age"), "lr": lr, "seconds": tm["seconds"] + vm["seconds"],
           "images_per_s": tm["images"] / max(tm["seconds"], 1e-9)}
    best = vm["f1"] > st["best_f1"]
    st = dict(st, epoch=epoch + 1, history=st["history"] + [row])
    if best:
        st.update(best_f1=vm["f1"], best_acc=vm["acc"], best_epoch=epoch, bad_epochs=0)
    else:
        st["bad_epochs"] += 1
    if acc.is_main_process:
        if best:
            write_oof(fold_dir / "oof.csv", va_rows, ctx.prep.abs_paths(va_rows), probs)
            save_checkpoint({"model": _cpu_state(model), "epoch": epoch + 1, "metric": vm["f1"],
                             "config": cfg.to_dict(), "meta": meta}, fold_dir / "best.pt")
        _save_last(ctx, fold_dir, st, model, optimizer, scheduler, meta)
        write_metrics_csv(fold_dir / "metrics.csv", st["history"])
        write_lr_csv(fold_dir / "lr.csv", st["lrs"])
        if writer is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    writer.add_scalar(k.replace("_", "/", 1), v, epoch + 1)
        log.info(_epoch_line(fold, epoch, cfg.train.epochs, tm, vm, lr, best))
    return st


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def _save_last(ctx, fold_dir, st, model, optimizer, scheduler, meta, rotate: bool = True) -> None:
    scaler = ctx.acc.scaler.state_dict() if ctx.acc.scaler is not None else {}
    save_checkpoint({"model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler, "state": st, "rng": rng_state(),
                     "epoch": st["epoch"], "metric": st["best_f1"], "config": ctx.cfg.to_dict(), "meta": meta},
                    fold_dir / "last.pt", keep_previous=rotate)


def _start_run(cfg: Config, prepared: str, folds: list[int], run_dir: str | None, acc: Accelerator) -> Path:
    name = cfg.run.name or cfg.model.name
    path = [str(Path(run_dir) if run_dir else next_run_dir(cfg.run.runs_dir, name))]
    if acc.is_main_process:
        run = create_run_dir(Path(path[0]))
        atomic_write_text(run / "config.yaml", dump_yaml(cfg))
        atomic_write_text(run / "run.json", json.dumps({
            "prepared": str(Path(prepared).resolve()), "folds": folds, "command": sys.argv,
            "maskcls_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "processes": acc.num_processes, "mixed_precision": acc.mixed_precision, "device": str(acc.device)},
            indent=2))
    broadcast_object_list(path)
    acc.wait_for_everyone()
    return Path(path[0])


def run_training(*, prepared: str | None, config: str | None = None, overrides: list[str] | None = None,
                 folds: str = "all", run_dir: str | None = None, resume: str | None = None) -> dict:
    """Train (or resume) and return summary.json's content plus ``run_dir``."""
    if resume:
        if config or overrides:
            raise ConfigError("--resume continues a run with its recorded config; drop -c/--set")
        info = read_run_info(resume)
        try:
            cfg = config_from_dict(yaml.safe_load((Path(resume) / "config.yaml").read_text()))
        except yaml.YAMLError as e:
            raise ConfigError(f"{resume}/config.yaml: not valid YAML ({e}); restore the file that train "
                              "wrote") from None
        prep = load_prepared(prepared or info["prepared"])
        fold_list, acc = info["folds"], make_accelerator(cfg)
        run = Path(resume)
    else:
        if not prepared:
            raise ConfigError("train needs a prepared directory (maskcls prepare SOURCE --out DIR), or --resume RUN")
        cfg = load_config(config, overrides)
        prep = load_prepared(prepared)
        fold_list = parse_folds(folds, prep.num_folds)
        pretrained_info(cfg.model.name)  # unknown model: fail before creating anything
        if cfg.model.heads == "auto":  # resolved here, so config.yaml records what ran
            cfg.model.heads = "multi" if prep.task == "mask_gender_age" else "single"
        acc = make_accelerator(cfg)
        run = _start_run(cfg, prepared, fold_list, run_dir, acc)
    if cfg.model.heads == "multi" and prep.task != "mask_gender_age":
        raise ConfigError("model.heads=multi needs mask/gender/age labels; this prepared dir has a generic task")
    ctx = FoldContext(cfg, prep, run, acc, resume=bool(resume))
    results: dict[int, dict] = {}
    interrupted = False
    try:
        for f in fold_list:
            results[f] = train_fold(ctx, f)
    except KeyboardInterrupt:
        interrupted = True
    summary = None
    if acc.is_main_process:
        for f in fold_list:
            results.setdefault(f, {"best_f1": None, "status": "interrupted" if interrupted else "pending"})
        summary = summarize_run(run, name=run.name, task=prep.task, class_names=prep.class_names,
                                heads=cfg.model.heads, folds=results,
                                finished=not interrupted and all(r["status"] in ("done", "stopped") for r in results.values()))
        if cfg.run.report:
            _report(run)
    if interrupted:
        raise RunInterrupted(run)
    return {**(summary or {}), "run_dir": str(run), "is_main": acc.is_main_process}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: completed epochs are saved; ``run`` can be resumed."""

    def __init__(self, run: Path):
        super().__init__(str(run))
        self.run = run


def _report(run: Path) -> None:
    try:
        from ..report import write_report
        write_report(run)
    except Exception as e:  # noqa: BLE001 - a report failure must not lose a finished training
        log.warning("could not write the report (%s); run `maskcls report %s` to retry", e, run)


def format_summary(s: dict) -> str:
    lines = [f"run: {s['run_dir']}"]
    for f, r in s["folds"].items():
        if r.get("best_f1") is not None:
            lines.append(f"fold {f}: best val macro F1 {r['best_f1']:.4f} (acc {r['best_acc']:.4f}, epoch "
                         f"{r['best_epoch']}, {r['status']})")
    if s.get("oof_f1") is not None:
        lines.append(f"out-of-fold macro F1: {s['oof_f1']:.4f}")
    if s.get("head_f1"):
        lines.append("per-head F1: " + ", ".join(f"{h} {v:.4f}" for h, v in s["head_f1"].items()))
    if s.get("mean_f1") is not None:
        lines.append(f"best val macro F1: {s['mean_f1']:.4f}")
    return "\n".join(lines)
