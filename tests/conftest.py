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



# A test that trains a model (an optimizer step in this process, also inside a shared fixture it requests) must be
# marked ``slow``: ``make test-fast`` (``-m "not slow"``) promises the unit tests only. The training step is wrapped
# once per session; the wrapper fails any step taken while a test without the mark is being set up or run.
_RUNNING: dict = {"item": None}


def pytest_runtest_setup(item):
    _RUNNING["item"] = item


def pytest_runtest_teardown(item):
    _RUNNING["item"] = None


def pytest_sessionstart(session):
    from maskcls.engine import lr_find
    from maskcls.engine.trainer import loop
    real = loop.train_step

    def guarded(*args, **kwargs):
        item = _RUNNING["item"]
        if item is not None and item.get_closest_marker("slow") is None:
            raise AssertionError(f"{item.nodeid} trains a model: mark it @pytest.mark.slow (make test-fast runs the "
                                 "tests without that mark, and trains nothing)")
        return real(*args, **kwargs)
    loop.train_step = lr_find.train_step = guarded
