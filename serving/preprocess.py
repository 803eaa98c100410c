"""Image decoding and geometry: upload bytes -> uint8 RGB pixels the model takes.

Runs in the API process, so it must not import torch. What it produces
is exactly what torchvision's Resize(resize_size) + CenterCrop(input_size)
produce on the same decoded image; normalization (mean/std) belongs to the
model itself (model_files.serving_model), so it happens on the worker's device.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

RESIZE_FILTER = Image.Resampling.BILINEAR  # torchvision's Resize default; /model reports it

# What the API decodes. Pillow reads about 40 formats, some through plugins that run other programs
# (EPS: Ghostscript) or parse rarely exercised code; the others are refused with 415. JPEG includes
# MPO, the multi-picture JPEG many cameras write.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# libspng decodes a PNG 1.6-1.8x faster than Pillow, but holds the GIL throughout, and every other thread of the
# API process waits (another request's Redis call, a health check): 80 ms for 4 megapixels here, and a 36-megapixel
# scan held it for seconds under load. Larger PNGs go to Pillow's decoder, which releases it.
SPNG_MAX_PIXELS = 2048 * 2048
# Where Pillow finds a PNG's EXIF orientation (Image.getexif): an eXIf chunk, or a text chunk under one of these
# keywords (ImageMagick writes the EXIF block as a hex "raw profile"; XMP carries tiff:Orientation).
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_ORIENTATION_KEYWORDS = (b"exif\0", b"Raw profile type exif\0", b"XML:com.adobe.xmp\0")
_PNG_CHUNK_HEADER = struct.Struct(">I4s")  # a chunk's data length and its type; its data and a CRC follow


class ImageError(ValueError):
    """The upload is not an image this service can classify; `code` names why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class EncodedImage:
    """An upload whose header has been read and checked; its pixels are not decoded yet."""

    data: bytes
    header: Image.Image  # Pillow's handle: format, mode and size known, decoding deferred

    @property
    def for_libspng(self) -> bool:
        """An 8-bit RGB or RGBA PNG of at most SPNG_MAX_PIXELS whose orientation, if it has one, Pillow has read
        with its header: what libspng decodes for us.

        The IHDR chunk comes first in every PNG (Pillow has checked that): bit depth at
        byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA). Pillow reads the chunks before the pixels when it
        opens a file and those after them only when it decodes, so a PNG that says how it is turned after its
        pixels is left to Pillow.
        """
        width, height = self.header.size
        return (self.header.format == "PNG" and self.data[24] == 8 and self.data[25] in (2, 6)
                and width * height <= SPNG_MAX_PIXELS and not _png_orientation_after_pixels(self.data))


def _png_orientation_after_pixels(data: bytes) -> bool:
    """Whether a chunk Pillow would read an EXIF orientation from follows this PNG's first pixel data (IDAT).

    Walks the chunk headers (a photo has about one chunk per 8 KB of pixels): 20 µs for a 630 KB photo, where
    searching its bytes for "eXIf" took 0.3 ms. The walk ends at IEND, or where the data does: a truncated or
    broken file, which libspng refuses as Pillow would.
    """
    position, pixels_seen = 8, False  # after the PNG signature
    while position + _PNG_CHUNK_HEADER.size <= len(data):
        length, kind = _PNG_CHUNK_HEADER.unpack_from(data, position)
        if kind == b"IEND":
            return False
        pixels_seen = pixels_seen or kind == b"IDAT"
        if pixels_seen and _png_chunk_may_carry_orientation(data, position, kind):
            return True
        position += _PNG_CHUNK_HEADER.size + length + 4  # the header, the data, the CRC
    return False


def _png_chunk_may_carry_orientation(data: bytes, position: int, kind: bytes) -> bool:
    """Whether the chunk at `position` is one Pillow reads an EXIF orientation from."""
    return kind == b"eXIf" or (kind in _PNG_TEXT_CHUNKS
                               and data.startswith(_PNG_ORIENTATION_KEYWORDS, position + _PNG_CHUNK_HEADER.size))


