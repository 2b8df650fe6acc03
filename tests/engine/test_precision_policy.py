"""One precision rule for every pass that scores a run's model (validation and so oof.csv, predict, serve), so that
they see the same numbers on the same device — also for a run trained in bf16 autocast on a CPU."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import tiny, train
from maskcls.engine.accel import inference_precision


@pytest.mark.parametrize("trained", ["no", "bf16", "fp16", "auto"])
def test_a_cpu_scores_in_fp32_whatever_the_run_trained_in(trained):
    assert inference_precision("cpu", trained) == "fp32"


@pytest.mark.parametrize("trained,bf16_gpu,want", [("bf16", True, "bf16"), ("fp16", True, "bf16"),
                                                   ("auto", True, "bf16"), ("no", True, "fp32"),
                                                   ("bf16", False, "fp32")])
def test_a_gpu_takes_the_same_rule(monkeypatch, trained, bf16_gpu, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert inference_precision(torch.device("cuda", 0), trained) == want


@pytest.mark.slow
@pytest.mark.precision
@pytest.mark.parametrize("trained", ["no", "bf16"])
def test_oof_predict_and_serve_agree_for_a_run_trained_either_way(prepared_dir, tmp_path, trained):
    """oof.csv (validation), predict and serve's torch path compute in the same precision on this CPU, so they agree
    to float rounding — before, a bf16-trained run's oof.csv came from bf16 validation and predict ran in fp32."""
    from maskcls.infer.predict import eval_probabilities
    from maskcls.prep.prepared import load_prepared
    from maskcls.rundir.models import load_folds
    from maskcls.serve.model import torch_predictor
    run = tmp_path / "run"
    train(prepared_dir, run, tiny(train={"epochs": 1, "mixed_precision": trained}), folds=(0,))
    oof = pd.read_csv(run / "fold0" / "oof.csv", dtype={"image_id": str})
    prep = load_prepared(prepared_dir)
    loaded = load_folds(run, "0")
    rows = prep.train_rows()
    rows = rows.set_index(rows["image_id"].astype(str), drop=False).loc[oof["image_id"]].reset_index(drop=True)
    cols = [c for c in oof.columns if c.startswith("prob_")]
    predicted = eval_probabilities(loaded, prep, rows, tta="hflip")  # the run's valid_tta
    np.testing.assert_allclose(predicted, oof[cols].to_numpy(), atol=2e-6)  # oof.csv has 6 decimals
    one_view = eval_probabilities(loaded, prep, rows.iloc[:8], tta="none")
    from maskcls.engine.fold_data import make_dataset
    ds = make_dataset(prep, rows.iloc[:8], loaded[0].cfg.data, loaded[0].preprocessing, training=False, seed=0)
    images = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    np.testing.assert_allclose(torch_predictor(loaded)(images), one_view, atol=1e-6)
