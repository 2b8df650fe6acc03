"""``maskcls bench workers`` trains for real with each worker count it reports."""
from __future__ import annotations

import math

import pytest
import yaml

from maskcls.bench.workers import bench_workers


@pytest.mark.slow
def test_bench_workers_trains_each_worker_count(tmp_path):
    r = bench_workers(images=35, image_size=32, passes=1, counts=(1, 2), work=tmp_path)
    for w in (1, 2):  # every row is a real one-epoch run with that many loader workers
        cfg = yaml.safe_load((tmp_path / "runs" / f"w{w}-0" / "config.yaml").read_text())
        assert cfg["data"]["num_workers"] == w
        assert math.isfinite(r["img_s"][w]) and r["img_s"][w] > 0
    assert r["ratio_1_to_2"] == pytest.approx(r["img_s"][1] / r["img_s"][2])
    assert r["text"].splitlines()[-1] == f"workers 1 vs 2: {r['ratio_1_to_2']:.2f} (target >= 0.5)"
    with pytest.raises(ValueError, match="1 and 2"):
        bench_workers(counts=(0, 2), work=tmp_path / "x")
