"""``maskcls bench train``: training images/s, reference loop versus ours, side by side.

* reference — fp32, eager, NCHW float input already normalised, Adam + cross-entropy
  (the reference recipe's loop);
* ours fp32 — the same model and optimizer, channels_last, uint8 input normalised inside
  the model (what ``maskcls train`` runs with ``train.mixed_precision=no``);
* ours bf16 — the same under bf16 autocast (``train.mixed_precision=bf16``).

The closing ``train speedup`` line is for the precision ``train.mixed_precision=auto``
picks on this machine (:func:`maskcls.engine.accel.resolve_precision`): fp32 on a CPU, since
bf16 autocast cost macro F1 on the real development sets (``MASKCLS_CPU_BF16=1`` makes it bf16).

Synthetic tensors isolate the compute path from data loading (``bench loader`` measures
that). The reference and our fp32 loop take their timed steps alternately, so load from
other processes on the machine hits both alike; the bf16 loop runs afterwards, for only
``bf16_batches`` timed steps when the CPU lacks native bf16 (each step is then slow).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .common import ratio_line


class _Loop:
    """One model + optimizer; ``step`` trains on one batch and returns its seconds."""

    def __init__(self, model: nn.Module, *, bf16: bool, channels_last: bool):
        self.model, self.bf16, self.channels_last = model.train(), bf16, channels_last
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.crit = nn.CrossEntropyLoss()
        self.seconds, self.images = 0.0, 0

    def step(self, x: torch.Tensor, y: torch.Tensor, *, timed: bool = True) -> None:
        t0 = time.perf_counter()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.crit(self.model(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if timed:
            self.seconds += time.perf_counter() - t0
            self.images += len(y)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def bench_train(*, images: int = 120, batch_size: int = 30, model_name: str = "efficientnet_b0",
                image_size: int = 224, bf16_batches: int | None = None) -> dict:
    """Images/s of the reference loop and ours on ``images`` images (after one warm-up batch each).

    Args:
        images: timed images per fp32 loop (rounded up to whole batches, at least one).
        batch_size: images per step (the reference used 30).
        model_name: timm architecture, random weights.
        image_size: input side in pixels.
        bf16_batches: timed bf16 steps; default all batches with native bf16, else 1.

    Returns:
        ``{"reference_img_s", "fp32_img_s", "bf16_img_s", "ours_img_s", "auto", "speedup",
        "text"}``; ``text`` ends with ``train speedup vs reference: X.XX`` for the ``auto``
        precision.
    """
    from ..engine.accel import cpu_has_native_bf16, resolve_precision
    from ..models.factory import build_model
    native = cpu_has_native_bf16()
    auto = "bf16" if resolve_precision("auto") == "bf16" else "fp32"
    torch.manual_seed(0)
    nb = max(1, -(-images // batch_size))
    if bf16_batches is None:
        bf16_batches = nb if native else 1
    g = torch.Generator().manual_seed(0)
    u8 = [torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=g)
          for _ in range(nb + 1)]
    ys = [torch.randint(0, 18, (batch_size,), generator=g) for _ in range(nb + 1)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref_x = [(x.float() / 255 - mean) / std for x in u8]  # the reference's loader hands floats

    def ours_model() -> nn.Module:
        torch.manual_seed(0)
        model, _ = build_model(model_name, num_outputs=18, pretrained="none")
        return model.to(memory_format=torch.channels_last)

    torch.manual_seed(0)
    ref_model, _ = build_model(model_name, num_outputs=18, pretrained="none")
    ref = _Loop(ref_model.backbone, bf16=False, channels_last=False)  # plain timm model, float input
    fp32 = _Loop(ours_model(), bf16=False, channels_last=True)
    ref.step(ref_x[0], ys[0], timed=False)  # warm-up: allocator, oneDNN primitives
    fp32.step(u8[0], ys[0], timed=False)
    for i in range(1, nb + 1):  # alternate, so that machine load hits both alike
        ref.step(ref_x[i], ys[i])
        fp32.step(u8[i], ys[i])
    ref_rate, fp32_rate = ref.rate, fp32.rate
    del ref, fp32  # free their activations and optimizer state before the bf16 model
    bf16 = _Loop(ours_model(), bf16=True, channels_last=True)
    bf16.step(u8[0], ys[0], timed=False)
    for i in range(1, min(nb, bf16_batches) + 1):
        bf16.step(u8[i], ys[i])

    bf16_rate = bf16.rate
    ours = bf16_rate if auto == "bf16" else fp32_rate
    note = ("native bf16 (AVX512-BF16/AMX): train.mixed_precision=bf16 is the faster choice here, at a cost in F1 "
            "(docs/quality.md)" if native else
            f"no native bf16 on this CPU (AVX512-BF16/AMX absent): bf16 is emulated, timed on {bf16.images} images "
            "only")
    text = "\n".join([
        f"model {model_name} at {image_size}px, batch {batch_size}, {nb * batch_size} timed images per fp32 loop "
        f"(after 1 warm-up batch), {torch.get_num_threads()} threads, torch {torch.__version__}",
        f"{'loop':<52}{'img/s':>8}{'vs ref':>8}",
        f"{'reference (fp32, eager, NCHW float input)':<52}{ref_rate:>8.2f}{1.0:>8.2f}",
        f"{'maskcls fp32 + channels_last (uint8 input)':<52}{fp32_rate:>8.2f}{fp32_rate / ref_rate:>8.2f}",
        f"{'maskcls bf16 autocast + channels_last':<52}{bf16_rate:>8.2f}{bf16_rate / ref_rate:>8.2f}",
        note,
        f"mixed_precision=auto on this machine: {auto}",
        ratio_line("train", ours / ref_rate)])
    return {"reference_img_s": ref_rate, "fp32_img_s": fp32_rate, "bf16_img_s": bf16_rate,
            "ours_img_s": ours, "auto": auto, "speedup": ours / ref_rate, "text": text}