def read_header(data: bytes, max_pixels: int) -> EncodedImage:
    """Identify the upload and refuse oversized images, without decoding any pixels."""
    if not data:
        raise ImageError("empty_image", "the uploaded file is empty")
    try:
        with warnings.catch_warnings(), _undecodable_as_image_error():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                header = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            except UnidentifiedImageError:
                _refuse_other_formats(data)
                raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard, which fires for headers far beyond its default limit
        raise ImageError("image_too_large", f"image is larger than the limit of {max_pixels} pixels") from None
    width, height = header.size
    if width * height > max_pixels:
        raise ImageError("image_too_large", f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    return EncodedImage(data, header)


def _refuse_other_formats(data: bytes) -> None:
    """415 for an image in a format Pillow knows but this service does not accept (its header is only read)."""
    try:
        other = Image.open(io.BytesIO(data)).format
    except Exception:  # not an image at all: the caller's invalid_image
        return
    raise ImageError("unsupported_format", f"{other} images are not accepted; send one of "
                     f"{', '.join(ACCEPTED_FORMATS)}")


def decode(encoded: EncodedImage, min_side: int = 0) -> Image.Image:
    """Decode checked pixels into an upright RGB image.

    With min_side, a JPEG is decoded at a reduced scale (libjpeg scales by 1/2, 1/4
    or 1/8 while decoding) as long as both sides stay at least min_side: a 1920x1280
    photo decodes about 5x faster, and the model sees it resized far below that anyway.
    Plain PNGs up to 4 megapixels go to libspng, which gives Pillow's pixels 1.5-5x faster (docs/performance.md
    "Levers measured").
    """
    with _undecodable_as_image_error():
        if encoded.for_libspng:
            image = Image.fromarray(pyspng.load(encoded.data))
            image.info.update(encoded.header.info)  # what Pillow read before the pixels: EXIF and XMP among it
            return _to_rgb(_upright(image))
        image = encoded.header
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
    return _to_rgb(_upright(image))


def decode_image(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Upload bytes to an upright RGB image: read_header, then decode."""
    return decode(read_header(data, max_pixels), min_side)


@contextmanager
def _undecodable_as_image_error() -> Iterator[None]:
    try:
        yield
    except ImageError:  # already says why (a ValueError, which the last clause would rewrap)
        raise
    except UnidentifiedImageError:
        raise ImageError("invalid_image", "the uploaded file is not an image format Pillow can read") from None
    # RuntimeError: libspng's, for truncated or corrupt PNG data
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        raise ImageError("invalid_image", f"the image could not be decoded: {exc}") from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as phone photos need; a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the (usual) upright image
    except Exception as exc:  # Pillow raises many kinds on malformed EXIF
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Scale 16-bit samples into 8 bits; a plain convert would clip them to white.
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        # Transparent pixels often hide arbitrary colours; show them on white, as a viewer would.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_to_model(image: Image.Image, resize_size: int, input_size: int) -> np.ndarray:
    """Resize the shorter side to resize_size and center-crop input_size: uint8 HWC.

    The crop is cut from the original first and only that region is resampled,
    which gives torchvision's resize-then-crop result without ever building the
    resized whole (a 10000x1 strip would otherwise become 2.5 gigapixels).
    """
    width, height = image.size
    short = min(width, height)
    # Size of the resized image as torchvision computes it: the long side is truncated.
    resized_w = resize_size if width == short else int(resize_size * width / short)
    resized_h = resize_size if height == short else int(resize_size * height / short)
    left = int(round((resized_w - input_size) / 2.0))
    top = int(round((resized_h - input_size) / 2.0))
    x_scale, y_scale = width / resized_w, height / resized_h
    box = (left * x_scale, top * y_scale, (left + input_size) * x_scale, (top + input_size) * y_scale)
    cropped = image.resize((input_size, input_size), RESIZE_FILTER, box=box)
    return np.asarray(cropped, dtype=np.uint8)


def prepare(data: bytes, resize_size: int, input_size: int, max_pixels: int) -> np.ndarray:
    """Upload bytes to the uint8 HWC crop the model takes."""
    return fit_to_model(decode_image(data, max_pixels, min_side=resize_size), resize_size, input_size)
