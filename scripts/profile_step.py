"""Where a training step's time goes: torch.profiler on maskcls' own training loop, fp32 and bf16.

It trains fold 0 of a prepared set for one short epoch (``train.max_train_batches``) with the default
config at the given size and batch, and profiles steps ``--skip`` + ``--warmup`` + 1 … (the first ones
pay the loader's start and the allocator's first growth). A profiled step runs from one forward pass to
the next (global module and optimizer hooks mark it; nothing in maskcls is changed): forward, loss,
backward, the optimizer, the host-side per-batch work (metrics, progress, casts) and the loader wait.

Per step it reports, as the mean over the profiled steps (milliseconds):
  loader wait   DataLoader.__next__ (the main process waits for the worker processes)
  forward       the model's forward (autocast included) / loss: the criterion's forward
  backward      autograd's evaluate_function events (the backward kernels)
  optimizer     Optimizer.step (+ zero_grad)
  other ops     every other operator called from Python between them (to(), isfinite, item, argmax, …)
  untraced      the rest of the step: Python work in no operator (tqdm, numpy confusion, bookkeeping)
and the top operators by self CPU time. Validation runs after the profile and is not recorded.

usage: flock /tmp/maskcls-cpu.lock python scripts/profile_step.py --prepared .cache/quality/prepared/mask3dev \\
           --precision no --precision bf16 --out /tmp/profile-step
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

from maskcls.config import Config
from maskcls.config_io import load_config
from maskcls.engine.run import run_training
from maskcls.prep.prepared import load_prepared

PHASES = ("loader wait", "forward", "loss", "backward", "optimizer", "other ops", "untraced")


class StepMarks:
    """Global hooks: a ``forward:<Class>`` range around each outermost module call, and ``on_step`` called
    at the first outermost forward after an optimizer step (outside every range, so that one profiler step
    holds a whole cycle: forward, loss, backward, optimizer, metrics, the next batch's loader wait)."""

    def __init__(self, on_step):
        self.depth, self.open, self.stepped, self.on_step = 0, None, False, on_step
        self.handles = [register_module_forward_pre_hook(self.pre), register_module_forward_hook(self.post),
                        register_optimizer_step_post_hook(self.optimizer_stepped)]

    def optimizer_stepped(self, *_):
        self.stepped = True

    def pre(self, module, args):
        if self.depth == 0:
            if self.stepped:
                self.stepped = False
                self.on_step()
            self.open = record_function(f"forward:{type(module).__name__}")
            self.open.__enter__()
        self.depth += 1

    def post(self, module, args, output):
        self.depth -= 1
        if self.depth == 0 and self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None

    def remove(self):
        for h in self.handles:
            h.remove()


def phase(name: str, criterion_name: str) -> str:
    if "DataLoader" in name:
        return "loader wait"
    if name.startswith("forward:"):
        return "loss" if name == f"forward:{criterion_name}" else "forward"
    if name.startswith("autograd::engine::evaluate_function"):
        return "backward"
    if name.startswith("Optimizer."):
        return "optimizer"
    return "other ops"


def breakdown(events, criterion_name: str) -> tuple[dict[str, float], int, dict[str, float]]:
    """Mean milliseconds per step of each phase, the number of steps, and the 'other ops' by name."""
    steps = [e for e in events if e.name.startswith("ProfilerStep")]
    total: dict[str, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    for s in steps:
        covered = 0.0
        for c in s.cpu_children:
            ms = c.time_range.elapsed_us() / 1e3
            p = phase(c.name, criterion_name)
            total[p] += ms
            covered += ms
            if p == "other ops":
                others[c.name] += ms
        total["untraced"] += s.time_range.elapsed_us() / 1e3 - covered
        total["step"] += s.time_range.elapsed_us() / 1e3
    n = max(len(steps), 1)
    return {k: v / n for k, v in total.items()}, len(steps), {k: v / n for k, v in others.items()}


def profile_precision(prep, cfg: Config, precision: str, *, batch: int, skip: int, warmup: int, active: int,
                      work: Path) -> str:
    image_size = cfg.data.image_size
    cfg = replace(cfg, data=replace(cfg.data, image_size=image_size),
                  train=replace(cfg.train, epochs=1, batch_size=batch, mixed_precision=precision,
                                max_train_batches=skip + warmup + active + 2),
                  run=replace(cfg.run, trackers=[], report=False))
    result: dict = {}

    def ready(prof):
        result["events"] = prof.events()
        result["table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)

    prof = profile(activities=[ProfilerActivity.CPU], on_trace_ready=ready,
                   schedule=schedule(wait=skip, warmup=warmup, active=active, repeat=1))
    marks = StepMarks(prof.step)
    try:
        with prof:
            run_training(cfg, prep, folds=[0], run_dir=work / f"run-{precision}")
    finally:
        marks.remove()
    crit = _criterion_name(result["events"])
    phases, n, others = breakdown(result["events"], crit)
    img_s = batch / (phases["step"] / 1e3)
    lines = [f"## precision {precision}: {n} steps profiled, batch {batch}, {image_size} px, "
             f"{phases['step']:.0f} ms/step ({img_s:.1f} img/s under the profiler)"]
    lines += [f"  {p:<12} {phases.get(p, 0.0):8.1f} ms  {100 * phases.get(p, 0.0) / phases['step']:5.1f} %"
              for p in PHASES]
    top_other = sorted(others.items(), key=lambda kv: -kv[1])[:8]
    lines.append("  other ops, largest: " + ", ".join(f"{k} {v:.2f} ms" for k, v in top_other))
    lines += ["", "top operators by self CPU time (all profiled steps):", result["table"]]
    return "\n".join(lines)


def _criterion_name(events) -> str:
    """The loss module's class: the second outermost forward of a step (the model's comes first)."""
    names = [e.name for e in events if e.name.startswith("forward:")]
    distinct = list(dict.fromkeys(names))
    return distinct[1].split(":", 1)[1] if len(distinct) > 1 else ""


def cpu_summary() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    keep = [ln for ln in lscpu.splitlines() if ln.split(":")[0].strip() in ("Model name", "CPU(s)", "Flags")]
    flags = [ln for ln in keep if ln.startswith("Flags")]
    isa = " ".join(f for f in (flags[0].split()[1:] if flags else [])
                   if f.startswith(("avx512", "amx", "avx2", "fma")))
    head = [ln for ln in keep if not ln.startswith("Flags")]
    return (" | ".join(" ".join(ln.split()) for ln in head) + f" | SIMD flags: {isa or 'n/a'} | "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}")


def ab_steps(cfg: Config, precision: str, *, batch: int, rounds: int) -> str:
    """Training steps of the default model on random uint8 images (no loader), four variants interleaved
    step by step: fill_uninitialized_memory on/off × AdamW's per-tensor loop / fused. Under
    train.deterministic as maskcls sets it. Interleaving puts every variant under the same load."""
    import statistics
    import time

    from maskcls.models.factory import build_model
    torch.use_deterministic_algorithms(True, warn_only=True)
    model, _ = build_model(cfg.model.name, num_outputs=18, pretrained="none", image_size=cfg.data.image_size)
    model = model.to(memory_format=torch.channels_last).train()
    size = cfg.data.image_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,))
    variants = {(fill, impl): torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if impl == "fused"
                                                                              else {"foreach": False}))
                for fill in ("on", "off") for impl in ("loop", "fused")}
    times: dict = {v: [] for v in variants}
    for r in range(rounds + 1):  # round 0 warms every variant up
        keys = list(variants)[r % 4:] + list(variants)[:r % 4]
        for fill, impl in keys:
            torch.utils.deterministic.fill_uninitialized_memory = fill == "on"
            opt = variants[(fill, impl)]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:
                times[(fill, impl)].append(time.perf_counter() - t0)
    base = statistics.median(times[("on", "loop")])
    lines = [f"## interleaved A/B, precision {precision}: {rounds} steps per variant, batch {batch}, {size} px, "
             "median ms/step (speed-up vs maskcls today)"]
    for (fill, impl), t in times.items():
        m = statistics.median(t)
        lines.append(f"  fill_uninitialized_memory {fill:<3}  AdamW {impl:<5}  {1e3 * m:7.1f} ms  "
                     f"{batch / m:6.1f} img/s  x{base / m:.2f}")
    return "\n".join(lines)


