"""Distillation (maskcls distill): the loss, the teachers' probabilities, a student run, and what is refused."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TINY_SETS, tiny
from helpers import train as train_run
from maskcls.cli import main
from maskcls.engine.extensions.distill import DistillLoss
from maskcls.engine.extensions.teachers import ensemble_teacher_probs, teacher_probs
from maskcls.engine.fold_data import fold_rows
from maskcls.engine.trainer.losses import MultiHeadLoss
from maskcls.errors import CheckpointError
from maskcls.prep.prepared import load_prepared
from maskcls.rundir.models import load_folds
from maskcls.task import Task

EXACT = {"mixed_precision": "no"}


def _fit(loss: nn.Module, target, k: int, steps: int = 400) -> torch.Tensor:
    """Free logits (4×k) fitted to ``loss`` by Adam; returns them."""
    z = torch.zeros(4, k, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss(z, target).backward()
        opt.step()
    return z.detach()


def test_soft_loss_pulls_the_student_to_the_teacher_distribution():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(4, 5), 1)
    labels = teacher.argmax(1)
    loss = DistillLoss(nn.CrossEntropyLoss(), nn.CrossEntropyLoss(), alpha=0.0, temperature=1.0)
    before = loss(torch.zeros(4, 5), (labels, teacher)).item()
    z = _fit(loss, (labels, teacher), 5)
    assert loss(z, (labels, teacher)).item() < before
    assert torch.allclose(z.softmax(1), teacher, atol=2e-3)  # soft CE is minimal at the teacher's distribution
    hard_only = DistillLoss(nn.CrossEntropyLoss(), nn.CrossEntropyLoss(), alpha=1.0, temperature=1.0)
    assert hard_only(z, (labels, teacher)).item() == pytest.approx(nn.CrossEntropyLoss()(z, labels).item())
    assert loss(z, labels).item() == pytest.approx(nn.CrossEntropyLoss()(z, labels).item())  # validation: hard


def test_temperature_scales_and_softens():
    teacher_logits = torch.tensor([[3.0, 0.0, -1.0]])
    t = 4.0
    teacher = torch.softmax(teacher_logits / t, 1)
    loss = DistillLoss(nn.CrossEntropyLoss(), nn.CrossEntropyLoss(), alpha=0.0, temperature=t)
    z = _fit(loss, (teacher.argmax(1), teacher.expand(4, 3)), 3, steps=600)
    assert torch.allclose((z / t).softmax(1), teacher.expand(4, 3), atol=2e-3)


def test_multi_head_student_learns_each_heads_marginal_of_the_joint():
    task = Task.competition(names=("gender", "age"))  # 2 × 3 = 6 classes
    torch.manual_seed(1)
    joint = torch.softmax(torch.randn(4, 6) * 2, 1)  # not a product of marginals
    multi = MultiHeadLoss(task, {"gender": nn.CrossEntropyLoss(), "age": nn.CrossEntropyLoss()}, [1.0, 1.0])
    loss = DistillLoss(multi, multi, alpha=0.0, temperature=1.0)
    z = _fit(loss, (joint.argmax(1), joint), 5, steps=600)
    m = task.marginals(joint)
    s = task.head_slices
    assert torch.allclose(z[:, s["gender"]].softmax(1), m["gender"], atol=3e-3)
    assert torch.allclose(z[:, s["age"]].softmax(1), m["age"], atol=3e-3)


@pytest.fixture(scope="module")
def teacher(prepared_dir, tmp_path_factory):
    return Path(train_run(prepared_dir, tmp_path_factory.mktemp("t") / "teacher",
                          tiny(train={"epochs": 2, **EXACT}))["run_dir"])


@pytest.mark.slow
def test_student_trains_from_the_teachers_probabilities(prepared_dir, teacher, tmp_path):
    sets = [*TINY_SETS, "train.epochs=2", "train.mixed_precision='no'", "train.seed=5"]
    args = ["distill", str(prepared_dir), "--teacher", str(teacher), "--folds", "0", "--tta", "hflip"]
    assert main([*args, "--run-dir", str(tmp_path / "student"), *sum((["--set", s] for s in sets), [])]) == 0
    student = tmp_path / "student"
    cfg = (student / "config.yaml").read_text()
    assert str(teacher.resolve()) in cfg and "tta: hflip" in cfg
    assert load_folds(student)[0].model is not None  # an ordinary run: predict/export/serve load it
    assert json.loads((student / "summary.json").read_text())["folds"]["0"]["status"] == "done"
    prep = load_prepared(prepared_dir)
    rows, valid = fold_rows(prep, 0)
    target = ensemble_teacher_probs(tiny(distill={"teachers": [str(teacher)], "tta": "hflip"}), prep, 0, rows, valid)
    alone = teacher_probs(teacher / "fold0" / "best.pt", prep, rows, tta="hflip")
    assert np.allclose(target, alone, atol=1e-6) and np.allclose(target.sum(1), 1, atol=1e-5)
    # the same seed and config on the labels alone trains other weights: the teachers' targets reached the loss
    plain = Path(train_run(prepared_dir, tmp_path / "plain", tiny(train={"epochs": 2, "seed": 5, **EXACT}))["run_dir"])
    a = torch.load(student / "fold0" / "last.pt", weights_only=True)["model"]
    b = torch.load(plain / "fold0" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_teacher_of_another_split_or_with_mixing_is_refused(synth_root, prepared_dir, teacher, tmp_path, capsys):
    from maskcls.prep.prepare import prepare
    other = tmp_path / "other"
    prepare(synth_root, other, folds=3, seed=7)  # the same images, other folds
    sets = sum((["--set", s] for s in TINY_SETS), [])
    assert main(["distill", str(other), "--teacher", str(teacher), "--folds", "0", *sets]) == 2
    assert "another split" in capsys.readouterr().err
    assert main(["distill", str(prepared_dir), "--teacher", str(teacher), "--folds", "0", "--set", "data.mixup=0.2",
                 *sets]) == 2
    assert "MixUp/CutMix" in capsys.readouterr().err
    assert main(["distill", str(prepared_dir), "--teacher", str(teacher), "--folds", "2", *sets]) == 2
    assert "no trained fold 2" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a maskcls run"):
        from maskcls.engine.extensions.teachers import teacher_checkpoint
        teacher_checkpoint(tmp_path, 0, valid_ids=fold_rows(load_prepared(prepared_dir), 0)[1]["image_id"],
                           task=load_prepared(prepared_dir).task)
