"""Drawing the synthetic faces: a person's identity, the wall, the face, the mask, light and noise.

The cues follow the real task's difficulty (see :mod:`.synth`); every random choice comes from
the generator handed in, so a person's bytes depend on the dataset seed alone.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PHOTOS = (("mask1", 0), ("mask2", 0), ("mask3", 0), ("mask4", 0), ("mask5", 0),
          ("incorrect_mask", 1), ("normal", 2))
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 40, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 40, endpoint=False))], axis=1)
_MASK_COLOURS = {  # name: (colour, probability)
    "white": ((238, 238, 234), 0.28), "blue": ((150, 195, 230), 0.24),
    "black": ((34, 34, 40), 0.20), "pink": ((228, 168, 185), 0.06),
    "grey": ((150, 150, 156), 0.06), "navy": ((40, 52, 95), 0.04), "patterned": (None, 0.12),
}


@dataclass(frozen=True)
class PersonJob:
    """One person to render: where its 7 photos go and who it is."""
    part: int                 # 0 train, 1 eval (part of the seed)
    index: int
    files: tuple[str, ...]    # 7 paths relative to the build root, in PHOTOS order
    gender: int
    age: int
    junk: str | None          # relative path of a macOS '._' file to drop, or None



def _identity(rng: np.random.Generator, gender: int, age: int, w: int, h: int) -> dict:
    """What stays the same across one person's 7 photos."""
    female = gender == 1
    # Apparent age: rises within each group and jumps at 30 and 60 (so the groups are
    # learnable from ~100 people), plus noise; 60 looks like the old end, not like 59.
    # Bold enough that ~50 persons teach it within a few epochs at 128 px (measured), with
    # a few exceptions (dyed hair, short-haired women, long-haired men) so it is not trivial.
    if age < 30:
        a = 0.03 + 0.1 * (age - 18) / 11
    elif age < 60:
        a = 0.45 + 0.15 * (age - 30) / 29
    else:
        a = 1.0
    a = float(np.clip(a + rng.normal(0, 0.03), 0, 1))
    grey = 1.0 if a > 0.9 else float(np.clip((a - 0.3) * 1.6, 0, 1))  # white at 60
    if a > 0.3 and rng.random() < 0.03:
        grey = 0.0                                                  # dyed hair
    hair_base = np.array([rng.uniform(20, 45)] * 3) + rng.uniform(0, 25, 3) * [1, 0.7, 0.4]
    if rng.random() < 0.06:
        hair_base = np.array([rng.uniform(90, 150), rng.uniform(60, 100), rng.uniform(30, 60)])
    grey_rgb = np.array([225.0, 225, 222]) + rng.uniform(-10, 10)
    skin = np.array([226.0, 190, 160]) * rng.uniform(0.72, 1.04) + rng.uniform(-8, 8, 3)
    long_hair = rng.random() < (0.97 if female else 0.02)
    group = 0 if age < 30 else (1 if age < 60 else 2)
    return {
        # reading glasses: common at 60, rarer below (a shape cue above the mask line)
        "glasses": rng.random() < (0.03, 0.08, 0.8)[group],
        "frame": np.array([rng.uniform(15, 60)] * 3) if rng.random() < 0.6 else np.array([170.0, 150, 90]),
        "hair": hair_base * (1 - grey) + grey_rgb * grey,
        "brow": hair_base * (1 - 0.6 * grey) + grey_rgb * 0.6 * grey,
        "skin": np.clip(skin, 0, 255),
        "long": long_hair,
        "hair_len": rng.uniform(1.3, 2.5),
        "volume": rng.uniform(0.08, 0.25),
        # bangs for some long hair; the hairline recedes in the old (a large, maskless cue)
        "hairline": (rng.uniform(-0.62, -0.5) if long_hair and rng.random() < 0.4
                     else rng.uniform(-0.82, -0.66)) - 0.3 * float(np.clip((a - 0.7) / 0.2, 0, 1)),
        "side_y": rng.uniform(-0.15, 0.1),
        "face_w": rng.normal(0.94 if female else 1.07, 0.035),
        "jaw": max(1.8, rng.normal(2.0, 0.12) if female else rng.normal(3.0, 0.3)),  # squareness
        "stubble": not female and rng.random() < 0.45,
        "face_h": rng.uniform(1.24, 1.38),
        "brow_t": max(0.03, rng.normal(0.05 if female else 0.13, 0.018)),
        "brow_y": rng.uniform(-0.03, 0.03),
        "lip": np.clip((np.array([188.0, 72, 82]) if female else np.array([160.0, 98, 92]))
                       + rng.normal(0, 14, 3), 0, 255),
        "forehead": int(np.clip(round((a - 0.25) * 6 + rng.normal(0, 0.4)), 0, 3)),
        "crow": a + rng.normal(0, 0.06) > 0.42,
        "fold": a + rng.normal(0, 0.06) > 0.3,
        "bags": a + rng.normal(0, 0.06) > 0.75,
        "wrinkle_dark": 0.45 + 0.45 * a,
        "cloth": rng.uniform(20, 235, 3),
        "scale": w * rng.uniform(0.2, 0.25),
        "centre": np.array([w * (0.5 + rng.uniform(-0.04, 0.04)), h * (0.5 + rng.uniform(-0.04, 0.04))]),
        "noise_sigma": rng.uniform(2.0, 6.0),
    }


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A wall: smooth blotches around a base colour, sometimes stripes or tiles."""
    base = rng.uniform(70, 230) + rng.uniform(-35, 35, 3)
    coarse = np.clip(base + rng.normal(0, 18, (3, 4, 3)), 0, 255).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
    kind = rng.integers(3)
    if kind == 1:
        x = np.arange(w)
        bg = bg + (14 * np.sin(2 * np.pi * x / (w * rng.uniform(0.04, 0.12)))).astype(np.int16)[None, :, None]
    elif kind == 2:
        step = max(4, int(w * rng.uniform(0.08, 0.16)))
        bg[::step] -= 30
        bg[:, ::step] -= 30
    return np.clip(bg, 0, 255).astype(np.uint8)


def _mask_fill(rng: np.random.Generator) -> tuple[str, tuple, tuple | None]:
    """(kind, colour, dot colour or None) of one mask."""
    names = list(_MASK_COLOURS)
    name = names[rng.choice(len(names), p=[p for _, p in _MASK_COLOURS.values()])]
    if name == "patterned":
        return name, _c(rng.uniform(40, 230, 3)), _c(rng.uniform(0, 255, 3))
    colour = np.array(_MASK_COLOURS[name][0]) + rng.uniform(-8, 8, 3)
    return name, _c(colour), None


def _c(rgb) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


class _Pen:
    """Draws shapes given in face coordinates (face half-width = 1, y down) onto an image."""

    def __init__(self, draw: ImageDraw.ImageDraw, centre: np.ndarray, scale: float, tilt: float, yaw: float):
        c, s = math.cos(tilt), math.sin(tilt)
        self.m = scale * np.array([[c, -s], [s, c]])
        self.c, self.scale, self.yaw, self.d = centre, scale, yaw, draw

    def pts(self, p, turn: float = 0.0) -> list[float]:
        p = np.asarray(p, dtype=float) + [self.yaw * turn, 0.0]
        return (p @ self.m.T + self.c).ravel().tolist()

    def poly(self, p, fill, turn: float = 0.0) -> None:
        self.d.polygon(self.pts(p, turn), fill=_c(fill))

    def ellipse(self, cx, cy, rx, ry, fill, turn: float = 0.0) -> None:
        self.poly(_CIRCLE * [rx, ry] + [cx, cy], fill, turn)

    def line(self, p, fill, width: float, turn: float = 1.0) -> None:
        self.d.line(self.pts(p, turn), fill=_c(fill), width=max(1, round(width * self.scale)), joint="curve")


def _arc(cx, cy, rx, ry, a0, a1, n=16) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _face_outline(fw: float, fh: float, jaw: float) -> np.ndarray:
    """An ellipse whose lower half is a superellipse of exponent ``jaw`` (2 round, 3 square)."""
    c, s = _CIRCLE[:, 0], _CIRCLE[:, 1]
    n = np.where(s > 0, jaw, 2.0)
    return np.stack([fw * np.sign(c) * np.abs(c) ** (2 / n), fh * np.sign(s) * np.abs(s) ** (2 / n)], axis=1)


def _draw_hair_and_face(pen: _Pen, p: dict) -> None:
    fw, fh, vol, skin = p["face_w"], p["face_h"], p["volume"], p["skin"]
    if p["long"]:
        back = np.vstack([_arc(0, -0.2, fw + 0.25, 1.15 + vol, np.pi, 2 * np.pi),
                          [[fw + 0.35, p["hair_len"]], [-fw - 0.35, p["hair_len"]]]])
        pen.poly(back, p["hair"] * 0.85)
    pen.poly([[-0.42 * fw, 0.6], [0.42 * fw, 0.6], [0.42 * fw, 1.9], [-0.42 * fw, 1.9]], skin * 0.86)
    for side in (-1, 1):
        pen.ellipse(side * fw, -0.05, 0.13, 0.25, skin * 0.93)
    face = _face_outline(fw, fh, p["jaw"])
    pen.poly(face, skin)
    if p["stubble"]:
        pen.poly(face[face[:, 1] > 0.4] * [0.96, 1.0], skin * 0.8)
    cap = np.vstack([_arc(0, -0.2, fw + vol, 1.1 + vol, np.pi, 2 * np.pi),
                     [[fw + vol * 0.5, p["side_y"]]],
                     _arc(0, -0.2, fw * 0.95, p["hairline"] + 0.2, 0, np.pi),  # hairline: up to y=hairline
                     [[-fw - vol * 0.5, p["side_y"]]]])
    pen.poly(cap, p["hair"])


def _draw_features(pen: _Pen, p: dict, rng: np.random.Generator) -> None:
    skin, by, bt = p["skin"], p["brow_y"], p["brow_t"]
    gaze = rng.uniform(-0.04, 0.04, 2)
    for s in (-1, 1):
        pen.line([[s * 0.15, -0.38 + by], [s * 0.4, -0.45 + by], [s * 0.62, -0.40 + by]], p["brow"], bt)
        pen.ellipse(s * 0.38, -0.15, 0.15, 0.075, (236, 232, 228), turn=1)
        pen.ellipse(s * 0.38 + gaze[0], -0.15 + gaze[1] * 0.3, 0.065, 0.065, (40, 28, 22), turn=1)
    pen.poly([[0, -0.05], [0.11, 0.3], [-0.11, 0.3]], skin * 0.8, turn=1)
    open_mouth = rng.random() < 0.2
    pen.ellipse(0, 0.62, 0.26, 0.1 if open_mouth else 0.06, p["lip"], turn=1)
    dark = skin * (1 - p["wrinkle_dark"])
    for j in range(p["forehead"]):
        y = -0.47 - 0.075 * j
        pen.line([[-0.38, y + 0.02], [0, y - 0.01], [0.38, y + 0.02]], dark, 0.05)
    for s in (-1, 1):
        if p["crow"]:
            for dy in (-0.07, 0.0, 0.07):
                pen.line([[s * 0.58, -0.15], [s * 0.72, -0.15 + dy * 1.4]], dark, 0.03)
        if p["fold"]:
            pen.line([[s * 0.15, 0.33], [s * 0.3, 0.55], [s * 0.33, 0.74]], dark, 0.035)
        if p["bags"]:
            pen.line(_arc(s * 0.38, -0.1, 0.14, 0.06, 0.2, np.pi - 0.2, 6), dark, 0.03)


def _draw_glasses(pen: _Pen, p: dict) -> None:
    for s in (-1, 1):
        pen.line(_arc(s * 0.38, -0.15, 0.22, 0.15, 0, 2 * np.pi, 20), p["frame"], 0.035)
        pen.line([[s * 0.6, -0.17], [s * p["face_w"], -0.2]], p["frame"], 0.03)
    pen.line([[-0.16, -0.17], [0, -0.21], [0.16, -0.17]], p["frame"], 0.03)


def _draw_mask(pen: _Pen, p: dict, rng: np.random.Generator, state: int) -> None:
    fw = p["face_w"]
    if state == 0:
        top, height = rng.uniform(-0.08, 0.04), rng.uniform(1.25, 1.4)
    else:                                      # pulled below the nose: mouth/chin only
        top, height = rng.uniform(0.4, 0.72), rng.uniform(0.95, 1.2)
    wd = fw * rng.uniform(0.97, 1.04)
    name, colour, colour2 = _mask_fill(rng)
    shape = np.vstack([[[-wd, top + 0.12], [-0.5, top], [0, top - 0.07], [0.5, top], [wd, top + 0.12]],
                       _arc(0, top + 0.5 * height, wd * 0.97, 0.5 * height, 0, np.pi)])
    strap = np.array(colour) * 0.8 if name != "white" else (250, 250, 250)
    for s in (-1, 1):
        pen.line([[s * wd, top + 0.12], [s * fw, -0.12]], strap, 0.03)
        pen.line([[s * wd * 0.97, top + 0.5 * height], [s * fw, 0.08]], strap, 0.03)
    pen.poly(shape, colour, turn=1)
    if name in ("white", "blue"):              # surgical pleats
        for f in (0.3, 0.5, 0.7):
            y = top + f * height
            pen.line([[-wd * 0.8, y], [wd * 0.8, y]], np.array(colour) * 0.85, 0.02)
    elif colour2 is not None:                  # dots
        for iy, f in enumerate((0.3, 0.55, 0.8)):
            for x in np.arange(-0.6, 0.61, 0.3) + (0.15 if iy % 2 else 0):
                pen.ellipse(x, top + f * height, 0.06, 0.06, colour2, turn=1)


def _light(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Additive lighting: a (h, w) int16 ramp in a random direction plus a brightness
    shift, and a (3,) colour cast."""
    ang = rng.uniform(0, 2 * np.pi)
    gx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :] * math.cos(ang)
    gy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None] * math.sin(ang)
    ramp = ((gx + gy) * rng.uniform(0, 60) + rng.uniform(-25, 20)).astype(np.int16)
    return ramp, rng.integers(-10, 11, 3).astype(np.int16)


