"""Reading, checking and writing the typed configuration.

Defaults ← YAML file (``-c``) ← ``--set key=value``, only at the command line's edge. Every
key is checked: unknown keys fail with a did-you-mean, values are coerced to the field's type,
choices (``Literal``) and ranges (``metadata={"min": …}``) are enforced — also for configs
built in code with ``dataclasses.replace`` (:func:`validate` re-checks every field).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import Config
from .errors import ConfigError, did_you_mean

_BOOL_TAG = "tag:yaml.org,2002:bool"
# What a boolean key also accepts when written as a word (YAML 1.1's spellings, any case).
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only ``true`` and ``false``.

    PyYAML follows YAML 1.1, which also reads ``yes``/``no``/``on``/``off`` as booleans, so that
    ``train.mixed_precision: no`` arrived as ``False`` and was refused. Here such words stay
    strings; a boolean key still takes them (:func:`_coerce`), a string key gets the word.
    """


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_text_utf8(path: Path) -> str:
    """A config file's text; a file that is not UTF-8 is a ConfigError naming it (not a UnicodeDecodeError)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the config file as UTF-8") \
            from None


def load_yaml(text: str):
    """``text`` parsed as config YAML (:class:`ConfigLoader`); raises yaml.YAMLError."""
    return yaml.load(text, Loader=ConfigLoader)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        words = [w for a in inner if typing.get_origin(a) is Literal for w in typing.get_args(a)]
        if isinstance(value, str) and value in words:  # int | Literal["auto"]: the word, else the number
            return value
        try:
            return _coerce(key, value, inner[0])
        except ConfigError as e:
            if not words:
                raise
            raise ConfigError(f"{e}, or one of {', '.join(map(repr, words))}{did_you_mean(str(value), words)}") \
                from None
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not a valid choice; choose one of "
                              f"{', '.join(map(repr, args))}{did_you_mean(str(value), map(str, args))}")
        return value
    if origin is list:
        choices = typing.get_origin(args[0]) is Literal
        if choices and isinstance(value, str):
            value = [value]  # --set run.trackers=wandb means [wandb]
        if not isinstance(value, (list, tuple)):
            example = f"[{', '.join(typing.get_args(args[0])[:2])}]" if choices else "[0.5, 0.5, 0.5]"
            raise ConfigError(f"{key}: expected a list like {example}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # NaN passes every range check, and hflip=nan would silently mean never
            raise ConfigError(f"{key}: {value} is not a finite number; give a number (see `maskcls config` for "
                              "the default)")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _check_range(key: str, value: Any, meta: dict) -> None:
    if value is None or isinstance(value, (list, str, bool)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{key}: {value!r} is out of range {rng}")


def _sections(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``section.key`` on ``cfg`` with type/choice/range checks."""
    sections = _sections(cfg)
    if "." not in dotted:
        raise ConfigError(f"config key {dotted!r} needs a section, e.g. train.epochs; sections: "
                          f"{', '.join(sections)}{did_you_mean(dotted, all_keys())}")
    sec_name, key = dotted.split(".", 1)
    if sec_name not in sections:
        raise ConfigError(f"unknown config section {sec_name!r} in {dotted!r}; sections: {', '.join(sections)}"
                          f"{did_you_mean(dotted, all_keys())}")
    sec = sections[sec_name]
    fields = {f.name: f for f in dataclasses.fields(sec)}
    if key not in fields:
        raise ConfigError(f"unknown config key {dotted!r}{did_you_mean(dotted, all_keys())}; "
                          f"keys of {sec_name}: {', '.join(fields)}")
    hints = typing.get_type_hints(type(sec))
    v = _coerce(dotted, value, hints[key])
    _check_range(dotted, v, dict(fields[key].metadata))
    setattr(sec, key, v)


def all_keys() -> list[str]:
    cfg = Config()
    return [f"{s}.{f.name}" for s, sec in _sections(cfg).items() for f in dataclasses.fields(sec)]


