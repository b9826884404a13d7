"""Refuse an image whose declared size is too big, before a single pixel is decoded.

A PNG or JPEG of a few hundred KB can declare 30000x30000 pixels and take gigabytes to decode
(a decompression bomb). Pillow's ``Image.open`` reads only the header, so the pixel count is
known from the first bytes of the file; decoding happens elsewhere, and only after this check.
:func:`read_image_header` is the one reader, for files (``fkp predict`` photos) and uploaded
bytes (``fkp serve``); each caller turns its errors into its own kind of refusal.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from fkp.errors import DataError

#: default limit on width x height of a photo: 50 Mpx, above any phone camera's picture
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares: Pillow's format name and the size in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def describe(self) -> str:
        return f"{self.width}x{self.height} = {self.pixels:,} pixels"


class NotAnImage(ValueError):
    """The bytes are not an image Pillow can identify."""


#: Pillow's bomb limit is a module global; readers lift it one at a time (server threads read concurrently)
_PILLOW_LIMIT = threading.Lock()


def read_image_header(source: str | os.PathLike[str] | bytes) -> ImageHeader:
    """The header of an image file or of its bytes, however large it claims to be; else :class:`NotAnImage`.

    Pillow's own decompression-bomb limit is lifted while the header is read, so the declared
    size is known even for absurd claims; the caller applies its own limit before decoding.
    """
    from PIL import Image, UnidentifiedImageError

    opened = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(opened) as image:
                return ImageHeader(str(image.format), *image.size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise NotAnImage("not an image") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_pixel_count(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image whose header declares at most ``max_pixels``; else :class:`DataError`."""
    try:
        header = read_image_header(path)
    except NotAnImage:
        raise DataError(
            "cannot read as an image (expected a PNG, JPEG or other common format)", file=path
        ) from None
    if header.pixels > max_pixels:
        raise DataError(
            f"image is {header.describe()}, above the limit of {max_pixels:,} "
            "(shrink it, or raise limits.photo_max_pixels in params.yaml)",
            file=path,
        )
    return header.width, header.height
