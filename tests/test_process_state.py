"""maskcls leaves the process as it found it: nothing changed at import, none of what a loader or a training
changes outlives them, and no write changes the process's umask."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from maskcls import fsutil
from maskcls.config import TrainConfig
from maskcls.data.loader import ThreadLoader
from maskcls.engine.accel import make_accelerator, process_state_restored


def test_importing_the_data_path_leaves_opencv_threads_alone():
    code = ("import cv2; cv2.setNumThreads(3); import maskcls.data.fastaug, maskcls.data.loader, "
            "maskcls.engine.run; print(cv2.getNumThreads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "3"


class _Probe(torch.utils.data.Dataset):
    """Items that record OpenCV's thread count while the loader builds them."""

    def __init__(self):
        self.seen = []

    def __len__(self):
        return 4

    def __getitem__(self, i):
        self.seen.append(cv2.getNumThreads())
        return torch.zeros(3, 4, 4, dtype=torch.uint8), 0, i


def test_a_thread_loader_runs_opencv_on_one_thread_and_puts_it_back():
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        ds = _Probe()
        batches = list(ThreadLoader(ds, batch_size=2, sampler=range(4), threads=2))
        assert len(batches) == 2 and set(ds.seen) == {1}
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_atomic_writes_never_touch_the_umask_and_give_the_usual_mode(tmp_path, monkeypatch):
    mask = os.umask(0o027)
    try:
        def no_umask(_):
            raise AssertionError("os.umask called: it changes the mode of files other threads create meanwhile")
        monkeypatch.setattr(os, "umask", no_umask)
        fsutil.atomic_write_text(tmp_path / "a.txt", "x")
        fsutil.atomic_write_json(tmp_path / "b.json", {"a": 1})
    finally:
        monkeypatch.undo()
        os.umask(mask)
    for name in ("a.txt", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~0o027
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_accelerate_state_of_the_caller_is_put_back():
    AcceleratorState._reset_state(reset_partial_state=False)
    mine = Accelerator(cpu=True, mixed_precision="no")
    with process_state_restored():
        acc = make_accelerator(TrainConfig(mixed_precision="bf16"))
        assert acc.mixed_precision == "bf16"
    assert mine.state.mixed_precision == "no" and AcceleratorState().mixed_precision == "no"
    x = torch.ones(2, 2)
    with mine.autocast():
        assert (x @ x).dtype == torch.float32 and np.allclose((x @ x).numpy(), 2)


def test_worker_processes_start_after_the_parent_used_opencv_threads(tmp_path):
    """OpenCV's thread pool does not survive a fork: the process loader forks its workers with one OpenCV thread
    (and gives the parent its own setting back), so a program that used OpenCV's threads first does not hang."""
    script = tmp_path / "fork.py"
    script.write_text(
        "import cv2, numpy as np, torch\n"
        "cv2.setNumThreads(4)\n"
        "img = np.random.randint(0, 255, (2000, 2000, 3), np.uint8)\n"
        "for _ in range(3):\n"
        "    cv2.resize(img, (1000, 1000))\n"
        "from maskcls.data.loader import build_loader\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 8\n"
        "    def __getitem__(self, i):\n"
        "        x = cv2.resize(np.zeros((300, 300, 3), np.uint8), (32, 32))\n"
        "        return torch.from_numpy(x).permute(2, 0, 1).contiguous(), 0, i\n"
        "if __name__ == '__main__':\n"
        "    loader = build_loader(DS(), batch_size=2, sampler=range(8), workers=2, kind='processes')\n"
        "    print(sum(len(b[0]) for b in loader), cv2.getNumThreads())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["8", "4"]
