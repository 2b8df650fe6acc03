"""Distillation that cannot pass by accident: a student of a teacher whose classes are a known permutation of the
true ones learns the permutation; ``distill.unlabelled`` puts the eval images into training (teachers' targets,
no hard loss) and never into validation.

The data: three classes of noisy solid colours (red, green, blue), which the tiny model learns in seconds, so a
student either follows its targets or visibly does not.
"""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import config, tiny
from helpers import train as train_run
from maskcls.cli import main
from maskcls.config import DataConfig
from maskcls.engine.extensions.distill import DistillLoss, unlabelled_rows
from maskcls.engine.extensions.teachers import teacher_probs
from maskcls.engine.fold_data import fold_rows
from maskcls.engine.trainer.losses import MultiHeadLoss
from maskcls.engine.trainer.optim import build_scheduler
from maskcls.errors import ConfigError
from maskcls.prep.prepare import prepare
from maskcls.prep.prepared import load_prepared
from maskcls.task import Task

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
SRC = [2, 0, 1]  # the permuted teacher's class c is the teacher's class SRC[c]: it says (y + 1) % 3 for label y
EASY = {"data": {"image_size": 32, "num_workers": 0, "jitter_p": 0.0},
        "train": {"epochs": 8, "accum_steps": 1, "mixed_precision": "no"}, "optim": {"lr": 3e-3}}


def _colour_csv(root: Path, per_class: int, eval_per_class: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group,split"]
    for split, per in (("train", per_class), ("eval", eval_per_class)):
        for c in range(3):
            for j in range(per):
                name = f"img/{split}{c}_{j}.png"
                Image.fromarray(np.clip(COLOURS[c] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
                    root / name)
                lines.append(f"{name},{c if split == 'train' else ''},{split}{c}_{j},{split}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """A prepared directory of 120 labelled colour images (2 folds) and 9 unlabelled eval images."""
    root = tmp_path_factory.mktemp("colours")
    prepare(_colour_csv(root / "data", 40, 3), root / "prepared", folds=2, seed=0)
    return root / "prepared"


@pytest.fixture(scope="module")
def permuted(colours, tmp_path_factory) -> Path:
    """A trained teacher run whose fold-0 classifier rows are permuted by SRC: its probabilities are exactly the
    teacher's, with the classes renamed."""
    root = tmp_path_factory.mktemp("teachers")
    teacher = Path(train_run(colours, root / "teacher", tiny(**EASY))["run_dir"])
    out = root / "permuted"
    shutil.copytree(teacher, out)
    ck = torch.load(out / "fold0" / "best.pt", weights_only=True)
    for k in ("backbone.classifier.weight", "backbone.classifier.bias"):
        ck["model"][k] = ck["model"][k][SRC].clone()
    torch.save(ck, out / "fold0" / "best.pt")
    prep = load_prepared(colours)
    rows = fold_rows(prep, 0)[0]
    p, q = (teacher_probs(r / "fold0" / "best.pt", prep, rows) for r in (teacher, out))
    assert np.allclose(q, p[:, SRC], atol=1e-6)
    y = rows["label"].to_numpy()
    assert (p.argmax(1) == y).mean() >= 0.95, "precondition: the teacher knows the colours"
    assert (q.argmax(1) == (y + 1) % 3).mean() >= 0.95
    return out


def _student_agreement(colours: Path, run: Path) -> tuple[float, float]:
    """(share of its training rows the student calls (y + 1) % 3, share it calls y), from its last weights."""
    prep = load_prepared(colours)
    rows = fold_rows(prep, 0)[0]
    pred, y = teacher_probs(run / "fold0" / "last.pt", prep, rows).argmax(1), rows["label"].to_numpy()
    return float((pred == (y + 1) % 3).mean()), float((pred == y).mean())


@pytest.mark.slow
def test_student_learns_the_teachers_permuted_classes_not_the_labels(colours, permuted, tmp_path):
    """alpha=0: the soft targets are all the student learns from; if they were ignored (or misaligned with the
    rows) it could not name the permuted class of every image. The same student on the labels (alpha=1) learns
    the labels, so the data do not decide it."""
    soft_only = tiny(**EASY, distill={"teachers": [str(permuted)], "alpha": 0.0})
    run = Path(train_run(colours, tmp_path / "soft", soft_only)["run_dir"])
    to_teacher, to_labels = _student_agreement(colours, run)
    assert to_teacher >= 0.9 and to_labels <= 0.05, (to_teacher, to_labels)
    online = config(soft_only, distill={"teachers": [str(permuted)], "alpha": 0.0, "online": True})
    run = Path(train_run(colours, tmp_path / "online", online)["run_dir"])
    to_teacher, to_labels = _student_agreement(colours, run)
    assert to_teacher >= 0.9 and to_labels <= 0.05, ("online", to_teacher, to_labels)
    hard_only = config(soft_only, distill={"teachers": [str(permuted)], "alpha": 1.0})
    run = Path(train_run(colours, tmp_path / "hard", hard_only)["run_dir"])
    to_teacher, to_labels = _student_agreement(colours, run)
    assert to_labels >= 0.9 and to_teacher <= 0.05, (to_teacher, to_labels)


def test_hard_loss_ignores_unlabelled_rows():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 1, -1, 2, -1, -1])
    teacher = torch.softmax(torch.randn(6, 3), 1)
    ce = nn.CrossEntropyLoss()
    known = labels >= 0
    loss = DistillLoss(ce, ce, alpha=0.5, temperature=2.0)(logits, (labels, teacher))
    expected = 0.5 * 4.0 * ce(logits / 2.0, teacher) + 0.5 * ce(logits[known], labels[known]) * 3 / 6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    hard_only = DistillLoss(ce, ce, alpha=1.0, temperature=1.0)
    hard_only(logits, (labels, teacher)).backward()
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known].abs().sum(1) > 0)
    logits.grad = None
    none = hard_only(logits, (torch.full((6,), -1), teacher))
    none.backward()
    assert none.item() == 0.0 and torch.all(logits.grad == 0)
    task = Task.competition(names=("gender", "age"))  # a multi-head hard loss would fail on a label of -1
    multi = MultiHeadLoss(task, {"gender": ce, "age": ce}, [1.0, 1.0])
    z, lab = torch.randn(4, 5), torch.tensor([3, -1, 0, 5])
    got = DistillLoss(multi, multi, alpha=1.0, temperature=1.0)(z, (lab, torch.full((4, 6), 1 / 6)))
    assert got.item() == pytest.approx(multi(z[lab >= 0], lab[lab >= 0]).item() * 3 / 4, rel=1e-6)


