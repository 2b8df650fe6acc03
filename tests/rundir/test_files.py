"""A run's files and the prepared directory's prepare.json, read strictly."""
from __future__ import annotations

import re

import pytest

from maskcls.errors import DataError


def test_run_files_and_prepared_json_are_read_strictly(tmp_path, prepared_dir):
    import shutil

    from maskcls.fsutil import load_json
    from maskcls.prep.prepared import load_prepared
    from maskcls.rundir.files import read_run_info
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "run.json")) + ".*restore it"):
        read_run_info(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON list, not an object"):
        load_json(tmp_path / "list.json", fix="x")
    assert load_json(tmp_path / "none.json", fix="x", missing_ok=True) is None
    d = tmp_path / "prep"
    shutil.copytree(prepared_dir, d)
    (d / "stats.json").write_text('{"mean": [0.5')
    with pytest.raises(DataError, match=re.escape(str(d / "stats.json")) + ".*maskcls stats"):
        load_prepared(d).stats()
