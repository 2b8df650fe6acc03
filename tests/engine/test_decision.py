"""Decision offsets: a closed set of modes, a damaged decision.json named."""
from __future__ import annotations

import json
import re

import pytest

from maskcls.errors import ConfigError, DataError


def test_decision_modes_are_a_closed_set_and_a_damaged_decision_json_is_named(tmp_path):
    from maskcls.engine.decision import read_offsets
    with pytest.raises(ConfigError, match=r"--tune-bias 'yes'"):
        read_offsets(tmp_path, "yes")
    assert read_offsets(tmp_path, "auto") is None  # no decision.json: argmax, as before
    bad = tmp_path / "decision.json"
    bad.write_text('{"offsets": [0.1, ')
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*not valid JSON"):
        read_offsets(tmp_path, "auto")
    bad.write_text(json.dumps({"offsets": [0.1, 0.2], "apply_by_default": True}))
    with pytest.raises(DataError, match="2 offsets, not 3"):
        read_offsets(tmp_path, "on", k=3)
    assert read_offsets(tmp_path, "off", k=3) is None
    bad.write_text(json.dumps({"offsets": [0.1, 0.2, 0.3], "apply_by_default": False}))
    assert read_offsets(tmp_path, "auto", k=3) is None and read_offsets(tmp_path, "on", k=3).tolist() == [0.1, 0.2, 0.3]
