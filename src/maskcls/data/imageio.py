"""Reading images: one function for every path, with a fast JPEG path.

* JPEG in RGB/greyscale with no EXIF rotation → libjpeg-turbo via ``simplejpeg`` (≈2× PIL).
* everything else (PNG, CMYK JPEG, EXIF-rotated, 16-bit, palette, alpha) → PIL, with
  ``ImageOps.exif_transpose`` and conversion to 8-bit RGB (alpha composited on white).
* if the fast decoder fails on a file, PIL decodes it; if PIL fails too, :class:`DataError`
  names the file.
``probe`` fully decodes once at prepare time and records what the fast path needs.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

log = logging.getLogger(__name__)

try:  # optional accelerator; PIL is always there
    import simplejpeg
except ImportError:  # pragma: no cover - dependency of the package
    simplejpeg = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Refuse decompression bombs: a 384×512 photo is 0.2 MP; 50 MP is a generous limit.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
_EXIF_ORIENTATION = 0x0112


def is_image_name(name: str) -> bool:
    """True for a visible file with an image extension (skips macOS ``._*`` and dotfiles)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        # I;16* holds 16-bit samples: always scale by 65535 (a dark 16-bit photo must stay dark).
        # Mode I (32-bit int) may hold 8-bit values (some TIFFs), so there the range decides.
        scale = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        arr8 = np.clip(arr.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1


def read_pil(path: str | Path) -> np.ndarray:
    """Decode with PIL, apply EXIF orientation, return uint8 RGB HWC."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                img.load()
                return np.asarray(_to_rgb(img), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large ({e}); resize it below {MAX_PIXELS:,} pixels") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} not found; re-run `maskcls prepare` if the dataset moved") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); fix or remove the file, or prepare with "
                        "--skip-bad") from None


def turbo_rgb(data: bytes, name: str) -> np.ndarray | None:
    """JPEG bytes → uint8 RGB HWC with libjpeg-turbo; None when it is missing or refuses the file
    (strict: a damaged file falls through to the careful PIL path)."""
    if simplejpeg is None:
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (ValueError, RuntimeError) as e:
        log.debug("fast decode failed for %s (%s); using PIL", name, e)
        return None


def read_rgb(path: str | Path, fast: bool = True) -> np.ndarray:
    """Decode ``path`` to uint8 RGB HWC. ``fast`` = try libjpeg-turbo first (prepare says when it is safe)."""
    if fast and simplejpeg is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} not found; re-run `maskcls prepare` if the dataset moved") from None
        except OSError as e:  # fall back to the careful path, which names the problem
            log.debug("reading %s failed (%s); using PIL", path, e)
        else:
            if (img := turbo_rgb(data, str(path))) is not None:
                return img
    return read_pil(path)


def probe(path: str | Path) -> dict:
    """Fully decode one image (catches truncation) and report what the loader needs.

    Returns {"width", "height", "format", "mode", "orientation", "fast"} where width/height
    are after EXIF rotation and ``fast`` says the libjpeg-turbo path gives the same pixels.
    Raises DataError (with the reason) for anything that cannot be read.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                facts = describe(img)
                img.load()  # full decode: truncated files fail here
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image too large (over {MAX_PIXELS:,} pixels; decompression-bomb guard)") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode ({e})") from None
    return facts


def describe(img: Image.Image) -> dict:
    """What an opened image's header says, before any pixel is decoded.

    {"width", "height" (after EXIF rotation), "format", "mode", "orientation", "fast"}; ``fast``:
    libjpeg-turbo gives PIL's pixels (a plain RGB/greyscale JPEG without EXIF rotation). The one
    rule for ``prepare``'s photos and ``serve``'s uploads alike.
    """
    fmt, mode = img.format, img.mode
    orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    w, h = img.size
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    fast = fmt == "JPEG" and mode in ("RGB", "L") and orientation == 1
    return {"width": w, "height": h, "format": fmt, "mode": mode, "orientation": orientation, "fast": fast}
