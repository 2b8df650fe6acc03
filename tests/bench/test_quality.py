"""The quality bench's cache key: a key added later, at its neutral value, keeps earlier results valid."""
import shutil
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
    from maskcls.rundir.files import KEYS_OLD_DEFAULTS
    d = Config().to_dict()
    for (section, key), neutral in quality.NEUTRAL_SINCE_ADDED.items():
        if key in d[section]:
            assert neutral == KEYS_OLD_DEFAULTS.get((section, key), d[section][key]), (section, key)


def _result(fold: int, labels: list[int], preds: list[int], best: float) -> quality.SeedResult:
    return quality.SeedResult("set", 719, [best], [1.0], best, "run", fold, labels, preds)


def test_out_of_fold_f1_pools_the_folds_instead_of_averaging_them():
    from maskcls.metrics import confusion, macro_f1
    a = _result(0, [0, 0, 1, 2], [0, 1, 1, 2], 0.0)
    b = _result(1, [2, 2, 1, 0], [2, 0, 1, 0], 0.0)
    pooled = macro_f1(confusion([0, 0, 1, 2, 2, 2, 1, 0], [0, 1, 1, 2, 2, 0, 1, 0], 3))
    assert quality.oof_f1([a, b], 3) == pooled
    per_fold = [macro_f1(confusion(r.labels, r.preds, 3)) for r in (a, b)]
    assert pooled != sum(per_fold) / 2  # not the mean of the folds' F1s


def test_paired_delta_compares_the_same_fold_and_seed():
    base = quality.Scored({719: [_result(0, [0, 1], [0, 1], 0.70), _result(1, [0, 1], [0, 0], 0.60)]}, 2)
    variant = quality.Scored({719: [_result(0, [0, 1], [0, 1], 0.72), _result(1, [0, 1], [0, 1], 0.66)]}, 2)
    d = quality.paired_delta(variant, base)
    assert d["per_fold"] == [0.72 - 0.70, 0.66 - 0.60]
    assert abs(d["mean"] - 0.04) < 1e-12 and abs(d["sd"] - (0.06 - 0.02) / 2 ** 0.5) < 1e-12
    assert d["oof_per_seed"] == [1.0 - quality.oof_f1(base.by_seed[719], 2)]


def test_the_budgets_are_named_and_an_unknown_one_is_refused():
    import pytest

    from maskcls.errors import ConfigError
    assert (quality.budget_config(budget="standard").train.epochs, quality.budget_config().train.epochs) == (10, 3)
    assert quality.budget_config(budget="standard").data.image_size == 128
    with pytest.raises(ConfigError, match="choose one of quick, standard"):
        quality.get_budget("long")


def test_two_benches_on_one_work_folder_prepare_a_set_once(synth_root, tmp_path, monkeypatch):
    """Two benches (one per core) starting together on an unprepared set: one prepares it, the other waits and
    reads it. Without the lock the second found the first's half-written folder and stopped with FileExistsError."""
    import threading
    import time

    from maskcls.prep import prepare as prepare_module
    data = tmp_path / "devdata"
    shutil.copytree(synth_root, data / "tinyset")
    manifest = data / "tinyset" / "manifest.csv"
    manifest.write_text("placeholder\n")  # prepared_set hashes the manifest; prepare itself is faked below
    calls = []
    real_prepare = prepare_module.prepare

    def slow_prepare(source, out, **kw):
        calls.append(out)
        time.sleep(0.3)  # wide enough that, unlocked, the second thread always lands inside the first's prepare
        return real_prepare(synth_root, out, **kw)
    monkeypatch.setattr(prepare_module, "prepare", slow_prepare)
    errors, results = [], []

    def bench():
        try:
            results.append(quality.prepared_set(data, "tinyset", tmp_path / "work"))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=bench) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1 and len(results) == 2
    assert len(results[0].train_rows()) == len(results[1].train_rows()) > 0


def test_a_key_that_does_nothing_on_a_cpu_stays_out_of_the_cache_key():
    """train.lr_scaling only scales a batch auto grew on a GPU: on the bench's CPU every value trains the same, so
    changing its default keeps every cached result."""
    base = quality._key(Config(), "set", PREP)
    for rule in ("sqrt", "linear", "none"):
        cfg = Config()
        cfg.train.lr_scaling = rule
        assert quality._key(cfg, "set", PREP) == base


def test_a_base_replaces_the_defaults_on_the_compared_side(monkeypatch, tmp_path):
    """With a base (train.epochs=20) the variant (train.epochs=30) is compared with it, fold by fold, and the
    defaults are not trained at all."""
    import pytest

    from maskcls.errors import ConfigError
    trained = []
    best = {10: 0.70, 20: 0.74, 30: 0.73}

    def fake_train_one(cfg, name, prep, work, fresh, fold):
        trained.append(cfg.train.epochs)
        preds = [0, 1] if cfg.train.epochs == 20 else [0, 0]
        return quality.SeedResult(name, cfg.train.seed, [best[cfg.train.epochs]], [1.0], best[cfg.train.epochs],
                                  "run", fold, [0, 1], preds)
    monkeypatch.setattr(quality, "train_one", fake_train_one)
    monkeypatch.setattr(quality, "prepared_set", lambda data, name, work: SimpleNamespace(
        train_rows=lambda: [0] * 4, task=SimpleNamespace(num_classes=2)))
    at = lambda epochs: quality.budget_config(budget=quality.Budget("standard", 128, epochs))  # noqa: E731
    r = quality.bench_quality(sets=("set",), work=tmp_path, budget="standard", folds=2, variant=at(30),
                              variant_label="train.epochs=30", base=at(20), base_label="train.epochs=20")
    assert sorted(trained) == [20, 20, 30, 30]  # no 10-epoch (defaults) training
    assert r["deltas"]["set"]["per_fold"] == pytest.approx([-0.01, -0.01])
    assert "delta (train.epochs=30 - train.epochs=20)" in r["text"]
    assert r["text"].splitlines()[-2:] == [
        "quality of the variant, out-of-fold macro F1: set 0.3333 (variant: train.epochs=30)",
        "quality of the base, out-of-fold macro F1: set 1.0000 (base: train.epochs=20)"]
    with pytest.raises(ConfigError, match="the same overrides"):
        quality.bench_quality(sets=("set",), work=tmp_path, variant=at(30), variant_label="x", base=at(20),
                              base_label="x")
