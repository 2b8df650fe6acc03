"""``maskcls bench workers`` trains for real with each worker count it reports."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from maskcls.bench.workers import bench_workers


@pytest.mark.slow
def test_bench_workers_trains_each_worker_count(tmp_path):
    r = bench_workers(images=35, image_size=32, passes=1, counts=(1, 2), work=tmp_path)
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    n_train = int(((manifest["split"] == "train") & (manifest["fold"] != 0)).sum())
    rows = {int(line.split()[0]): line for line in r["text"].splitlines() if line[:1].isdigit()}
    for w in (1, 2):  # every row is a real one-epoch run with that many loader workers, over every image
        run = tmp_path / "runs" / f"w{w}-0"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["data"]["num_workers"] == w and cfg["data"]["cache"] is True and cfg["train"]["epochs"] == 1
        steps = json.loads((run / "run.json").read_text())["resolved"]["steps_per_epoch"]["0"]
        assert steps["train_images"] == n_train
        metrics = pd.read_csv(run / "fold0" / "metrics.csv")
        assert len(metrics) == 1
        # the number reported is the trainer's own measurement of that run, not one computed beside it
        assert r["img_s"][w] == float(metrics["images_per_s"].iloc[0]) > 0
        assert f"{r['img_s'][w]:.1f}" in rows[w]
    assert set(rows) == {1, 2} and r["text"].splitlines()[-1].startswith("workers 1 vs 2: ")
    with pytest.raises(ValueError, match="1 and 2"):
        bench_workers(counts=(0, 2), work=tmp_path / "x")
