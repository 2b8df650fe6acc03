"""Face-crop settings travel as one typed object."""
from __future__ import annotations

import json

import pytest

from maskcls.errors import ConfigError


def test_face_settings_travel_as_face_settings():
    from maskcls.prep.face_crop import FaceSettings
    from maskcls.prep.faces import face_settings
    s = FaceSettings(size=96)
    assert FaceSettings.from_dict(s.to_dict()) == s and json.loads(json.dumps(s.to_dict()))["size"] == 96
    assert face_settings({"key": {**s.to_dict(), "paths_sha1": "x"}}) == s
    with pytest.raises(ConfigError, match="lack margin"):
        FaceSettings.from_dict({k: v for k, v in s.to_dict().items() if k != "margin"})
    with pytest.raises(ConfigError, match="fallback"):
        FaceSettings.from_dict({**s.to_dict(), "fallback": "centre"})
