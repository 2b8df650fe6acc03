"""The search space: a YAML file with one config key per entry, checked before anything trains.

::

    optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    loss.label_smoothing: {type: float, low: 0.0, high: 0.2}
    data.image_size: {type: int, low: 96, high: 224, step: 32}
    model.name: {type: categorical, choices: [mobilenetv2_100, tf_efficientnet_lite0]}

Keys, types and bounds are checked against the typed config with the same checks as ``--set``
(unknown keys get a did-you-mean, bounds outside a key's range are refused); each entry becomes an
Optuna distribution, sampled with ``trial.suggest_*``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from ..config import Config
from ..config_io import all_keys, load_yaml, set_value
from ..errors import ConfigError, did_you_mean

TYPES = ("float", "int", "categorical")
FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
          "categorical": {"type", "choices"}}


@dataclass(frozen=True)
class Param:
    """One searched config key."""
    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """The values a grid search tries (``--sampler grid``)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None:
            raise ConfigError(f"{self.key}: --sampler grid needs a step for a {self.type} range (or type: "
                              "categorical with the values to try)")
        if self.type == "int":
            return list(range(self.low, self.high + 1, self.step))
        n = int(np.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def to_dict(self) -> dict:
        d = {"type": self.type}
        if self.type == "categorical":
            return {**d, "choices": list(self.choices)}
        d.update(low=self.low, high=self.high)
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


def _value_type(key: str, value: Any) -> type:
    """The Python type ``key`` takes ``value`` as (the same coercion and range check as ``--set``)."""
    cfg = Config()
    set_value(cfg, key, value)
    section, name = key.split(".", 1)
    return type(getattr(getattr(cfg, section), name))


def _number(key: str, spec: dict, name: str) -> float | int:
    v = spec.get(name)
    if isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{key}: {name} must be a number, got {v!r}")
    return v


def _range_param(key: str, spec: dict, kind: str) -> Param:
    low, high = _number(key, spec, "low"), _number(key, spec, "high")
    step = _number(key, spec, "step") if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}: log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{key}: low {low} is above high {high}")
    if log and low <= 0:
        raise ConfigError(f"{key}: log: true needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise ConfigError(f"{key}: step must be > 0, got {step}")
    if log and step is not None:
        raise ConfigError(f"{key}: give either log: true or a step, not both (Optuna samples one or the other)")
    want = int if kind == "int" else float
    for bound in (low, high):
        got = _value_type(key, bound)  # unknown key, out of the key's range, wrong kind of value: ConfigError
        if got is not want:
            hint = {int: "type: int", float: "type: float"}.get(got, "type: categorical with its values")
            raise ConfigError(f"{key} takes {got.__name__} values, not a {kind} range; use {hint}")
    if kind == "int":
        if any(float(v) != int(v) for v in (low, high, step or 1)):
            raise ConfigError(f"{key}: type: int needs whole-number low, high and step")
        low, high, step = int(low), int(high), int(step) if step is not None else None
    else:
        low, high, step = float(low), float(high), float(step) if step is not None else None
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _categorical(key: str, spec: dict) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{key}: type: categorical needs a non-empty list, e.g. choices: [a, b]")
    for c in choices:
        if c is not None and not isinstance(c, (bool, int, float, str)):
            raise ConfigError(f"{key}: choice {c!r} is not a single value (Optuna stores numbers, strings, "
                              "booleans or null)")
        _value_type(key, c)
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{key}: choices repeat a value: {choices}")
    return Param(key, "categorical", choices=tuple(choices))


def parse_param(key: str, spec: Any) -> Param:
    """One entry of the space file, checked against the config key it names; raises ConfigError."""
    if key not in all_keys():
        raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, all_keys())}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping like {{type: float, low: 0.0, high: 0.2}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{key}: type {kind!r} is not one of {', '.join(TYPES)}"
                          f"{did_you_mean(str(kind), TYPES)}")
    extra = set(spec) - FIELDS[kind]
    if extra:
        raise ConfigError(f"{key}: unknown field(s) {', '.join(sorted(map(str, extra)))} for type {kind}; "
                          f"allowed: {', '.join(sorted(FIELDS[kind]))}")
    return _categorical(key, spec) if kind == "categorical" else _range_param(key, spec, kind)


def parse_space(data: Any, source: str = "space") -> list[Param]:
    """A parsed space mapping → checked params, in file order."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a mapping of config keys to ranges, e.g. "
                          "'optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}'")
    params = []
    for key, spec in data.items():
        try:
            params.append(parse_param(str(key), spec))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    return params


def load_space(path: str | Path) -> list[Param]:
    """The checked search space in YAML file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"search space {p} not found; write a YAML file with one config key per entry "
                                "(docs/tune.md has an example)")
    try:
        data = load_yaml(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    return parse_space(data, source=str(p))


def apply_params(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with the sampled ``values`` set (checked as ``--set`` is)."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        set_value(out, key, value)
    return out
