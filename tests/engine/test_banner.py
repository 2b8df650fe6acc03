"""The start banner's facts: a dataclass, recorded as a dict in run.json."""
from __future__ import annotations

import json

import torch

from helpers import config


def test_resolved_facts_are_a_dataclass_recorded_as_a_dict(tmp_path):
    from maskcls.data.preprocessing import Preprocessing
    from maskcls.engine.banner import RuntimeFacts, banner_lines, fold_facts, resolved_facts
    cfg = config(data={"num_workers": 2, "loader": "processes"}, train={"batch_size": 30, "accum_steps": 2})
    pp = Preprocessing(224, [0.5] * 3, [0.25] * 3, faces=False, preset="fast")
    r = resolved_facts(cfg, pp, RuntimeFacts(torch.device("cpu"), "no", 2, "none"), num_classes=18, folds=[0],
                       num_folds=5, run=tmp_path / "r-1", trackers="none")
    r.steps_per_epoch["0"] = fold_facts(train_images=100, valid_images=20, batches=4, accum_steps=2)
    assert r.effective_batch == 120 and r.precision == "fp32"
    d = json.loads(json.dumps(r.to_dict()))  # run.json's "resolved"
    assert d["steps_per_epoch"]["0"] == {"train_images": 100, "valid_images": 20, "batches": 4, "optimizer_steps": 2}
    lines = banner_lines(r, first_fold=0)
    assert "  batch     30 per process x 2 processes x 2 accumulation = 120 effective" in lines
    assert lines[6].endswith("fold 0: 100 train / 20 valid images, 4 batches = 2 optimizer steps per epoch")
