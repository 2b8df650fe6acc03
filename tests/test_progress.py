"""Progress bars count exactly when threads update them."""
from __future__ import annotations

import threading


# --------------------------------------------------------------------------- process-wide state
def test_progress_bar_counts_exactly_from_threads(monkeypatch):
    from maskcls import progress
    monkeypatch.setenv("MASKCLS_PROGRESS", "bar")
    progress.reset()
    bar = progress.progress(total=8000, desc="t", unit="img")

    def work():
        for _ in range(1000):
            bar.update(1, loss=0.5)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.bar.n == 8000
    bar.close()
