"""Finding faces in a photo, kept apart from the keypoint model.

One interface: :func:`detect_faces` takes an 8-bit BGR (or gray) picture and returns
:class:`Detection` s -- a box, a score and five landmarks (eye centres, nose tip, mouth corners)
named like the Kaggle keypoints -- in that picture's continuous pixel coordinates, largest
first. The detector behind it is YuNet (:mod:`fkp.serving.detect.yunet`), whose weights are
compiled into the ``yuface`` wheel: nothing is downloaded at run time. Alignment
(:mod:`fkp.serving.align`) uses only this interface, so another detector can replace it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: The detector's five landmarks, in the order of :attr:`Detection.landmarks`, by Kaggle name
#: (subject's left: ``left_eye_center`` is on the image's right).
LANDMARK_NAMES: tuple[str, ...] = (
    "right_eye_center",
    "left_eye_center",
    "nose_tip",
    "mouth_right_corner",
    "mouth_left_corner",
)

#: Where YuNet puts its landmarks (:data:`LANDMARK_NAMES` order) on a face that sits in its 96x96
#: frame like a Kaggle training face: the mean over 2,545 real training-format faces of 209 people,
#: measured by ``python -m benchmarks.detector_template``. Photos are framed by fitting the
#: landmarks onto these, not onto the Kaggle mean keypoints of the same names: YuNet's eye centres
#: sit ~3 px closer together and its nose tip ~5 px higher than the labels put them, so that fit
#: framed real photo faces 8 % too tight (their keypoints 3.6 px RMS from where the training faces'
#: framing puts them; 2.5 px and scale x1.007 with this template, on 522 labelled photos).
LANDMARK_TEMPLATE = np.array(
    [
        [31.51, 37.47],
        [63.56, 37.20],
        [47.81, 57.35],
        [34.63, 73.67],
        [60.86, 73.39],
    ]
)

#: Pictures are shrunk to at most this many pixels per side for detection: YuNet's time grows
#: with the pixel count, and a face it can find at this size (from ~12 px) is big enough to frame.
DETECT_MAX_SIDE = 640

#: ... and to about this many pixels. A 4:3 photo is looked at as 604x453 instead of 640x480,
#: which YuNet searches in 29 ms of CPU instead of 32. The copies of 3:2 and 16:9 photos (640x427,
#: 640x360) are within it, so they are searched as before: a limit of 640x360 pixels lost 8 of
#: the 177 small faces found in the 3000x2000 benchmark photos.
DETECT_MAX_PIXELS = 604 * 453


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in photo pixels (``x, y`` = top-left corner)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return self.w * self.h

    def scaled(self, fx: float, fy: float | None = None) -> Box:
        """The same box in a photo resized by ``fx`` along x and ``fy`` (default ``fx``) along y."""
        fy = fx if fy is None else fy
        return Box(self.x * fx, self.y * fy, self.w * fx, self.h * fy)


@dataclass(frozen=True)
class Detection:
    """One face: its box, the detector's confidence (0..1) and (5, 2) landmarks (:data:`LANDMARK_NAMES`)."""

    box: Box
    score: float
    landmarks: np.ndarray

    def scaled(self, fx: float, fy: float | None = None) -> Detection:
        """The same face in a picture resized by ``fx`` along x and ``fy`` (default ``fx``) along y."""
        fy = fx if fy is None else fy
        return Detection(self.box.scaled(fx, fy), self.score, self.landmarks * (fx, fy))


def detection_factor(width: int, height: int, *, max_side: int, max_pixels: int) -> float:
    """How much a ``width`` x ``height`` picture is shrunk for the detector (1.0: not at all).

    The copy's longer side is then at most ``max_side`` and its pixel count at most
    ``max_pixels``, give or take the rounding of each side.
    """
    return min(1.0, max_side / max(width, height), math.sqrt(max_pixels / (width * height)))


def detect_faces(
    image: np.ndarray, *, max_side: int = DETECT_MAX_SIDE, max_pixels: int = DETECT_MAX_PIXELS
) -> list[Detection]:
    """The faces of an 8-bit gray or BGR picture in its own pixel coordinates, largest first.

    A picture with a side over ``max_side`` or more than ``max_pixels`` pixels is shrunk for the
    detector (:func:`detection_factor`) and the detections scaled back.
    """
    from fkp.serving.detect import yunet

    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
    height, width = bgr.shape[:2]
    factor = detection_factor(width, height, max_side=max_side, max_pixels=max_pixels)
    if factor < 1.0:
        # A picture within max_side is shrunk by the pixel limit alone, by at most 1.22x: bilinear
        # is as good there, and OpenCV's area averaging took 3 ms of CPU (and its second thread)
        # for 640x480 -> 604x453 against 0.8 ms. Larger pictures are averaged, as before.
        interpolation = cv2.INTER_LINEAR if max(width, height) <= max_side else cv2.INTER_AREA
        bgr = cv2.resize(bgr, None, fx=factor, fy=factor, interpolation=interpolation)
    found = [d.scaled(1.0 / factor) for d in yunet.detect(np.ascontiguousarray(bgr))]
    return sorted(found, key=lambda d: d.box.area, reverse=True)
