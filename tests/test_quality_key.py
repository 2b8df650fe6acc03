"""The quality bench's cache key: a key added later, at its neutral value, keeps earlier results valid."""
from types import SimpleNamespace

from maskcls.bench import quality
from maskcls.config import Config

PREP = SimpleNamespace(meta={"manifest_sha1": "abc"})


def test_neutral_new_key_leaves_the_cache_key_unchanged(monkeypatch):
    cfg = Config()
    with_key = quality._key(cfg, "set", PREP)
    # what the key was before optim.fused existed: the same config without that entry
    plain = Config.to_dict

    def without_fused(self):
        d = plain(self)
        d["optim"].pop("fused")
        return d
    monkeypatch.setattr(Config, "to_dict", without_fused)
    assert quality._key(cfg, "set", PREP) == with_key


def test_every_other_change_moves_the_cache_key():
    base = quality._key(Config(), "set", PREP)
    fused = Config()
    fused.optim.fused = True
    smoothing = Config()
    smoothing.loss.label_smoothing = 0.2
    keys = {base, quality._key(fused, "set", PREP), quality._key(smoothing, "set", PREP),
            quality._key(Config(), "other-set", PREP)}
    assert len(keys) == 4


def test_neutral_values_are_the_defaults():
    """A neutral value must be what runs did before the key existed: the key's default, or, for a key whose default
    differs from that (train.valid_tta), the old value that runs written without the key get back
    (KEYS_OLD_DEFAULTS); anything else would key results as if the key were absent while they train differently."""
    from maskcls.engine.rundir import KEYS_OLD_DEFAULTS
    d = Config().to_dict()
    for (section, key), neutral in quality.NEUTRAL_SINCE_ADDED.items():
        if key in d[section]:
            assert neutral == KEYS_OLD_DEFAULTS.get((section, key), d[section][key]), (section, key)