def apply_dict(cfg: Config, data: dict, source: str = "config") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data:, model:, train: …)")
    sections = list(_sections(cfg))
    for sec, values in data.items():
        if not isinstance(values, dict):
            if "." in str(sec):
                head, key = str(sec).split(".", 1)
                raise ConfigError(f"{source}: top-level key {sec!r}: nest it under its section, as "
                                  f"'{head}: {{{key}: {values}}}', or give it as --set {sec}={values}")
            raise ConfigError(f"{source}: {sec!r} must be a section holding keys (one of {', '.join(sections)}), "
                              f"not a single value{did_you_mean(str(sec), sections)}")
        for k, v in values.items():
            try:
                set_value(cfg, f"{sec}.{k}", v)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' → ('train.epochs', 3). The value is parsed as YAML (safe_load)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({e.problem})") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← YAML file ← ``key=value`` overrides, all checked."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found; pass an existing YAML file to -c "
                                    "(configs/default.yaml is a template)")
        try:
            data = load_yaml(read_text_utf8(p)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        apply_dict(cfg, data, source=str(p))
    for text in overrides or []:
        set_value(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(data: dict, *, missing: dict[tuple[str, str], object] | None = None) -> Config:
    """A checked Config from a nested dict (a run's config.yaml, a checkpoint's config).

    ``missing``: (section, key) -> the value to use where ``data`` lacks that key (instead of today's
    default; for a config written before the key existed)."""
    for (section, key), value in (missing or {}).items() if isinstance(data, dict) else ():
        sec = data.get(section) or {}
        if isinstance(sec, dict) and key not in sec:
            data = {**data, section: {**sec, key: value}}
    cfg = Config()
    apply_dict(cfg, data)
    validate(cfg)
    return cfg


def read_config(path: str | Path, *, missing: dict[tuple[str, str], object] | None = None) -> Config:
    """The Config in a YAML file written by maskcls (a run's config.yaml); errors name the file.

    ``missing``: (section, key) -> the value to use where the file lacks that key (instead of today's
    default; for a file written before the key existed)."""
    p = Path(path)
    try:
        return config_from_dict(load_yaml(read_text_utf8(p)) or {}, missing=missing)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} not found; is {p.parent} a run directory written by `maskcls train`?") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e}); restore the file that train wrote") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def validate(cfg: Config) -> None:
    """Check every field (type, choice, range) and the cross-field rules; raises ConfigError."""
    for sec_name, sec in _sections(cfg).items():
        hints = typing.get_type_hints(type(sec))
        for f in dataclasses.fields(sec):
            key = f"{sec_name}.{f.name}"
            value = _coerce(key, getattr(sec, f.name), hints[f.name])
            _check_range(key, value, dict(f.metadata))
            setattr(sec, f.name, value)
    if cfg.data.normalize == "custom" and (cfg.data.mean is None or cfg.data.std is None):
        raise ConfigError("data.normalize=custom needs data.mean and data.std (3 numbers each)")
    for k in ("mean", "std"):
        v = getattr(cfg.data, k)
        if v is not None and len(v) != 3:
            raise ConfigError(f"data.{k} needs 3 numbers (R, G, B), got {len(v)}")
    if cfg.data.std is not None and min(cfg.data.std) <= 0:
        raise ConfigError("data.std values must be > 0")
    if cfg.loss.head_weights is not None and (not cfg.loss.head_weights or min(cfg.loss.head_weights) < 0):
        raise ConfigError("loss.head_weights needs one non-negative number per attribute head, or null")
    if cfg.train.time > 0 and cfg.sched.name == "onecycle":
        raise ConfigError("train.time stretches the schedule to the steps that fit the budget, and sched.name=onecycle "
                          "has a fixed length: use sched.name=cosine_warmup (the default) with train.time")
    if cfg.train.time > 0 and cfg.train.average == "last":
        raise ConfigError("train.average=last averages the last train.average_k of train.epochs epochs, and with "
                          "train.time the epochs follow the clock: use train.average=top with train.time")
    seen: dict[Path, str] = {}
    for t in cfg.distill.teachers:  # the same run twice would weigh double in the teachers' average
        if (key := Path(t).resolve()) in seen:
            raise ConfigError(f"distill.teachers: {t} is given twice (as {seen[key]} and {t}); the teachers' average "
                              "is of distinct runs: give each teacher once")
        seen[key] = t
    if cfg.distill.unlabelled and not cfg.distill.teachers:
        raise ConfigError("distill.unlabelled needs teacher runs: use `maskcls distill PREPARED --teacher RUN "
                          "--unlabelled` (or set distill.teachers)")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_table() -> str:
    """Markdown table (key, default, meaning) generated from the dataclasses, for the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for s, sec in _sections(Config()).items():
        for f in dataclasses.fields(sec):
            default = yaml.safe_dump(getattr(sec, f.name), default_flow_style=True).strip()
            default = default.removesuffix("\n...").removesuffix("...").strip()
            rows.append(f"| `{s}.{f.name}` | `{default}` | {f.metadata.get('help', '')} |")
    return "\n".join(rows) + "\n"


def flatten(d: dict, prefix: str = "") -> dict:
    """{'data': {'image_size': 224}} → {'data.image_size': 224}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
