"""Training-recipe options: MixUp/CutMix (soft targets, per head), EMA, the training age threshold."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import tiny, train
from maskcls.config import Config
from maskcls.engine.fold_data import fold_data, resolve_preprocessing, training_labels
from maskcls.engine.run import resume_training
from maskcls.engine.trainer.losses import build_loss
from maskcls.engine.trainer.mixing import make_mixer, mix_batch
from maskcls.errors import ConfigError
from maskcls.prep.prepared import load_prepared
from maskcls.task import Task

COMP = Task.competition()


def test_mixed_soft_targets_marginalise_to_per_head_mixes():
    cfg = tiny(data={"mixup": 1.0, "cutmix": 1.0}).data
    mixer = make_mixer(cfg, num_classes=18)
    np.random.seed(0)
    y = torch.tensor([0, 17, 4, 9])
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    xm, soft = mix_batch(mixer, x, y)
    assert xm.dtype == torch.float32 and soft.shape == (4, 18)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    lam = soft[0, 0].item()  # row 0 mixes class 0 with the batch's last row (class 9)
    assert 0 < lam < 1 and soft[0, 9].item() == pytest.approx(1 - lam)
    heads = COMP.marginals(soft)
    a, b = COMP.decode(0), COMP.decode(9)
    for (name, m), ia, ib in zip(heads.items(), a, b):
        want = torch.zeros(m.shape[1])
        want[ia] += lam
        want[ib] += 1 - lam
        assert torch.allclose(m[0], want, atol=1e-6), name
    odd = mix_batch(mixer, x[:3], y[:3])  # timm needs an even batch: an odd one is left as it is
    assert torch.equal(odd[0], x[:3]) and torch.equal(odd[1], y[:3])
    assert make_mixer(Config().data, num_classes=18) is None


@pytest.mark.parametrize("heads,name", [("multi", "weighted_ce"), ("single", "weighted_ce"), ("multi", "focal"),
                                        ("single", "soft_f1")])
def test_losses_take_soft_targets_and_agree_with_hard_ones(heads, name):
    counts = np.arange(1, 19) * 3
    crit = build_loss(tiny(loss={"name": name, "label_smoothing": 0.1}).loss, task=COMP, heads=heads,
                      class_counts=counts)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, COMP.outputs(heads), generator=g, requires_grad=True)
    y = torch.tensor([0, 5, 7, 12, 17, 3])
    soft = torch.nn.functional.one_hot(y, 18).float()
    hard_loss, soft_loss = crit(logits, y), crit(logits, soft)
    soft_loss.backward()
    assert torch.isfinite(soft_loss) and logits.grad.abs().sum() > 0
    if name != "weighted_ce":  # weighted CE normalises hard targets by their weight sum, soft ones by N
        assert soft_loss.item() == pytest.approx(hard_loss.item(), rel=1e-5)


def test_training_age_threshold_moves_training_labels_only(prepared_dir):
    prep = load_prepared(prepared_dir)
    rows = prep.train_rows()
    years, labels = rows["age_years"].to_numpy(), rows["label"].to_numpy()
    in_training = rows["fold"].to_numpy() != 0
    t = int(years[in_training & (years < 60)].max())  # the oldest middle-group age among fold 0's training rows
    moved = training_labels(rows, prep.task, t)
    near = (years >= t) & (years < 60)
    assert (moved[near] // 6 == labels[near] // 6).all() and (moved[near] % 3 == 2).all()  # same mask, now oldest
    assert ((moved[near] // 3) % 2 == (labels[near] // 3) % 2).all()  # same gender
    assert (moved[~near] == labels[~near]).all()
    cfg = tiny(train={"old_age": t})
    pp = resolve_preprocessing(cfg.data, prep, 64, [0.5] * 3, [0.5] * 3)
    fd = fold_data(prep, 0, cfg.data, pp, batch_size=8, valid_batch_size=16, seed=0, old_age=t)
    assert (fd.valid_rows["label"].to_numpy() == prep.manifest.loc[fd.valid_rows.index, "label"]).all()
    assert (fd.train_labels != fd.train_rows["label"].to_numpy()).any()
    assert (fd.valid_loader.dataset.labels == fd.valid_rows["label"].to_numpy()).all()
    with pytest.raises(ConfigError, match="old_age"):
        training_labels(rows, Task.flat(["a", "b"]), 58)


@pytest.mark.slow
def test_recipe_options_train_and_validate_on_the_scoring_labels(prepared_dir, tmp_path):
    s = train(prepared_dir, tmp_path / "r", tiny(train={"epochs": 2, "old_age": 45, "ema": True},
                                                 data={"mixup": 0.4, "cutmix": 1.0}))
    oof = pd.read_csv(Path(s["run_dir"]) / "fold0" / "oof.csv")
    man = pd.read_csv(prepared_dir / "manifest.csv")
    assert list(oof["label"]) == list(man.loc[man["fold"] == 0, "label"])  # validation keeps the scoring threshold
    fold = Path(s["run_dir"]) / "fold0"
    best = torch.load(fold / "best.pt", weights_only=True)
    at_best = fold / ("last.pt" if s["folds"]["0"]["best_epoch"] == 2 else "last.prev.pt")
    ck = torch.load(at_best, weights_only=True)  # the state saved at the end of the best epoch
    assert "ema" in ck and ck["ema"].keys() == ck["model"].keys() == best["model"].keys()
    assert all(torch.equal(best["model"][k], ck["ema"][k]) for k in ck["ema"])  # best.pt keeps what was validated
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["ema"] if ck["ema"][k].is_floating_point())


@pytest.mark.slow
@pytest.mark.precision
def test_resume_with_ema_and_mixup_equals_uninterrupted(prepared_dir, tmp_path):
    cfg = tiny(train={"epochs": 3, "ema": True}, data={"mixup": 0.4, "cutmix": 1.0})
    s = train(prepared_dir, tmp_path / "full", cfg)
    run = Path(s["run_dir"])
    full = pd.read_csv(run / "fold0" / "metrics.csv")
    shutil.copy(run / "fold0" / "last.prev.pt", run / "fold0" / "last.pt")  # as if killed during epoch 3
    resume_training(run)
    resumed = pd.read_csv(run / "fold0" / "metrics.csv")
    cols = [c for c in full.columns if c not in ("seconds", "images_per_s")]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])


def test_offsets_raise_macro_f1_where_argmax_misses_a_rare_class():
    from maskcls.engine.decision import apply_offsets, cross_fitted, fit_offsets
    from maskcls.metrics import confusion, macro_f1
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300, int), np.ones(30, int), np.full(300, 2)]
    probs = np.full((len(labels), 3), 0.1)
    probs[np.arange(len(labels)), labels] = 0.6
    rare = labels == 1
    probs[rare] = [0.45, 0.4, 0.15]  # the rare class is always second: argmax never predicts it
    probs += rng.uniform(0, 0.05, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    b = fit_offsets(probs, labels, 3)
    before = macro_f1(confusion(labels, probs.argmax(1), 3))
    after = macro_f1(confusion(labels, apply_offsets(probs, b), 3))
    assert after > before + 0.2 and b[1] > b[0]
    oof = pd.DataFrame(probs, columns=[f"prob_{i}" for i in range(3)]).assign(
        label=labels, fold=0, group=[f"p{i // 3}" for i in range(len(labels))])
    cf = cross_fitted(oof, 3)
    assert cf["parts"] == 5 and cf["gain"] > 0.1 and cf["f1_argmax"] == pytest.approx(before)
    # on rows where argmax is already right, the held-out parts gain nothing
    clean = oof.copy()
    clean.loc[rare, [f"prob_{i}" for i in range(3)]] = [0.1, 0.8, 0.1]
    assert cross_fitted(clean, 3)["gain"] <= 1e-9


@pytest.mark.slow
def test_pseudo_labels_join_training_never_validation(prepared_dir, tmp_path, capsys):
    from maskcls.cli import main
    from maskcls.engine.fold_data import fold_rows
    s = train(prepared_dir, tmp_path / "r", tiny(train={"epochs": 1}))
    run = Path(s["run_dir"])
    assert (run / "decision.json").is_file() and s["decision"]["parts"] == 5
    before = {p.name: p.stat().st_mtime_ns for p in prepared_dir.iterdir()}
    assert main(["pseudo", str(run), "--min-prob", "0.0", "--out", str(tmp_path / "pp")]) == 0
    assert "train in every fold" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in prepared_dir.iterdir()} == before  # the source is only read
    base, pp = load_prepared(prepared_dir), load_prepared(tmp_path / "pp")
    n_eval = len(base.eval_rows())
    assert len(pp.pseudo_rows()) == n_eval == pp.meta["pseudo"]["added"] and len(pp.eval_rows()) == n_eval
    assert pp.pseudo_rows()["label"].between(0, 17).all()
    for fold in range(pp.num_folds):
        tr, va = fold_rows(pp, fold)
        assert (va["split"] == "train").all() and len(va) == len(fold_rows(base, fold)[1])
        assert (tr["split"] == "pseudo").sum() == n_eval
    with pytest.raises(Exception, match="min-prob"):
        from maskcls.infer.pseudo import make_pseudo
        make_pseudo(run, tmp_path / "bad", min_prob=1.5)


@pytest.mark.slow
def test_ensemble_of_runs_averages_their_probabilities_in_info_order(prepared_dir, synth_root, tmp_path, capsys):
    from maskcls.cli import main
    from maskcls.infer.ensemble import predict_runs
    from maskcls.infer.predict import predict_submission
    runs = [Path(train(prepared_dir, tmp_path / f"r{i}", tiny(train={"epochs": 1, "seed": i}), folds=(0, 1))["run_dir"])
            for i in range(2)]
    singles = [pd.read_csv(predict_submission(r, out=str(tmp_path / f"s{i}.csv"), tta="hflip",
                                              tune_bias="off")["probabilities"]) for i, r in enumerate(runs)]
    r = predict_runs(runs, out=str(tmp_path / "ens.csv"), tta="hflip", tune_bias="off")
    ens = pd.read_csv(tmp_path / "ens.probs.csv")
    info = pd.read_csv(synth_root / "eval" / "info.csv", dtype={"ImageID": str})
    assert list(ens["ImageID"].astype(str)) == list(info["ImageID"])
    cols = [f"prob_{i}" for i in range(18)]
    mean = (singles[0][cols].to_numpy() + singles[1][cols].to_numpy()) / 2
    np.testing.assert_allclose(ens[cols].to_numpy(), mean, atol=2e-6)
    sub = pd.read_csv(tmp_path / "ens.csv", dtype={"ImageID": str})
    assert (sub["ans"].to_numpy() == mean.argmax(1)).all() and r["weights"] == [0.5, 0.5]
    assert r["oof_rows"] == (pd.read_csv(prepared_dir / "manifest.csv")["fold"].isin([0, 1])).sum()
    assert main(["predict", str(runs[0]), str(runs[1]), "--ensemble-weights", "oof",
                 "--out", str(tmp_path / "ens2.csv")]) == 0
    assert "ensemble" in capsys.readouterr().out
    assert main(["predict", str(runs[0]), str(runs[1]), str(synth_root / "eval" / "images")]) == 2
