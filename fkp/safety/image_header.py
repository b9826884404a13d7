"""Refuse an image whose declared size is too big, before a single pixel is decoded.

A PNG or JPEG of a few hundred KB can declare 30000x30000 pixels and take gigabytes to decode
(a decompression bomb). Pillow's ``Image.open`` reads only the header, so the pixel count is
known from the first bytes of the file; decoding happens elsewhere, and only after this check.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from fkp.errors import DataError

#: default limit on width x height of a photo: 50 Mpx, above any phone camera's picture
DEFAULT_MAX_PIXELS = 50_000_000


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) declared in the header of an image file; :class:`DataError` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the limit is checked here
        try:
            with Image.open(path) as image:
                return image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise DataError(
                "cannot read as an image (expected a PNG, JPEG or other common format)", file=path
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_pixel_count(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image whose header declares at most ``max_pixels``; else :class:`DataError`."""
    width, height = image_size(path)
    if width * height > max_pixels:
        raise DataError(
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(shrink it, or raise limits.photo_max_pixels in params.yaml)",
            file=path,
        )
    return width, height