def _interleaved_steps(models: dict, inputs: dict, y, precision: str, *, rounds: int, warm: int,
                       after: dict | None = None) -> tuple[dict, dict]:
    """Training steps of each of ``models`` (name -> module, each with its own AdamW) on its ``inputs[name]``,
    interleaved step by step with the order alternating per round, so that every side runs under the same
    load. Rounds before ``warm`` are not timed; round 0's step is returned apart (the first step: a compile's
    cost). ``after[name]``: called after that side's optimizer step, inside its timed step (an EMA update).
    Returns the median seconds per step of each side and its first step's seconds."""
    import statistics
    import time

    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    times: dict = {k: [] for k in models}
    first: dict = {}
    for r in range(rounds + warm):
        for k in (list(models) if r % 2 else list(models)[::-1]):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(models[k](inputs[k]).float(), y)
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if after and k in after:
                after[k]()
            dt = time.perf_counter() - t0
            if r == 0:
                first[k] = dt
            if r >= warm:
                times[k].append(dt)
    return {k: statistics.median(t) for k, t in times.items()}, first


def _ab_model(cfg: Config):
    """The default backbone with an 18-class head and random weights, under train.deterministic as maskcls
    sets it (NaN fill off); the model takes uint8 images and normalises them itself."""
    from maskcls.models.factory import build_model
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    model, _ = build_model(cfg.model.name, num_outputs=18, pretrained="none", image_size=cfg.data.image_size)
    return model


