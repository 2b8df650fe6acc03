"""The batch loaders: what each kind refuses."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import config
from maskcls.errors import ConfigError


def test_thread_loader_refuses_the_reference_preset():
    from maskcls.data.dataset import FileSource, ImageDataset
    from maskcls.data.loader import build_loader
    from maskcls.data.transforms import create_transform
    from maskcls.engine.fold_data import resolve_loader
    with pytest.raises(ConfigError, match="data.loader=threads cannot run data.preset=reference"):
        resolve_loader(config(data={"loader": "threads", "preset": "reference", "num_workers": 2}).data)
    assert resolve_loader(config(data={"loader": "threads", "preset": "reference_fast", "num_workers": 2}).data) \
        == (2, "threads")
    tf = create_transform(preset="reference", is_training=True, image_size=32)
    ds = ImageDataset(FileSource(np.asarray(["x.jpg"]), None), np.zeros(1, np.int64), tf, seed=0)
    with pytest.raises(ValueError, match="not thread-safe"):
        build_loader(ds, batch_size=1, sampler=[0], workers=2, kind="threads")
