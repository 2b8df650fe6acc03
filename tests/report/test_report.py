"""The run report: self-contained HTML, honest numbers, robust to unfinished runs."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from maskcls.errors import CheckpointError
from maskcls.metrics import class_table as _class_table
from maskcls.metrics import confusion as confusion_counts
from maskcls.report.page import write_report
from maskcls.report.run_data import load_run
from maskcls.task import Task


def class_names() -> list[str]:
    return list(Task.competition().class_names)


def class_table(labels, preds, names):
    return _class_table(confusion_counts(labels, preds, len(names)), names)

METRIC_COLS = ["epoch", "train_loss", "train_acc", "train_f1", "valid_loss", "valid_acc", "valid_f1",
               "valid_f1_mask", "valid_f1_gender", "valid_f1_age", "lr", "seconds", "images_per_s"]


def _metrics(rng: np.random.Generator, epochs: int, heads: bool) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    rows = {"epoch": e, "train_loss": 2 / e + rng.random(epochs) * 0.1, "train_acc": 1 - 0.5 / e,
            "train_f1": 1 - 0.6 / e, "valid_loss": 2.2 / e + rng.random(epochs) * 0.1,
            "valid_acc": 1 - 0.55 / e, "valid_f1": 1 - 0.7 / e - rng.random(epochs) * 0.05,
            "lr": 1e-3 / e, "seconds": np.full(epochs, 30.0), "images_per_s": np.full(epochs, 400.0)}
    for h in ("mask", "gender", "age"):
        rows[f"valid_f1_{h}"] = rows["valid_f1"] if heads else np.nan
    return pd.DataFrame(rows)[METRIC_COLS]


def _oof(rng: np.random.Generator, fold_dir: Path, k: int, n: int, missing: bool) -> pd.DataFrame:
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    probs = rng.random((n, k))
    probs[np.arange(n), preds] += 2.0
    probs /= probs.sum(1, keepdims=True)
    paths = []
    for i in range(n):
        ext = ".png" if i % 2 else ".jpg"
        p = fold_dir / "img" / f"{i}{ext}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    if missing:  # the most confidently wrong row points to an image that does not exist
        preds[0], probs[0] = (labels[0] + 1) % k, np.full(k, 0.001 / (k - 1))
        probs[0, preds[0]] = 0.999
        paths[0] = str(fold_dir / "img" / "gone.jpg")
    df = pd.DataFrame({"path": paths, "label": labels, "pred": preds})
    return pd.concat([df, pd.DataFrame(probs, columns=[f"prob_{j}" for j in range(k)])], axis=1)


def make_run(root: Path, *, names: list[str], task: str, folds: int = 2, summary: bool = True,
             oof_folds: tuple[int, ...] = (0, 1), epochs: tuple[int, ...] = (3, 3)) -> Path:
    rng = np.random.default_rng(719)
    run = root / "run1"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: tf_efficientnet_lite0\ndata:\n  image_size: 224\n"
                                     "train:\n  epochs: 3\n  lr: 0.001\n")
    for f in range(folds):
        d = run / f"fold{f}"
        d.mkdir()
        _metrics(rng, epochs[f], task != "generic").to_csv(d / "metrics.csv", index=False)
        steps = 10 * epochs[f]
        pd.DataFrame({"step": np.arange(steps), "lr": 1e-3 * (1 + np.cos(np.arange(steps) / 7)) / 2}
                     ).to_csv(d / "lr.csv", index=False)
        if f in oof_folds:
            _oof(rng, d, len(names), 40, missing=f == 0).to_csv(d / "oof.csv", index=False)
    if summary:
        (run / "summary.json").write_text(json.dumps({
            "run": "run1", "task": task, "num_classes": len(names), "class_names": names,
            "heads": "single", "folds": {str(f): {"best_f1": 0.8, "best_acc": 0.9, "best_epoch": 3,
                                                  "status": "done"} for f in range(folds)},
            "mean_f1": 0.8, "oof_f1": 0.79, "head_f1": None, "finished": True}))
    return run


def _all_oof(run: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in sorted(run.glob("fold*/oof.csv"))], ignore_index=True)


def _data_uris(page: str, kind: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(rf'data:image/{kind};base64,([A-Za-z0-9+/=]+)', page)]


def test_full_report_is_self_contained_and_figures_are_real_pngs(tmp_path):
    run = make_run(tmp_path, names=class_names(), task="mask_gender_age")
    out = write_report(run, gallery_size=6)
    assert out == run / "report.html" and out.is_file()
    page = out.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    pngs = _data_uris(page, "png")
    assert len(pngs) >= 4  # curves, lr, confusion matrix, per-head matrices
    for raw in pngs:
        with Image.open(io.BytesIO(raw)) as im:
            assert im.format == "PNG" and min(im.size) >= 150
    thumbs = _data_uris(page, "jpeg")
    assert len(thumbs) == 5 and page.count("image missing") == 1  # 6 cards, one missing path
    for raw in thumbs:
        with Image.open(io.BytesIO(raw)) as im:
            assert max(im.size) <= 128 and min(im.size) > 10
    assert "Run incomplete" not in page and "wear/female/30-59" in page and "<details>" in page


def test_macro_f1_in_page_and_table_equals_sklearn(tmp_path):
    run = make_run(tmp_path, names=class_names(), task="mask_gender_age")
    page = write_report(run).read_text()
    oof, k = _all_oof(run), 18
    want = f1_score(oof["label"], oof["pred"], average="macro", labels=range(k), zero_division=0)
    table = class_table(oof["label"], oof["pred"], class_names())
    assert table.loc["macro", "f1"] == pytest.approx(want, abs=1e-12)
    assert table.loc["macro", "support"] == len(oof) == table["support"].iloc[:-1].sum()
    page_f1 = float(re.search(r"<tr class='macro' data-f1='([0-9.]+)'>", page).group(1))
    assert page_f1 == pytest.approx(want, abs=1e-6)


def test_confusion_counts_cover_every_oof_row(tmp_path):
    run = make_run(tmp_path, names=class_names(), task="mask_gender_age")
    oof = _all_oof(run)
    cm = confusion_counts(oof["label"], oof["pred"], 18)
    assert cm.shape == (18, 18) and cm.sum() == len(oof)
    assert np.trace(cm) == (oof["label"] == oof["pred"]).sum()
    heads = Task.competition().attribute_confusions(cm)
    assert [c.shape for c in heads.values()] == [(3, 3), (2, 2), (3, 3)]
    assert all(c.sum() == len(oof) for c in heads.values())
    # a person predicted with the right mask state counts on the mask diagonal
    assert np.trace(heads["mask"]) == (oof["label"] // 6 == oof["pred"] // 6).sum()


def test_run_in_progress_is_reported_as_incomplete(tmp_path):
    run = make_run(tmp_path, names=class_names(), task="mask_gender_age", folds=3, summary=False,
                   oof_folds=(0,), epochs=(3, 2, 0))
    with open(run / "fold1" / "metrics.csv", "a") as f:
        f.write("3,0.51,0.8")  # a line the trainer is still writing
    page = write_report(run).read_text()
    assert "Run incomplete" in page
    assert "fold 1: no oof.csv yet" in page and "fold 2: no epoch finished yet" in page
    assert "summary.json not written yet" in page
    assert load_run(run).task.kind == "mask_gender_age"  # inferred from 18 prob columns


def test_run_with_only_metrics_and_no_oof_still_renders(tmp_path):
    run = make_run(tmp_path, names=["a", "b", "c", "d"], task="generic", summary=False, oof_folds=())
    page = write_report(run, out=tmp_path / "r.html").read_text()
    assert "No oof.csv written yet" in page and "Run incomplete" in page
    assert len(_data_uris(page, "png")) == 2


def test_empty_run_directory_raises_checkpoint_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty.*train first"):
        write_report(empty)
    assert not (empty / "report.html").exists()


def test_generic_task_has_no_head_matrices(tmp_path):
    names = ["a", "b", "c", "d"]
    run = make_run(tmp_path, names=names, task="generic")
    page = write_report(run).read_text()
    assert "Per-head" not in page and "mask F1" not in page
    assert all(f"<td>{n}" in page for n in names)
    oof = _all_oof(run)
    want = f1_score(oof["label"], oof["pred"], average="macro", labels=range(4), zero_division=0)
    assert class_table(oof["label"], oof["pred"], names).loc["macro", "f1"] == pytest.approx(want)


def test_files_caught_mid_write_do_not_break_the_report(tmp_path):
    run = make_run(tmp_path, names=class_names(), task="mask_gender_age")
    (run / "summary.json").unlink()  # a training still running: its summary is written at the end
    with open(run / "fold1" / "oof.csv", "a") as f:
        f.write("/x/half.jpg,7")  # half a row
    page = write_report(run, gallery_size=0).read_text()
    assert "Run incomplete" in page and "Most confidently wrong" not in page
    oof = _all_oof(run).dropna(subset=["pred"])
    want = f1_score(oof["label"], oof["pred"].astype(int), average="macro", labels=range(18), zero_division=0)
    assert float(re.search(r"<tr class='macro' data-f1='([0-9.]+)'>", page).group(1)) == pytest.approx(want, abs=1e-6)


def test_a_damaged_summary_is_one_error_naming_it(tmp_path):
    """summary.json is written atomically when a training ends, so a truncated one is damage, not a file caught
    mid-write: the one strict reader names it, as predict and serve do."""
    from maskcls.errors import MaskclsError
    run = make_run(tmp_path, names=class_names(), task="mask_gender_age")
    (run / "summary.json").write_text('{"run": "run1", "task": "mask_')  # truncated
    with pytest.raises(MaskclsError, match=rf"{re.escape(str(run / 'summary.json'))} is not valid JSON"):
        write_report(run, gallery_size=0)
