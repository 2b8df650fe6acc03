"""Every command says what it did and what is next (issue 38): prepare --fixes, the raw folder given to train, the
end-of-run lines naming their view and precision, predict's decision offsets, and empty results (0 pseudo-labels,
0 audit findings) as warnings with their reason. None of these tests trains a model."""
from __future__ import annotations

import shlex
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from maskcls.cli import main
from maskcls.cli.predict_cmds import decision_line
from maskcls.cli.train_cmds import format_summary, next_steps


# ----------------------------------------------------------------------------------------- prepare --fixes
def _fixes(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / f"fixes{len(list(tmp_path.glob('fixes*.csv')))}.csv"
    p.write_text("folder,field,value\n" + "".join(r + "\n" for r in rows))
    return p


def _persons(root: Path) -> list[str]:
    import pandas as pd
    return sorted(pd.read_csv(root / "train" / "train.csv", dtype=str)["path"])


def test_prepare_says_which_fixes_it_applied(synth_root, tmp_path, capsys):
    """How many of each kind, which person folders, how many photos; a fix that changes nothing is a warning."""
    a, b, c = _persons(synth_root)[:3]
    gender_a = "female" if "_male_" in a else "male"
    same_c = "female" if "_female_" in c else "male"
    fixes = _fixes(tmp_path, [f"{a},gender,{gender_a}", f"{b},swap_incorrect_normal,", f"{b},age,61",
                              f"{c},gender,{same_c}"])
    assert main(["prepare", str(synth_root), "--out", str(tmp_path / "p"), "--fixes", str(fixes), "--folds", "3",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    (line,) = [x for x in out if x.startswith("label fixes from ")]
    # a: 7 photos change gender; b: 2 photos swap, and its age changes on 7 (the same photos count once per fix)
    assert line == (f"label fixes from {fixes}: 3 applied to 16 photos: gender 1 ({a}); "
                    f"swap_incorrect_normal 1 ({b}); age 1 ({b})"), line
    (warn,) = [x for x in out if "changed nothing" in x]
    assert warn == (f"warning: 1 of the 4 fix(es) in {fixes} changed nothing, the person already has that value: "
                    f"{c} gender={same_c}")
    assert out[-1] == f"next: maskcls train {tmp_path / 'p'}"


@pytest.mark.parametrize("case", ["empty", "no-op"])
def test_prepare_warns_when_no_fix_applied(case, synth_root, tmp_path, capsys):
    a = _persons(synth_root)[0]
    rows = [] if case == "empty" else [f"{a},gender,{'female' if '_female_' in a else 'male'}"]
    fixes = _fixes(tmp_path, rows)
    assert main(["prepare", str(synth_root), "--out", str(tmp_path / "p"), "--fixes", str(fixes), "--folds", "3",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "label fixes from" not in out
    if case == "empty":
        assert (f"warning: --fixes {fixes} holds no fixes (no rows under its folder,field,value header): no label "
                "was changed") in out
    else:
        assert f"warning: none of the 1 fix(es) in {fixes} changed a label: each person already has the value" in out
        assert a in out and "maskcls audit writes RUN/audit/fixes.csv" in out


# ----------------------------------------------------------------------------------------- a raw folder to train
@pytest.mark.parametrize("command", ["train", "lr-find", "tune", "stats", "faces", "distill"])
def test_a_raw_folder_where_a_prepared_one_belongs(command, synth_root, tmp_path, capsys):
    """The suggestion prepares into a new folder beside the dataset (never into it), and works as given."""
    data = tmp_path / "mask-data"
    shutil.copytree(synth_root, data)
    extra = {"distill": ["--teacher", str(tmp_path)],
             "tune": ["--space", "space.yaml", "--trials", "1", "--study-dir", str(tmp_path / "t")]}.get(command, [])
    assert main([command, str(data), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"maskcls: error: {data} is a competition folder (train/, eval/), not a prepared "
                          "directory; prepare it into a new folder first: ")
    suggested = err.split("maskcls prepare ", 1)[1].split(", then")[0]
    words = shlex.split(suggested)
    out = Path(words[words.index("--out") + 1])
    assert out == tmp_path / "mask-data-prepared" and not out.exists()
    assert f", then maskcls {command} {out}" in err and len(err.splitlines()) == 1
    assert main(["prepare", *words, "--folds", "3", "--workers", "1"]) == 0  # the suggestion works
    assert (out / "prepare.json").is_file() and sorted(p.name for p in data.iterdir()) == ["eval", "train"]


def test_a_csv_where_a_prepared_directory_belongs(tmp_path, capsys):
    (tmp_path / "faces.csv").write_text("path,label\na.jpg,0\n")
    (tmp_path / "faces-prepared").mkdir()  # taken: the next free name
    assert main(["train", str(tmp_path / "faces.csv")]) == 2
    err = capsys.readouterr().err
    assert "is a CSV manifest, not a prepared directory" in err
    assert f"--out {tmp_path / 'faces-prepared-2'}, then maskcls train {tmp_path / 'faces-prepared-2'}" in err


def test_a_run_directory_where_a_prepared_one_belongs(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    assert main(["train", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == (f"maskcls: error: {tmp_path / 'run'} is not a prepared directory (no prepare.json); maskcls train "
                   "reads the folder that `maskcls prepare SOURCE --out NEW_FOLDER` writes\n")


# ----------------------------------------------------------------------------------------- train's end-of-run lines
SUMMARY = {"run_dir": "runs/r-1", "folds": {
    "0": {"best_f1": 0.9750, "best_acc": 0.98, "best_epoch": 7, "status": "done",
          "average": {"kind": "top", "epochs": [6, 7], "f1": 0.9760, "used": True}},
    "1": {"best_f1": 0.9650, "best_acc": 0.97, "best_epoch": 6, "status": "done"}},
    "oof_f1": 0.9701, "head_f1": {"mask": 1.0, "gender": 0.99, "age": 0.95}, "mean_f1": 0.97,
    "decision": {"parts": 2, "f1_argmax": 0.9701, "f1_tuned_cross_fitted": 0.9712, "apply_by_default": True}}


def test_every_score_of_the_summary_names_its_view_and_precision():
    lines = format_summary(SUMMARY, "flip TTA, fp32").splitlines()
    assert lines == [
        "run: runs/r-1",
        "fold 0: validation macro F1, flip TTA, fp32: 0.9750 (best epoch 7, accuracy 0.9800, done)",
        "fold 0: top 2 epochs averaged (epochs 6,7), validation macro F1, flip TTA, fp32: 0.9760 (the fold model now)",
        "fold 1: validation macro F1, flip TTA, fp32: 0.9650 (best epoch 6, accuracy 0.9700, done)",
        "out-of-fold macro F1, flip TTA, fp32: 0.9701 (folds 0, 1 pooled)",
        "per-head F1: mask 1.0000, gender 0.9900, age 0.9500",
        "decision tuning (per-class offsets, cross-fitted over 2 parts), out-of-fold macro F1, flip TTA, fp32: "
        "0.9701 -> 0.9712 (applied by predict --tune-bias auto)",
        "mean validation macro F1 of 2 folds, flip TTA, fp32: 0.9700"]


def test_one_fold_has_no_mean_line_and_next_steps_follow():
    one = {**SUMMARY, "folds": {"0": SUMMARY["folds"]["1"]}, "oof_f1": None, "decision": None, "head_f1": None}
    assert format_summary(one, "one view, bf16").splitlines()[1:] == [
        "fold 0: validation macro F1, one view, bf16: 0.9650 (best epoch 6, accuracy 0.9700, done)"]
    assert next_steps("runs/r-1", [0], 5, report=True).splitlines() == [
        "report: runs/r-1/report.html", "next: maskcls predict runs/r-1  (a submission: runs/r-1/submission.csv)"]
    assert "maskcls audit runs/r-1" in next_steps("runs/r-1", [0, 1], 2, report=False)
    assert "maskcls report runs/r-1 writes it" in next_steps("runs/r-1", [0, 1], 2, report=False)


# ----------------------------------------------------------------------------------------- predict --tune-bias
def _record(reason: str, **kw) -> dict:
    return {"mode": "auto", "applied": reason in ("gain", "on"), "file": "runs/r-1/decision.json",
            "f1_argmax": 0.9701, "f1_tuned": 0.9712, "parts": 5, "other_view": False, "fitted_view": "hflip",
            "reason": reason, **kw}


def test_predict_says_whether_decision_offsets_were_applied_and_why():
    assert decision_line(_record("gain")) == ("decision offsets: applied from runs/r-1/decision.json "
                                              "(cross-fitted out-of-fold macro F1 0.9701 -> 0.9712)")
    assert decision_line(_record("on")) == "decision offsets: applied from runs/r-1/decision.json (--tune-bias on)"
    assert decision_line(_record("no gain", f1_tuned=0.9690)) == (
        "decision offsets: not applied: they did not raise the cross-fitted out-of-fold macro F1 0.9701 -> 0.9690 in "
        "runs/r-1/decision.json; plain argmax (--tune-bias on applies them anyway)")
    assert decision_line(_record("missing", file=None)).startswith(
        "decision offsets: not applied: the run has no decision.json")
    assert decision_line(_record("off")) == "decision offsets: not applied (--tune-bias off): plain argmax"
    assert decision_line(_record("gain", other_view=True)).endswith(
        "; note: fitted on flip TTA probabilities, and this prediction used another view (--tta)")


def test_decision_record_reads_the_runs_file(tmp_path):
    from maskcls.infer.predict import decision_record
    (tmp_path / "decision.json").write_text('{"offsets": [0, 0], "f1_argmax": 0.5, "f1_tuned_cross_fitted": 0.49, '
                                            '"parts": 5, "apply_by_default": false}')
    r = decision_record(tmp_path, "auto", applied=False, tta="hflip", valid_tta="hflip")
    assert r["reason"] == "no gain" and r["f1_tuned"] == 0.49 and r["file"] == str(tmp_path / "decision.json")
    assert decision_record(tmp_path / "none", "auto", applied=False, tta="none", valid_tta="none")["reason"] == \
        "missing"
    assert decision_record(tmp_path, "off", applied=False, tta="none", valid_tta="none")["reason"] == "off"


# ----------------------------------------------------------------------------------------- empty results
def test_pseudo_that_selects_nothing_writes_nothing_and_says_why(prepared_dir, tmp_path, monkeypatch, capsys):
    """0 eval images at --min-prob 0.9: a warning with the highest probability seen and a threshold that would add
    some; no prepared directory of 0 pseudo images (the same --out stays free for the next try)."""
    import maskcls.infer.predict as predict
    from maskcls.prep.prepared import load_prepared
    prep = load_prepared(prepared_dir)
    n, k = len(prep.eval_rows()), prep.task.num_classes
    top = np.linspace(0.30, 0.62, n)
    probs = np.tile(((1 - top) / (k - 1))[:, None], (1, k))
    probs[:, 0] = top
    fold0 = types.SimpleNamespace(fold=0)
    monkeypatch.setattr(predict, "run_and_data", lambda run, folds, data: ([fold0], prep, False))
    monkeypatch.setattr(predict, "eval_probabilities", lambda *a, **kw: probs)
    out = tmp_path / "pseudo"
    assert main(["pseudo", str(tmp_path / "run"), "--min-prob", "0.9", "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert cap.out == "" and not out.exists()
    assert cap.err == (f"maskcls: warning: 0 of {n} eval images reach p >= 0.9: the most confident has p = 0.6200 "
                       f"(flip TTA, folds 0), so nothing was written to {out}; lower --min-prob (--min-prob 0.6 would "
                       f"add {int((top >= 0.6).sum())}), or pseudo-label with a stronger run (more epochs, all "
                       "folds)\n")
    assert main(["pseudo", str(tmp_path / "run"), "--min-prob", "0.6", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"prepared {out}: {int((top >= 0.6).sum())} of {n} eval images reach p >= 0.6" in said
    assert said.splitlines()[-1] == f"next: maskcls train {out} --folds all"


def _audit_summary(findings: int, fix_rows: int) -> dict:
    return {"images": 105, "groups": 15, "folds": [0, 1, 2], "run": "runs/r-1", "findings": findings,
            "by_kind": {"person_gender": findings} if findings else {}, "top_findings": [], "notes": [],
            "out_dir": "runs/r-1/audit", "files": {"fixes": "runs/r-1/audit/fixes.csv"}, "fix_rows": fix_rows,
            "top": 100, "prepared": "prepared"}


def test_audit_with_no_findings_is_a_warning_with_the_reason(monkeypatch, capsys):
    import maskcls.audit.pipeline as pipeline
    monkeypatch.setattr(pipeline, "audit_run", lambda *a, **kw: _audit_summary(0, 0))
    assert main(["audit", "runs/r-1"]) == 0
    cap = capsys.readouterr()
    assert "next:" not in cap.out and "--fixes" not in cap.out
    assert cap.err == ("maskcls: warning: 0 findings: the out-of-fold predictions of folds 0,1,2 agree with every "
                       "given label of the 105 images (no person, photo or swapped pair contradicted), so there is "
                       "nothing to review and no fix to apply\n")
    monkeypatch.setattr(pipeline, "audit_run", lambda *a, **kw: _audit_summary(3, 0))
    assert main(["audit", "runs/r-1"]) == 0
    cap = capsys.readouterr()
    assert "none of the top 3 findings is a change a fixes file can make" in cap.err and "--fixes" not in cap.out