def compile_ab(cfg: Config, precision: str, *, batch: int, rounds: int) -> str:
    """Eager against ``torch.compile`` (inductor) training steps of the default model on random uint8 images,
    interleaved step by step. The compiled side's first forward+backward (the compile, on this machine's
    cores) is timed apart, with the steps it takes the compiled model to earn it back."""
    import copy

    eager = _ab_model(cfg).to(memory_format=torch.channels_last).train()
    models = {"eager": eager, "compiled": torch.compile(copy.deepcopy(eager))}
    size = cfg.data.image_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,))
    # rounds 0-1 warm up (the compile happens in round 0)
    med, first = _interleaved_steps(models, dict.fromkeys(models, x), y, precision, rounds=rounds, warm=2)
    gain = med["eager"] - med["compiled"]
    lines = [f"## torch.compile A/B, precision {precision}: {rounds} interleaved steps each, batch {batch}, "
             f"{size} px, median ms/step"]
    for k, m in med.items():
        lines.append(f"  {k:<9} {1e3 * m:7.1f} ms  {batch / m:6.1f} img/s  x{med['eager'] / m:.2f}   "
                     f"first step {first[k]:.1f} s")
    cost = first["compiled"] - first["eager"]
    lines.append(f"  compile cost {cost:.1f} s; " + (f"earned back after {cost / gain:.0f} steps" if gain > 0
                                                      else "never earned back (compiled is not faster)"))
    return "\n".join(lines)


def layout_ab(cfg: Config, precision: str, *, batch: int, rounds: int) -> str:
    """channels_last (NHWC, maskcls' ``train.channels_last`` default) against contiguous NCHW (what timm's
    train.py runs without ``--channels-last``) training steps of the default model on random uint8 images,
    interleaved step by step. Two copies of one model, each with its own AdamW, so that both see the same
    weights' cost."""
    import copy

    base = _ab_model(cfg)
    size = cfg.data.image_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 18, (batch,))
    layouts = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    models = {k: copy.deepcopy(base).to(memory_format=f).train() for k, f in layouts.items()}
    inputs = {k: x.contiguous(memory_format=f) for k, f in layouts.items()}
    med, _ = _interleaved_steps(models, inputs, y, precision, rounds=rounds, warm=1)  # round 0 warms both up
    lines = [f"## memory layout A/B, precision {precision}: {rounds} interleaved steps each, batch {batch}, "
             f"{size} px, median ms/step (speed-up vs channels_last, maskcls' default)"]
    for k, m in med.items():
        lines.append(f"  {k:<14} {1e3 * m:7.1f} ms  {batch / m:6.1f} img/s  x{med['channels_last'] / m:.2f}")
    return "\n".join(lines)