def _trainer(colours: Path, permuted: Path, scratch: Path, distill: dict | None = None, **sections):
    from maskcls.engine.accel import process_state_restored
    from maskcls.engine.run import scratch_trainer  # the fold's trainer exactly as `maskcls train` builds it
    cfg = tiny(**{**EASY, **sections}, distill={"teachers": [str(permuted)], "alpha": 0.5, "unlabelled": True,
                                                **(distill or {})})
    scratch.mkdir()
    with process_state_restored():  # its accelerator turns on deterministic mode; later tests expect it off
        return scratch_trainer(cfg, load_prepared(colours), 0, scratch), cfg


@pytest.mark.slow
def test_unlabelled_eval_rows_train_on_the_teachers_probabilities_never_validate(colours, permuted, tmp_path):
    prep = load_prepared(colours)
    labelled, valid = fold_rows(prep, 0)
    ev = prep.eval_rows()
    trainer, _ = _trainer(colours, permuted, tmp_path / "s")
    data, n = trainer.data, len(labelled)
    assert list(data.train_rows["image_id"]) == [*labelled["image_id"], *ev["image_id"]]
    assert list(data.valid_rows["image_id"]) == list(valid["image_id"])
    assert len(data.valid_loader.dataset) == len(valid) and (data.valid_rows["split"] == "train").all()
    best = permuted / "fold0" / "best.pt"
    expect = np.concatenate([teacher_probs(best, prep, labelled), teacher_probs(best, prep, ev)])
    seen = []
    for _, y, idx in data.train_loader:
        hard, soft = trainer.setup.soft_targets(y, idx, None)
        assert torch.equal(hard < 0, idx >= n)  # exactly the eval rows are unlabelled to the loss
        assert torch.equal(hard[idx < n], torch.tensor(labelled["label"].to_numpy())[idx[idx < n]])
        assert np.allclose(soft.numpy(), expect[idx.numpy()], atol=1e-6)
        assert torch.equal(y[idx >= n], torch.as_tensor(expect.argmax(1))[idx[idx >= n]])  # loader: the argmax
        seen += idx.tolist()
    assert sorted(seen) == list(range(n + len(ev)))  # every eval image once per epoch, in training only


