"""What an upload may be: a JPEG or PNG within a byte and a pixel budget.

The pixel count comes from the image header (:mod:`fkp.safety.image_header`, the reader
``fkp predict`` uses too), so a "decompression bomb" -- a few kilobytes that decode to
gigabytes -- is refused before a single pixel is decoded. Every refusal is a
:class:`RequestError`: an HTTP status, a short machine code and a one-line message saying
what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from fkp.safety.image_header import ImageHeader, NotAnImage, read_image_header

#: Formats accepted, as Pillow names them. MPO is the JPEG that phones write with a second picture
#: (depth map, preview) appended: the first picture is an ordinary JPEG, which is what is decoded,
#: as ``fkp predict`` decodes the same file.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG")


class RequestError(Exception):
    """A request the API refuses: answered as ``{"error": {"code", "message"}}`` with ``status``.

    ``close``: the answer says ``Connection: close``, so the server drops the connection at once
    (an unread body would otherwise keep it open until uvicorn's keep-alive timeout).
    """

    def __init__(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


@dataclass(frozen=True)
class Limits:
    """Upload limits of one server (``fkp serve --max-body-mb/--max-megapixels/--max-faces/--body-timeout``).

    ``body_timeout_s``: seconds an upload may send nothing before it is answered 408, and seconds a
    request's headers may take before the connection is closed (uvicorn has neither timeout).
    """

    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_faces: int = 10
    body_timeout_s: float = 10.0


def read_header(data: bytes, limits: Limits) -> ImageHeader:
    """Format and size of an uploaded image from its header alone; refuses what breaks ``limits``."""
    if not data:
        raise RequestError(400, "empty_body", "the request has no image: send a JPEG or PNG photo")
    try:
        header = read_image_header(data)
    except NotAnImage:
        raise RequestError(
            415, "unsupported_image", "the body is not a JPEG or PNG image: send a .jpg or .png photo"
        ) from None
    if header.pixels > limits.max_pixels:
        raise RequestError(
            413,
            "too_many_pixels",
            f"the image has {header.describe()}; the limit is {limits.max_pixels / 1e6:g} megapixels: "
            "send a smaller one",
        )
    if header.format not in ACCEPTED_FORMATS:
        raise RequestError(
            415,
            "unsupported_image",
            f"the image is {header.format}, not JPEG or PNG: convert it to .jpg or .png",
        )
    return header


def stalled(limits: Limits) -> RequestError:
    """The refusal of an upload that sent nothing for ``limits.body_timeout_s`` seconds."""
    return RequestError(
        408,
        "upload_stalled",
        f"the upload sent nothing for {limits.body_timeout_s:g} s: send the photo again",
        close=True,
    )


def too_large(limits: Limits) -> RequestError:
    """The refusal of a body over ``limits.max_body_bytes``."""
    mb = limits.max_body_bytes / (1024 * 1024)
    return RequestError(413, "body_too_large", f"the request body is over {mb:g} MB: send a smaller photo")