def _photo(rng: np.random.Generator, p: dict, bg: np.ndarray, noise: np.ndarray, state: int) -> Image.Image:
    """One photo of person ``p`` in mask ``state`` (0 wear, 1 incorrect, 2 not worn)."""
    h, w = bg.shape[:2]
    img = Image.fromarray(bg)
    centre = p["centre"] + rng.uniform(-0.06, 0.06, 2) * [w, h]
    pen = _Pen(ImageDraw.Draw(img), centre, p["scale"] * rng.uniform(0.93, 1.07),
               rng.uniform(-0.14, 0.14), rng.uniform(-0.12, 0.12))
    pen.poly([[-0.45, 1.2], [0.45, 1.2], [2.0, 2.3], [2.7, 6], [-2.7, 6], [-2.0, 2.3]], p["cloth"])
    _draw_hair_and_face(pen, p)
    _draw_features(pen, p, rng)
    if state < 2:
        _draw_mask(pen, p, rng, state)
    if p["glasses"]:
        _draw_glasses(pen, p)
    # Light + sensor noise (one per-person field, cropped at a new offset per channel and
    # photo), summed per channel first: numpy is slow on (h, w, 3) broadcasts.
    ramp, cast = _light(rng, w, h)
    ys = rng.integers(0, noise.shape[0] - h + 1, 3)
    xs = rng.integers(0, noise.shape[1] - w + 1, 3)
    offset = np.empty((h, w, 3), np.int16)
    for c in range(3):
        np.add(ramp, noise[ys[c]:ys[c] + h, xs[c]:xs[c] + w], out=offset[:, :, c])
        offset[:, :, c] += cast[c]
    arr = np.asarray(img, dtype=np.int16)
    arr += offset
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))


def _save(img: Image.Image, path: Path, quality: int) -> None:
    if path.suffix == ".png":                  # PNGs in the wild were JPEGs once
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        # zlib level 1 with the run-length strategy: ~2x faster than the default here.
        Image.open(buf).convert("RGB").save(path, "PNG", compress_level=1, compress_type=3)
    else:
        img.save(path, "JPEG", quality=quality)


def render_person(args: tuple[str, int, tuple[int, int], PersonJob]) -> int:
    """Worker: draw and write one person's 7 photos (and its junk file). Returns images written."""
    root, seed, (w, h), job = args
    rng = np.random.default_rng([seed, job.part, job.index])
    person = _identity(rng, job.gender, job.age, w, h)
    bg = _background(rng, w, h)
    pad = 24
    noise = rng.standard_normal((h + pad, w + pad), dtype=np.float32) * person["noise_sigma"]
    noise = np.rint(noise).astype(np.int16)
    for rel, (_, state) in zip(job.files, PHOTOS):
        path = Path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(_photo(rng, person, bg, noise, state), path, int(rng.integers(82, 96)))
    if job.junk:
        apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # the header, then garbage
        Path(root, job.junk).write_bytes(apple_double + rng.bytes(4000))
    return len(job.files)
