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

#: Photos up to this many pixels per side (a webcam's or a phone preview's 640x480) are searched
#: at up to :data:`SMALL_PHOTO_PIXELS`: YuNet's time grows with the pixel count, and such a
#: photo's faces are found (from ~12 px) at that size.
SMALL_PHOTO_SIDE = 640

#: A 4:3 photo of :data:`SMALL_PHOTO_SIDE` is looked at as 604x453 instead of 640x480, which YuNet
#: searches in 29 ms of CPU instead of 32.
SMALL_PHOTO_PIXELS = 604 * 453

#: Larger photos are shrunk to at most this many pixels per side for detection, and to at most
#: :data:`DETECT_MAX_PIXELS`: group photos are where faces are small. On a 640 px copy, 10 faces
#: 25-90 px between the outer eyes in a 3000x2000 photo were found 86 % of the time (200 faces of
#: held-out people), on a 960 px one 97 % (800 px: 93.5 %, 1280 px: 98.5 %); 6 faces 25-70 px
#: apart in 1920x1080, 95.0 -> 99.2 %. The price is ~2.2x the pixels to search in such photos.
DETECT_MAX_SIDE = 960

#: ... and this many pixels: a 3:2 photo's copy is 960x640, a 4:3 one's 905x679.
DETECT_MAX_PIXELS = 960 * 640


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


def detection_factor(width: int, height: int) -> float:
    """How much a ``width`` x ``height`` picture is shrunk for the detector (1.0: not at all).

    Up to :data:`SMALL_PHOTO_SIDE` per side, to at most :data:`SMALL_PHOTO_PIXELS` pixels; larger
    pictures to at most :data:`DETECT_MAX_SIDE` per side and :data:`DETECT_MAX_PIXELS` pixels,
    give or take the rounding of each side. The shape is kept.
    """
    if max(width, height) <= SMALL_PHOTO_SIDE:
        return min(1.0, math.sqrt(SMALL_PHOTO_PIXELS / (width * height)))
    return min(1.0, DETECT_MAX_SIDE / max(width, height), math.sqrt(DETECT_MAX_PIXELS / (width * height)))


def detect_faces(image: np.ndarray, *, factor: float | None = None) -> list[Detection]:
    """The faces of an 8-bit gray or BGR picture in its own pixel coordinates, largest first.

    The detector searches a copy shrunk by ``factor`` (default: :func:`detection_factor` of the
    picture's size); the detections are scaled back.
    """
    from fkp.serving.detect import yunet

    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
    height, width = bgr.shape[:2]
    factor = detection_factor(width, height) if factor is None else factor
    if factor < 1.0:
        # A picture within SMALL_PHOTO_SIDE is shrunk by at most 1.22x: bilinear is as good there,
        # and OpenCV's area averaging took 3 ms of CPU (and its second thread) for 640x480 ->
        # 604x453 against 0.8 ms. Larger pictures are averaged.
        interpolation = cv2.INTER_LINEAR if max(width, height) <= SMALL_PHOTO_SIDE else cv2.INTER_AREA
        bgr = cv2.resize(bgr, None, fx=factor, fy=factor, interpolation=interpolation)
    found = [d.scaled(1.0 / factor) for d in yunet.detect(np.ascontiguousarray(bgr))]
    return sorted(found, key=lambda d: d.box.area, reverse=True)
