import itertools

import pytest
import yaml

from maskcls import task as L
from maskcls.config import Config
from maskcls.config_io import config_table, dump_yaml, load_config
from maskcls.errors import ConfigError, DataError

T = L.Task.competition()


def test_encode_decode_roundtrip_all_18():
    seen = set()
    for m, g, a in itertools.product(range(3), range(2), range(3)):
        c = int(T.encode(m, g, a))
        assert T.decode(c) == (m, g, a)
        assert T.parse_name(T.class_names[c]) == c
        seen.add(c)
    assert seen == set(range(18))
    assert T.class_names[4] == "wear/female/30-59"
    assert L.Task.competition(old_age=58).class_names[17] == "not worn/female/>=58"


def test_age_groups_threshold():
    assert list(L.age_group([18, 29, 30, 57, 58, 59, 60])) == [0, 0, 1, 1, 1, 1, 2]
    assert list(L.age_group([57, 58, 60], old_age=58)) == [1, 2, 2]


def test_decode_out_of_range():
    with pytest.raises(DataError):
        T.decode(18)


def test_config_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\nmodel:\n  heads: multi\n")
    cfg = load_config(f, ["train.epochs=3", "optim.lr=1e-3", "data.image_size=128"])
    assert cfg.train.epochs == 3 and cfg.model.heads == "multi"
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.data.image_size == 128
    assert cfg.train.batch_size == "auto" and cfg.train.valid_batch_size == 60 and cfg.train.accum_steps == 1


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "did you mean 'train.epochs'"),
    ("model.heads=triple", "choose one of"),
    ("train.epochs=0", "out of range"),
    ("train.epochs=abc", "whole number"),
    ("optim.name=adamm", "did you mean 'adam'"),
    ("nosection=1", "needs a section"),
])
def test_config_rejects_bad_keys_and_values(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*train.epochs"):
        load_config(f)


def test_default_yaml_is_current():
    """configs/default.yaml is the dump of the dataclass defaults
    (regenerate: maskcls config > configs/default.yaml)."""
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    assert yaml.safe_load((repo / "configs" / "default.yaml").read_text()) == Config().to_dict()
    assert yaml.safe_load(dump_yaml(Config())) == Config().to_dict()


def test_docs_config_table_is_current():
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert config_table() in page, "docs/configuration.md's table is stale: run python scripts/update_docs.py"


# YAML 1.1 (PyYAML's default) reads these words as booleans; config values keep them as written.
YAML11_BOOL_WORDS = ["no", "No", "NO", "off", "Off", "yes", "Yes", "on", "ON"]


def _string_choice_keys() -> list[tuple[str, str]]:
    """(key, choice) for every string-valued key whose choices include a word YAML 1.1 would mangle."""
    import dataclasses
    import typing
    out = []
    sections = typing.get_type_hints(Config)
    for sec in dataclasses.fields(Config):
        hints = typing.get_type_hints(sections[sec.name])
        for f in dataclasses.fields(sections[sec.name]):
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            literal = tp if typing.get_origin(tp) is typing.Literal else next(
                (a for a in args if typing.get_origin(a) is typing.Literal), None)
            for choice in typing.get_args(literal) if literal is not None else ():
                if isinstance(choice, str) and choice in YAML11_BOOL_WORDS:
                    out.append((f"{sec.name}.{f.name}", choice))
    return out


def test_string_choice_keys_include_mixed_precision_no():
    assert ("train.mixed_precision", "no") in _string_choice_keys()


@pytest.mark.parametrize("key,choice", _string_choice_keys())
def test_yaml_boolean_words_reach_string_keys_as_written(key, choice, tmp_path):
    sec, name = key.split(".")
    assert getattr(getattr(load_config(None, [f"{key}={choice}"]), sec), name) == choice  # --set k=no
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"{sec}:\n  {name}: {choice}\n")  # the same, unquoted, in a config file
    assert getattr(getattr(load_config(cfg_file), sec), name) == choice


@pytest.mark.parametrize("word", YAML11_BOOL_WORDS)
def test_free_string_key_keeps_a_boolean_word(word):
    assert load_config(None, [f"run.name={word}"]).run.name == word


@pytest.mark.parametrize("word,value", [("true", True), ("yes", True), ("on", True), ("Yes", True),
                                        ("false", False), ("no", False), ("off", False), ("OFF", False)])
def test_boolean_keys_still_take_yes_no_on_off(word, value, tmp_path):
    assert load_config(None, [f"train.ema={word}"]).train.ema is value
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"train:\n  ema: {word}\n")
    assert load_config(cfg_file).train.ema is value


def test_boolean_key_refuses_other_words():
    with pytest.raises(ConfigError, match="train.ema: expected true or false"):
        load_config(None, ["train.ema=maybe"])


def test_dotted_key_at_the_top_of_a_config_file_says_to_nest_it(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train.epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: top-level key 'train.epochs': nest it under its section, "
                                          r"as 'train: \{epochs: 3\}', or give it as --set train.epochs=3"):
        load_config(cfg_file)
    cfg_file.write_text("train: 3\n")
    with pytest.raises(ConfigError, match=r"'train' must be a section holding keys"):
        load_config(cfg_file)


def test_unlabelled_distillation_without_teachers_is_refused():
    with pytest.raises(ConfigError, match="distill.unlabelled needs teacher runs"):
        load_config(None, ["distill.unlabelled=true"])
    assert load_config(None, ["distill.unlabelled=true", "distill.teachers=[runs/a]"]).distill.unlabelled
