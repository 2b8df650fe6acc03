"""Config values that must be refused: NaN and infinity for every number, and a config file that is not UTF-8."""
from __future__ import annotations

import typing

import pytest

from maskcls.config import Config
from maskcls.config_io import load_config
from maskcls.errors import ConfigError


def _holds_float(tp) -> bool:
    return tp is float or any(_holds_float(a) for a in typing.get_args(tp))


def _float_keys() -> list[str]:
    """Every config key that holds a float (plain, optional, or a list of them)."""
    keys = []
    for section, cls in typing.get_type_hints(Config).items():
        keys += [f"{section}.{name}" for name, tp in typing.get_type_hints(cls).items() if _holds_float(tp)]
    return keys


FLOAT_KEYS = _float_keys()


def test_every_float_key_is_found():
    assert {"optim.lr", "data.hflip", "loss.label_smoothing", "train.time", "data.mean"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("word", ["nan", ".nan", "inf", "-.inf"])
def test_nan_and_infinity_are_refused_naming_the_key(key, word):
    section, name = key.split(".")
    listed = "list[" in str(typing.get_type_hints(type(getattr(Config(), section)))[name])
    value = f"[{word}, 0.5, 0.5]" if listed else word
    with pytest.raises(ConfigError, match=rf"{key}(\[0\])?: .* is not a finite number"):
        load_config(None, [f"{key}={value}"])


def test_hflip_nan_in_a_file_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  hflip: .nan\n")
    with pytest.raises(ConfigError, match=r"data.hflip: nan is not a finite number"):
        load_config(cfg)


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    from maskcls.cli import main
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{cfg}: not UTF-8 text .*save the config file as UTF-8"):
        load_config(cfg)
    assert main(["config", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskcls: error:") and str(cfg) in err[0]
