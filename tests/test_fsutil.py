"""Atomic writes sync the directory."""
from __future__ import annotations

from pathlib import Path


def test_atomic_writes_sync_the_directory(tmp_path, monkeypatch):
    from maskcls import fsutil
    synced = []
    real = fsutil.fsync_dir
    monkeypatch.setattr(fsutil, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    fsutil.atomic_write_text(tmp_path / "a.txt", "x")
    assert synced == [tmp_path] and (tmp_path / "a.txt").read_text() == "x"
