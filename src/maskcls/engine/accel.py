"""Where training runs: the precision actually used, the Accelerator, determinism and seeds."""
from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ..config import TrainConfig
from ..errors import ConfigError

CPU_BF16_ENV = "MASKCLS_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: there bf16 autocast speeds CPU training up (1.58x for the default backbone at 224 px on
    a Zen 4, docs/benchmarks.md); on other CPUs it is emulated and several times slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(c() for c in checks if c is not None)


def cpu_auto_bf16() -> bool:
    """Whether ``train.mixed_precision=auto`` trains in bf16 autocast on this CPU: no, unless ``MASKCLS_CPU_BF16=1``.

    bf16 autocast on a CPU cost macro F1 on the real development sets with the defaults (more than the project's
    0.3-point rule allows, docs/quality.md), so ``auto`` is fp32 on every CPU, including those where bf16 is native
    and faster; ``train.mixed_precision=bf16`` asks for it. ``MASKCLS_CPU_BF16=1`` makes ``auto`` take the bf16
    path (``0`` or unset: fp32), so that one machine can run the precision-sensitive tests both ways.
    """
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is None or forced.strip() == "":
        return False
    if forced.strip() not in ("0", "1"):
        raise ConfigError(f"environment variable {CPU_BF16_ENV}={forced!r}: use 1 (bf16 autocast on this CPU), "
                          "0 (fp32), or unset it (fp32)")
    return forced.strip() == "1"


def resolve_precision(choice: str) -> str:
    """``train.mixed_precision`` → what Accelerate is told: 'bf16', 'fp16' or 'no'.

    'auto' = bf16 on GPUs that support it, else fp16; fp32 on a CPU (see :func:`cpu_auto_bf16`).
    """
    if choice != "auto":
        if choice == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 (works on CPU) or no")
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_auto_bf16() else "no"


def inference_precision(device: torch.device | str, trained: str) -> str:
    """'bf16' or 'fp32': how a run's model is scored on ``device``, by validation (so best.pt's choice, oof.csv and
    the decision offsets), predict, serve and export's reference alike, so that they all see the same numbers on
    the same device. bf16 autocast on a CUDA GPU that supports it for a run trained in mixed precision
    (``trained``: the run's train.mixed_precision, resolved or not); fp32 on every CPU, where bf16 autocast cost
    F1 (docs/quality.md), and for a run trained in fp32."""
    device = torch.device(device)
    mixed = trained in ("auto", "bf16", "fp16")
    return "bf16" if device.type == "cuda" and mixed and torch.cuda.is_bf16_supported() else "fp32"


def make_accelerator(train: TrainConfig) -> Accelerator:
    """An Accelerator for ``train``'s precision, with deterministic kernels when asked for."""
    if train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
        # memory: a CPU training step is 1.10x faster without it (docs/benchmarks.md, "Time to accuracy"). No kernel
        # maskcls runs reads such memory (tests: the same metrics with the fill on and off), so the
        # results stay bit-exact without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(train.mixed_precision)
    if _accelerate_state().get("_mixed_precision") not in (None, precision):
        _clear_accelerate_state()  # a second training in this process (tune's trials, a notebook) in another one
    acc = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    if not acc.is_main_process:  # one rank speaks
        logging.getLogger("maskcls").setLevel(logging.WARNING)
    return acc


# Accelerate keeps one AcceleratorState per process, a Borg whose attributes live in a class-level dict, and
# refuses a second precision once one is set. It offers no public way to change or reset it: its own test helper
# (accelerate.test_utils.AccelerateTestCase) calls the private AcceleratorState._reset_state. These two functions
# are the only places maskcls touches that private state; checked with Accelerate 1.16.
def _accelerate_state() -> dict:
    return AcceleratorState._shared_state


def _clear_accelerate_state() -> None:
    """Forget the process's Accelerator precision (the process group, PartialState, is kept)."""
    AcceleratorState._reset_state(reset_partial_state=False)


@contextlib.contextmanager
def process_state_restored():
    """What :func:`make_accelerator` changes process-wide (deterministic algorithms and their NaN fill,
    cuDNN's autotuner, ``CUBLAS_WORKSPACE_CONFIG``, the quiet ``maskcls`` logger of non-main ranks, Accelerate's
    process-wide state and its precision), put back on
    exit as it was: a training called from a notebook or ``maskcls tune`` leaves the process as it found it.
    Used as a decorator of :func:`maskcls.engine.run.run_training`."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
             logging.getLogger("maskcls").level, torch.utils.deterministic.fill_uninitialized_memory)
    accelerate_before = dict(_accelerate_state())
    try:
        yield
    finally:
        # the caller's Accelerator (a notebook's, another precision) sees its own state again
        _accelerate_state().clear()
        _accelerate_state().update(accelerate_before)
        deterministic, warn_only, benchmark, cublas, level, fill = saved
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        logging.getLogger("maskcls").setLevel(level)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
