"""Shared fixtures: tiny synthetic datasets generated once per session (CPU, seconds)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a network
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic competition dataset: 15 train + 6 eval persons, 96×128 photos."""
    from maskcls.synth.dataset import synthesize
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, people=15, eval_people=6, seed=3, image_size=(96, 128), workers=1)
    return out


@pytest.fixture()
def dataset_copy(synth_root, tmp_path) -> Path:
    """A private, writable copy of the synthetic dataset for tests that damage it."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst)
    return dst


@pytest.fixture(scope="session")
def prepared_dir(synth_root, tmp_path_factory) -> Path:
    from maskcls.prep.prepare import prepare
    out = tmp_path_factory.mktemp("prep") / "prepared"
    prepare(synth_root, out, folds=3, seed=1)
    return out
