"""What the serving tests share: a stand-in model, a test client that waits until the server is ready, and
photos and multipart uploads made on the fly."""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np
from PIL import Image

SIZE = 32
W = np.random.default_rng(0).normal(size=(3, 18)) * 3


def stand_in(x: np.ndarray) -> np.ndarray:
    """Probabilities from each image's channel means: depends on the image only, never on its batch."""
    z = (x.reshape(len(x), 3, -1).mean(2) / 255) @ W
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def wait_ready(client) -> None:
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(client.get("/readyz").json())


@contextlib.contextmanager
def served(app, **kw):
    from fastapi.testclient import TestClient
    with TestClient(app, **kw) as client:
        wait_ready(client)
        yield client


def photo(w=120, h=90, seed=0, fmt="JPEG", mode="RGB", exif_orientation=None) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR).convert(mode)
    buf = io.BytesIO()
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def files(*items):
    return [("file", (name, data, "application/octet-stream")) for name, data in items]