def ema_ab(cfg: Config, precision: str, *, batch: int, rounds: int) -> str:
    """Training steps without and with the EMA of the weights (``train.ema``: timm's ModelEmaV3 updated after
    every optimizer step, as maskcls' loop does), interleaved step by step: the per-step cost of the EMA."""
    import copy
    import itertools

    from maskcls.config import TrainConfig
    from maskcls.engine.extensions.ema import make_ema

    base = _ab_model(cfg).to(memory_format=torch.channels_last).train()
    size = cfg.data.image_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,))
    models = {"no EMA": base, "EMA": copy.deepcopy(base)}
    ema = make_ema(models["EMA"], TrainConfig(ema=True))
    step = itertools.count()
    med, _ = _interleaved_steps(models, dict.fromkeys(models, x), y, precision, rounds=rounds, warm=1,
                                after={"EMA": lambda: ema.update(models["EMA"], step=next(step))})
    lines = [f"## EMA A/B, precision {precision}: {rounds} interleaved steps each, batch {batch}, {size} px, "
             "median ms/step (speed-up vs no EMA)"]
    for k, m in med.items():
        lines.append(f"  {k:<7} {1e3 * m:7.1f} ms  {batch / m:6.1f} img/s  x{med['no EMA'] / m:.2f}")
    lines.append(f"  EMA update: {1e3 * (med['EMA'] - med['no EMA']):+.1f} ms per step "
                 f"({100 * (med['EMA'] / med['no EMA'] - 1):+.1f} %)")
    return "\n".join(lines)


def patch_adamw(impl: str) -> None:
    """torch.optim.AdamW with ``foreach=True`` or ``fused=True`` for every optimizer built after this
    (maskcls' build_optimizer looks the class up on torch.optim at call time); a measurement, not a change."""
    base = torch.optim.AdamW

    class AdamW(base):
        def __init__(self, params, **kw):
            super().__init__(params, **kw, **{impl: True})

    torch.optim.AdamW = AdamW


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default=".cache/quality/prepared/mask3dev")
    ap.add_argument("--precision", action="append", choices=["no", "bf16"], help="repeatable (default: both)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--skip", type=int, default=2, help="optimizer steps not profiled (start-up)")
    ap.add_argument("--warmup", type=int, default=2, help="profiler warm-up steps (traced, discarded)")
    ap.add_argument("--steps", type=int, default=10, help="steps profiled")
    ap.add_argument("--out", default=None, help="file to write the report to (also printed)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override on top of the defaults (repeatable), e.g. train.channels_last=false")
    ap.add_argument("--fill-uninitialized", choices=["on", "off"], default="on",
                    help="torch.utils.deterministic.fill_uninitialized_memory under train.deterministic "
                         "(on: torch's default, what maskcls runs with)")
    ap.add_argument("--ab-rounds", type=int, default=0,
                    help="instead of the profile: this many interleaved steps per variant of fill/AdamW (ab_steps)")
    ap.add_argument("--adamw", choices=["default", "foreach", "fused"], default="default",
                    help="AdamW's implementation (default: torch's choice, a per-tensor loop on CPU)")
    ap.add_argument("--compile-rounds", type=int, default=0,
                    help="instead of the profile: eager vs torch.compile, this many interleaved steps (compile_ab)")
    ap.add_argument("--layout-rounds", type=int, default=0,
                    help="instead of the profile: channels_last vs contiguous NCHW, this many interleaved steps "
                         "(layout_ab)")
    ap.add_argument("--ema-rounds", type=int, default=0,
                    help="instead of the profile: steps without vs with the EMA update (train.ema), this many "
                         "interleaved steps (ema_ab)")
    a = ap.parse_args()
    torch.utils.deterministic.fill_uninitialized_memory = a.fill_uninitialized == "on"
    if a.adamw != "default":
        patch_adamw(a.adamw)
    prep = load_prepared(a.prepared)
    cfg = load_config(None, [f"data.image_size={a.image_size}", *a.overrides])
    settings = " ".join(a.overrides) or "defaults"
    parts = [f"# profile of one training step: {Path(a.prepared).name}, fold 0, {settings}, "
             f"fill_uninitialized_memory {a.fill_uninitialized}, AdamW {a.adamw}", cpu_summary()]
    with tempfile.TemporaryDirectory() as tmp:
        for p in a.precision or ["no", "bf16"]:
            if a.compile_rounds:
                parts.append(compile_ab(cfg, p, batch=a.batch, rounds=a.compile_rounds))
                continue
            if a.layout_rounds:
                parts.append(layout_ab(cfg, p, batch=a.batch, rounds=a.layout_rounds))
                continue
            if a.ema_rounds:
                parts.append(ema_ab(cfg, p, batch=a.batch, rounds=a.ema_rounds))
                continue
            if a.ab_rounds:
                parts.append(ab_steps(cfg, p, batch=a.batch, rounds=a.ab_rounds))
                continue
            parts.append(profile_precision(prep, cfg, p, batch=a.batch, skip=a.skip, warmup=a.warmup,
                                           active=a.steps, work=Path(tmp)))
    text = "\n\n".join(parts)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
