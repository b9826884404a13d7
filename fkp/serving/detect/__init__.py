"""Finding faces in a photo, kept apart from the keypoint model.

One interface: :func:`detect_faces` takes an 8-bit BGR (or gray) picture and returns
:class:`Detection` s -- a box, a score and five landmarks (eye centres, nose tip, mouth corners)
named like the Kaggle keypoints -- in that picture's continuous pixel coordinates, largest
first. The detector behind it is YuNet (:mod:`fkp.serving.detect.yunet`), whose weights are
compiled into the ``yuface`` wheel: nothing is downloaded at run time. Alignment
(:mod:`fkp.serving.align`) uses only this interface, so another detector can replace it.
"""

from __future__ import annotations

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


def detect_faces(image: np.ndarray, *, max_side: int = DETECT_MAX_SIDE) -> list[Detection]:
    """The faces of an 8-bit gray or BGR picture in its own pixel coordinates, largest first.

    A picture larger than ``max_side`` is shrunk for the detector and the detections scaled back.
    """
    from fkp.serving.detect import yunet

    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
    factor = min(1.0, max_side / max(bgr.shape[:2]))
    if factor < 1.0:
        bgr = cv2.resize(bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    found = [d.scaled(1.0 / factor) for d in yunet.detect(np.ascontiguousarray(bgr))]
    return sorted(found, key=lambda d: d.box.area, reverse=True)