@pytest.mark.slow
@pytest.mark.parametrize("sched", ["cosine_warmup", "onecycle"])
def test_unlabelled_schedule_spans_the_longer_epoch(colours, permuted, tmp_path, sched):
    """The schedule is built for the extended loader: the lrs it gives equal a fresh one's for that length."""
    trainer, cfg = _trainer(colours, permuted, tmp_path / "s", sched={"name": sched})
    batches = len(trainer.data.train_loader)
    assert batches == -(-(len(fold_rows(load_prepared(colours), 0)[0]) + 9) // cfg.train.batch_size)
    ref_opt = torch.optim.AdamW([{"params": [torch.zeros(1)], "lr": g["lr"]} for g in
                                 trainer.setup.optimizer.param_groups])
    for g, first in zip(ref_opt.param_groups, trainer.setup.optimizer.param_groups):
        g["lr"] = first.get("initial_lr", g["lr"]) if sched != "onecycle" else cfg.optim.lr * (
            first["max_lr"] / cfg.sched.max_lr)
    ref = build_scheduler(ref_opt, cfg.sched, steps_per_epoch=batches, epochs=cfg.train.epochs, base_lr=cfg.optim.lr)
    ours = trainer.setup.scheduler
    with warnings.catch_warnings():  # stepping a scheduler without optimizer steps: fine here
        warnings.simplefilter("ignore")
        for _ in range(batches * cfg.train.epochs):
            assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-9)
            ours.step()
            ref.step()


