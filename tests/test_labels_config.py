import itertools

import pytest
import yaml

from maskcls import labels as L
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
    assert cfg.train.batch_size == 30 and cfg.train.valid_batch_size == 60 and cfg.train.accum_steps == 1


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


def test_readme_config_table_is_current():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert config_table() in readme, "README's configuration table is stale: paste `maskcls config --table`"
