"""Uploads → model input, exactly as at training: read from the request, decode, (face crop), evaluation transform.

:func:`read_uploads` takes the photos out of the request (on the event loop); the rest runs in
worker threads, never on the event loop. The header is read first, so a non-image
or an oversized image is refused before any pixel is decoded. Decoding is maskcls' PIL path
(EXIF rotation, 16-bit / palette / alpha handling, decompression-bomb guard), except for plain
JPEGs, which libjpeg-turbo decodes to the same pixels about 1.4x faster (as ``maskcls prepare``
decides for its photos). Runs trained on face crops get the same MTCNN crop as ``maskcls faces``
made, and its box.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import warnings
from dataclasses import astuple, dataclass
from typing import Callable

import numpy as np
from fastapi import Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..data import imageio
from ..data.transforms import create_transform
from ..errors import DataError
from .limits import ApiError, Limits
from .model import ServedModel

FORMATS_HINT = "upload a JPEG, PNG, WebP, BMP or TIFF photo"
# After decoding a photo this large, freed memory is handed back to the system: glibc keeps what a thread
# freed in that thread's arena, so without it every decode worker would keep its own largest decode.
TRIM_PIXELS = 4_000_000


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None
    return lambda: trim(0)


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Return the memory freed by a large decode to the system (glibc only; a no-op elsewhere)."""
    if _TRIM is not None:
        _TRIM()


@dataclass(frozen=True)
class Header:
    """What an upload's header says, before any pixel is decoded."""
    width: int  # after EXIF rotation
    height: int
    format: str
    fast: bool  # libjpeg-turbo gives PIL's pixels

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class ModelInput:
    """One upload turned into the model's input tensor, with what its answer reports of the photo."""
    name: str
    tensor: np.ndarray  # uint8 3×S×S
    width: int  # of the photo after EXIF rotation
    height: int
    box: np.ndarray | None = None  # face_crop.BOX_COLS row, face-crop runs only


def safe_name(name: str | None, index: int) -> str:
    """The upload's file name without any folder part, printable and at most 200 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch if ch.isprintable() else "?" for ch in base)[:200]
    return base or f"upload-{index + 1}"


def read_header(data: bytes, name: str, max_pixels: int) -> tuple[int, int, str, bool]:
    """(width, height after EXIF rotation, format, fast) from the header alone; ApiError for what cannot be served.

    ``fast``: libjpeg-turbo gives PIL's pixels (a plain RGB/greyscale JPEG without EXIF rotation:
    the rule ``maskcls prepare`` applies to its photos).
    """
    if not data:
        raise ApiError(400, "empty_file", f"{name}: empty upload (0 bytes); choose a photo file", file=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                facts = imageio.describe(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "too_many_pixels", f"{name}: image too large (decompression-bomb guard); resize it "
                       f"below {max_pixels:,} pixels", file=name) from None
    except UnidentifiedImageError:
        raise ApiError(415, "not_an_image", f"{name}: not an image (unrecognised format); {FORMATS_HINT}",
                       file=name) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ApiError(422, "corrupt_image", f"{name}: unreadable image header ({e}); re-save the photo and upload "
                       "it again", file=name) from None
    w, h = facts["width"], facts["height"]
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{name}: {w}x{h} = {w * h:,} pixels is over this server's limit of "
                       f"{max_pixels:,}; resize the photo (the model sees a few hundred pixels)", file=name)
    return w, h, facts["format"], facts["fast"]


def decode(data: bytes, fast: bool, name: str = "upload") -> np.ndarray:
    """uint8 RGB HWC: libjpeg-turbo when ``fast`` and it accepts the bytes, else maskcls' PIL path."""
    img = imageio.turbo_rgb(data, name) if fast else None
    return img if img is not None else imageio.read_pil(io.BytesIO(data))


class Preprocessor:
    """Turns uploads into model input for one served model (thread-safe: no per-call state)."""

    def __init__(self, model: ServedModel, max_pixels: int, detector=None):
        pp = model.preprocessing
        self.transform = create_transform(preset=pp.preset, is_training=False, image_size=pp.image_size)
        self.face_settings, self.max_pixels = model.face_settings, max_pixels
        self.detector = detector
        if self.face_settings and self.detector is None:
            from ..prep.mtcnn import make_detector
            self.detector = make_detector("cpu")

    def header(self, data: bytes, name: str) -> Header:
        """The upload's header facts; ApiError for what cannot be served (see :func:`read_header`)."""
        return Header(*read_header(data, name, self.max_pixels))

    def __call__(self, data: bytes, name: str, header: Header | None = None) -> ModelInput:
        """Decode and transform one upload (its ``header`` read again unless given)."""
        w, h, fmt, fast = astuple(header or self.header(data, name))
        try:
            if self.face_settings:
                from ..prep.faces import crop_with_boxes
                boxes, crops = crop_with_boxes([io.BytesIO(data)], self.face_settings, detector=self.detector)
                img, box = crops[0], boxes[0]
            else:
                img, box = decode(data, fast, name), None
        except DataError:
            raise ApiError(422, "corrupt_image", f"{name}: cannot decode this {fmt} image (truncated or corrupt); "
                           f"re-save the photo and upload it again", file=name) from None
        tensor = self.transform(np.ascontiguousarray(img)).numpy()
        del img
        if w * h >= TRIM_PIXELS:
            release_freed_memory()
        return ModelInput(name, tensor, w, h, box)


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each photo: multipart form files, or one photo sent as the body (image/*)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=limits.max_images, max_fields=limits.max_images * 4)
        except HTTPException as e:
            if str(e.detail).startswith("Too many files"):
                raise ApiError(413, "too_many_images", f"more than {limits.max_images} photos in one request; this "
                               f"server takes at most {limits.max_images} per request: send the rest in further "
                               "requests") from None
            raise ApiError(400, "bad_multipart", f"malformed multipart body ({e.detail}); send photos as form "
                           "files, e.g. curl -F file=@photo.jpg") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) > limits.max_images:
            await form.close()
            raise ApiError(413, "too_many_images", f"{len(files)} photos in one request; this server takes at most "
                           f"{limits.max_images} per request: send the rest in further requests")
        out = [(safe_name(f.filename, i), await f.read()) for i, f in enumerate(files)]
        await form.close()
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        out = [(safe_name(request.query_params.get("name"), 0), await request.body())]
    else:
        raise ApiError(415, "unsupported_content_type", f"Content-Type {ctype or 'missing'}: send photos as "
                       "multipart/form-data (curl -F file=@photo.jpg) or one photo as the body with its image/* type")
    if not out:
        raise ApiError(400, "no_image", "the request holds no photo; attach one or more as form files "
                       "(curl -F file=@photo.jpg)")
    return out