@pytest.mark.slow
def test_unlabelled_is_refused_without_eval_images_or_with_the_cache(colours, permuted, tmp_path, capsys):
    csv = _colour_csv(tmp_path / "data", 40, 0)
    prepare(csv, tmp_path / "noeval", folds=2, seed=0)
    sets = sum((["--set", s] for s in ["model.name=test_efficientnet", "model.pretrained=none",
                                       "data.image_size=32", "data.num_workers=0", "train.batch_size=8",
                                       "run.report=false"]), [])
    args = ["distill", str(tmp_path / "noeval"), "--teacher", str(permuted), "--folds", "0", "--unlabelled", *sets]
    assert main([*args, "--run-dir", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "noeval") in err and "no evaluation images" in err and "drop --unlabelled" in err
    prep = load_prepared(colours)
    with pytest.raises(ConfigError, match="data.cache=false"):
        unlabelled_rows(prep, DataConfig(cache=True), fold_rows(prep, 0)[0])


@pytest.mark.slow
def test_unlabelled_student_through_the_cli(colours, permuted, tmp_path):
    sets = ["model.name=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.num_workers=0",
            "data.jitter_p=0", "train.batch_size=8", "run.report=false", "train.epochs=1", "train.mixed_precision='no'"]
    run = tmp_path / "student"
    args = ["distill", str(colours), "--teacher", str(permuted), "--folds", "0", "--unlabelled", "--run-dir", str(run)]
    assert main([*args, *sum((["--set", s] for s in sets), [])]) == 0
    assert "unlabelled: true" in (run / "config.yaml").read_text()
    prep = load_prepared(colours)
    labelled, valid = fold_rows(prep, 0)
    facts = json.loads((run / "run.json").read_text())["resolved"]["steps_per_epoch"]["0"]
    assert facts["train_images"] == len(labelled) + len(prep.eval_rows()) and facts["valid_images"] == len(valid)
    oof = (run / "fold0" / "oof.csv").read_text()
    assert not any(i in oof for i in prep.eval_rows()["image_id"])


def _weights(trainer) -> dict[str, torch.Tensor]:
    from maskcls.models.factory import unwrap_model
    return {k: v.detach().cpu() for k, v in unwrap_model(trainer.setup.model).state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["pretrained", "teacher", "average"])
def test_student_starts_from_its_teachers_weights(colours, permuted, tmp_path, how):
    """distill.init: ``teacher`` starts the student from the first teacher's fold-0 weights, ``average`` from the
    element-wise mean of all teachers' (here the permuted teacher and the one it was copied from, which differ in
    their classifier rows only), ``pretrained`` from a fresh model."""
    original = permuted.parent / "teacher"
    teachers = [str(permuted), str(original)]
    trainer, _ = _trainer(colours, permuted, tmp_path / "s", {"teachers": teachers, "init": how, "unlabelled": False})
    got = _weights(trainer)
    a, b = (torch.load(Path(t) / "fold0" / "best.pt", weights_only=True)["model"] for t in teachers)
    head = "backbone.classifier.weight"
    assert not torch.equal(a[head], b[head]), "precondition: the two teachers differ"
    want = {"teacher": a, "average": {k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a}}.get(how)
    if want is None:
        assert not torch.allclose(got[head], a[head]) and not torch.allclose(got[head], b[head])
        return
    assert set(got) == set(want)
    for k in want:
        assert torch.allclose(got[k], want[k].to(got[k].dtype), atol=1e-6, rtol=0), k


@pytest.mark.slow
def test_student_init_refuses_a_teacher_of_other_inputs(permuted):
    from maskcls.data.preprocessing import Preprocessing
    from maskcls.engine.extensions.teachers import student_start
    best = permuted / "fold0" / "best.pt"
    meta = torch.load(best, weights_only=True)["meta"]
    other = Preprocessing(**{**meta["preprocessing"], "image_size": meta["preprocessing"]["image_size"] * 2})
    with pytest.raises(ConfigError, match=r"another preprocessing.*--config TEACHER/config.yaml.*distill.init="):
        student_start([best], "teacher", model_name=meta["model_name"], heads=meta["heads"], pp=other)
    with pytest.raises(ConfigError, match="another model"):
        student_start([best], "average", model_name="resnet18", heads=meta["heads"],
                      pp=Preprocessing(**meta["preprocessing"]))
    assert student_start([best], "pretrained", model_name="resnet18", heads="single", pp=other) is None


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_online_teachers_label_each_batch_as_the_student_sees_it(colours, permuted, tmp_path, tta):
    """distill.online: a batch's soft targets are the teacher's probabilities of that batch's (augmented) images,
    not of the un-augmented photos; with hflip the mean over the images and their mirrors."""
    from maskcls.engine.extensions.teachers import _load_teacher
    trainer, _ = _trainer(colours, permuted, tmp_path / "s", {"online": True, "unlabelled": False, "tta": tta},
                          data={**EASY["data"], "jitter_p": 1.0})
    model, _, _ = _load_teacher(permuted / "fold0" / "best.pt", torch.device("cpu"))
    x, y, idx = next(iter(trainer.data.train_loader))
    hard, soft = trainer.setup.soft_targets(y, idx, x)
    with torch.no_grad():
        want = model(x).softmax(1)
        if tta == "hflip":
            want = (want + model(torch.flip(x, dims=[3])).softmax(1)) / 2
    assert torch.equal(hard, y)
    assert torch.allclose(soft, want, atol=1e-6)
    other = x.clone()
    other[0] = other[0].flip(1)  # another view of the first image: its target moves with it
    moved = trainer.setup.soft_targets(y, idx, other)[1]
    assert torch.allclose(moved[1:], soft[1:], atol=1e-6)


@pytest.mark.slow
def test_online_teachers_need_the_students_preprocessing(permuted):
    from maskcls.data.preprocessing import Preprocessing
    from maskcls.engine.extensions.teachers import OnlineTeachers
    best = permuted / "fold0" / "best.pt"
    meta = torch.load(best, weights_only=True)["meta"]
    other = Preprocessing(**{**meta["preprocessing"], "image_size": meta["preprocessing"]["image_size"] * 2})
    with pytest.raises(ConfigError, match=r"distill.online: .*another preprocessing.*distill.online=false"):
        OnlineTeachers([best], task=Task.from_meta(meta), pp=other, tta="none", temperature=1.0,
                       device=torch.device("cpu"))


@pytest.mark.slow
def test_online_warm_started_student_through_the_cli(colours, permuted, tmp_path):
    """--online and --init reach the run's config; the student trains from the first teacher's weights, and a
    checkpoint records where they came from."""
    sets = ["model.name=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.num_workers=0",
            "train.batch_size=8", "run.report=false", "train.epochs=1", "train.mixed_precision='no'"]
    run = tmp_path / "student"
    args = ["distill", str(colours), "--teacher", str(permuted), "--folds", "0", "--online", "--init", "teacher",
            "--run-dir", str(run)]
    assert main([*args, *sum((["--set", s] for s in sets), [])]) == 0
    text = (run / "config.yaml").read_text()
    assert "online: true" in text and "init: teacher" in text
    meta = torch.load(run / "fold0" / "best.pt", weights_only=True)["meta"]
    assert meta["weights"] == f"teacher {permuted.resolve()}"
