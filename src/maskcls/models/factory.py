"""Build a timm model wrapped with on-device normalisation, from one of four weight sources."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import timm
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, did_you_mean
from .weights import PACKAGE_WEIGHTS, hub_reachable, load_file_state, load_package_state, package_weights_available

log = logging.getLogger(__name__)


class MaskClsNet(nn.Module):
    """A timm backbone that takes uint8 (or 0–255 float) NCHW images and normalises them itself.

    Keeping ``(x/255 − mean)/std`` inside the model means loaders ship uint8 (4× less to copy),
    the float conversion runs on the GPU, and exported models carry their preprocessing.
    """

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean255", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std255", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean255) / self.std255
        return self.backbone(x)


@dataclass
class ModelInfo:
    """What the pretrained config says, used when the user's config leaves it open."""
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    fixed_size: bool = False  # the architecture is built for one input size (ViTs: position embeddings)


def check_name(name: str) -> None:
    if not timm.is_model(name):
        raise ConfigError(f"unknown model.name {name!r}{did_you_mean(name, timm.list_models())}; "
                          "`maskcls models 'pattern*'` lists the architectures")


def pretrained_info(name: str) -> ModelInfo:
    check_name(name)
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (cfg or {})
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return ModelInfo(size, tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                     tuple(cfg.get("std", (0.229, 0.224, 0.225))), "", bool(cfg.get("fixed_input_size", False)))


def size_kwargs(info: ModelInfo, name: str, image_size: int | None) -> dict:
    """What timm must be told for ``image_size``: nothing for convolutional nets (any size runs);
    ``img_size`` for fixed-size architectures, refused up front where timm cannot build it."""
    if not info.fixed_size or image_size is None or image_size == info.image_size:
        return {}
    try:  # a probe build and forward pass; the caller's random stream stays untouched
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            probe = timm.create_model(name, pretrained=False, num_classes=1, img_size=image_size).eval()
            probe(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - TypeError (no img_size), AssertionError (not a patch multiple), ...
        raise ConfigError(f"{name} is built for {info.image_size}px inputs and cannot be built for "
                          f"data.image_size={image_size} ({type(e).__name__}: {e}); use "
                          f"data.image_size={info.image_size} or a convolutional model") from None
    return {"img_size": image_size}


def _create(name: str, pretrained: str, num_outputs: int, drop_rate: float, **size) -> tuple[nn.Module, str]:
    if pretrained == "none":
        return timm.create_model(name, pretrained=False, num_classes=num_outputs, drop_rate=drop_rate,
                                 **size), "random init"
    if pretrained == "hub":
        if not hub_reachable():
            raise ConfigError(f"model.pretrained=hub: the model hub is unreachable (offline or HF_HUB_OFFLINE=1). "
                              f"Use model.pretrained=package ({', '.join(sorted(PACKAGE_WEIGHTS))}), a local "
                              "weights file, or none")
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_outputs, drop_rate=drop_rate,
                                     **size), "hub"
        except Exception as e:  # noqa: BLE001 - network / missing-weights errors of many kinds
            raise ConfigError(f"model.pretrained=hub: download of {name} failed ({e}); use a local file") from None
    if pretrained == "package":
        m = timm.create_model(name, pretrained=False, drop_rate=drop_rate, **size)
        m.load_state_dict(load_package_state(name, m))
        m.reset_classifier(num_outputs)
        return m, f"package ({PACKAGE_WEIGHTS[name][2]})"
    # a local file
    m = timm.create_model(name, pretrained=False, num_classes=num_outputs, drop_rate=drop_rate, **size)
    state = load_file_state(pretrained)
    own = m.state_dict()
    clf = m.pretrained_cfg.get("classifier", "classifier")
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    body = [k for k in own if not k.startswith(clf)]
    missing = [k for k in body if k not in fitting]
    if missing:
        raise CheckpointError(f"{pretrained}: {len(missing)} of {len(body)} backbone tensors missing or of another "
                              f"shape (first: {missing[0]}); is it a {name} state dict?")
    m.load_state_dict(fitting, strict=False)
    return m, f"file {pretrained}"


def build_model(name: str, *, num_outputs: int, pretrained: str = "package", drop_rate: float = 0.0,
                mean=None, std=None, image_size: int | None = None) -> tuple[MaskClsNet, ModelInfo]:
    """Create ``name`` from timm with weights from ``pretrained`` (package | hub | none | path).

    Args:
        name: timm architecture.
        num_outputs: width of the last layer (the task's ``outputs(heads)``).
        pretrained: weight source; a missing source is an error, never a silent random init.
        drop_rate: classifier dropout.
        mean, std: normalisation (0–1 scale); default the pretrained config's.
        image_size: input side; fixed-size architectures (ViTs) are built for it, or refused.
    """
    info = pretrained_info(name)
    backbone, source = _create(name, pretrained, num_outputs, drop_rate, **size_kwargs(info, name, image_size))
    info.weights = source
    model = MaskClsNet(backbone, mean or info.mean, std or info.std)
    log.debug("built %s (%s), %d parameters", name, source, sum(p.numel() for p in model.parameters()))
    return model, info


def list_models(pattern: str = "*", offline_only: bool = False) -> list[tuple[str, bool]]:
    names = timm.list_models(pattern) if any(c in pattern for c in "*?[") else \
        [n for n in timm.list_models() if fnmatch.fnmatch(n, f"*{pattern}*")]
    rows = [(n, package_weights_available(n)) for n in names]
    return [r for r in rows if r[1]] if offline_only else rows


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP's ``.module`` and torch.compile's ``_orig_mod``."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
