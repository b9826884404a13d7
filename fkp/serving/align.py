"""Framing a face like the Kaggle training faces: a similarity transform onto the mean face.

The detector's landmarks (eye centres, nose tip, mouth corners) are matched to where that
detector marks a face framed like the training faces (its template,
:data:`fkp.serving.detect.LANDMARK_TEMPLATE`) by the least-squares similarity (scale, in-plane
rotation, shift). That transform fixes the 96x96 crop -- a square of the photo, turned with the
face -- and maps the predicted keypoints back through its inverse.

Coordinates are continuous pixel coordinates, as everywhere in fkp: the centre of pixel
column ``i`` is at ``x = i + 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fkp.core.keypoints import IMAGE_SIZE, MEAN_KEYPOINTS, PIXEL_CENTER
from fkp.core.reframe import similarity


@dataclass(frozen=True)
class FaceCrop:
    """The square of the photo that becomes the 96x96 model input.

    ``x0, y0`` is the photo point on the crop's top-left corner, ``size`` its side in photo
    pixels, ``angle`` how far its x axis is turned from the photo's (degrees, clockwise on the
    screen). It may reach past the photo's edges (filled by repeating the edge pixels).
    """

    x0: float
    y0: float
    size: float
    angle: float = 0.0

    @property
    def scale(self) -> float:
        """Photo pixels per model-input pixel."""
        return self.size / IMAGE_SIZE

    def _rotation(self) -> np.ndarray:
        a = math.radians(self.angle)
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def to_photo(self, coords: np.ndarray) -> np.ndarray:
        """Model-input coordinates (e.g. the model's 30 outputs) -> photo coordinates."""
        coords = np.asarray(coords, dtype=np.float64)
        points = coords.reshape(*coords.shape[:-1], -1, 2)
        out = points @ (self.scale * self._rotation()).T + (self.x0, self.y0)
        return out.reshape(coords.shape)

    def to_crop(self, coords: np.ndarray) -> np.ndarray:
        """Photo coordinates -> model-input coordinates; ``coords`` interleaves x, y (..., 2k)."""
        coords = np.asarray(coords, dtype=np.float64)
        points = coords.reshape(*coords.shape[:-1], -1, 2) - (self.x0, self.y0)
        out = points @ self._rotation() / self.scale  # R^-1 = R^T, applied to row vectors
        return out.reshape(coords.shape)


def fit_crop(landmarks: np.ndarray, reference: np.ndarray) -> FaceCrop:
    """The crop whose least-squares similarity puts ``landmarks`` (photo, (n, 2)) on ``reference``.

    ``reference`` holds the same n points' positions in the 96x96 frame: the Kaggle mean face
    (:data:`fkp.core.keypoints.MEAN_FACE`) for Kaggle keypoints, the detector's template
    (:data:`fkp.serving.detect.LANDMARK_TEMPLATE`) for its landmarks. Points as complex numbers:
    the photo point of a crop point ``q`` is ``a * q + t`` with ``a = scale * e^(i angle)``.
    """
    photo = np.asarray(landmarks, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    (a,), (t,) = similarity(photo[None], ref)
    return FaceCrop(float(t.real), float(t.imag), float(abs(a)) * IMAGE_SIZE, math.degrees(np.angle(a)))


#: How far a framing by predicted keypoints may stray from the crop they were predicted on:
#: centre shift (fraction of the side), size ratio, turn (degrees). On real photos it moves a few
#: model pixels; a model that predicts nonsense (collapsed or scattered points) would send the
#: crop off the face, so such a framing is refused.
MAX_REFRAME = (0.3, 1.5, 30.0)


def fit_keypoints(coords: np.ndarray, previous: FaceCrop) -> FaceCrop | None:
    """The crop that puts 30 keypoint coordinates predicted on ``previous`` (photo pixels) on the mean face.

    ``None`` when that crop strays further from ``previous`` than :data:`MAX_REFRAME` allows.
    """
    crop = fit_crop(np.asarray(coords, dtype=np.float64).reshape(-1, 2), MEAN_KEYPOINTS)
    shift, ratio, turn = MAX_REFRAME
    centre = np.array([IMAGE_SIZE / 2, IMAGE_SIZE / 2])
    moved = np.linalg.norm(crop.to_photo(centre) - previous.to_photo(centre)) / previous.size
    turned = abs((crop.angle - previous.angle + 180.0) % 360.0 - 180.0)
    if moved > shift or not 1 / ratio <= crop.size / previous.size <= ratio or turned > turn:
        return None
    return crop


def extract_crop(
    gray: np.ndarray,
    crop: FaceCrop,
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Cut ``crop`` out of a gray picture as a (96, 96) uint8 model input.

    The picture may be a reduced copy of the photo: its pixel coordinates are photo coordinates
    times ``scale`` (x, y) plus ``offset``. A region much finer than the crop is first shrunk
    with area averaging, so a big face is not aliased by the warp's sampling.
    """
    sx, sy = scale
    ox, oy = offset
    shrink = crop.scale * min(sx, sy)  # picture pixels per model pixel
    if shrink > 1.5:
        square = np.array([0, 0, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE, IMAGE_SIZE], dtype=np.float64)
        corners = crop.to_photo(square).reshape(4, 2) * (sx, sy) + (ox, oy)
        h, w = gray.shape
        x0, y0 = (max(0, min(n, math.floor(v) - 2)) for v, n in zip(corners.min(axis=0), (w, h), strict=True))
        x1, y1 = (max(0, min(n, math.ceil(v) + 2)) for v, n in zip(corners.max(axis=0), (w, h), strict=True))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            nw, nh = max(1, round((x1 - x0) / shrink)), max(1, round((y1 - y0) / shrink))
            small = cv2.resize(gray[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_AREA)
            kx, ky = nw / (x1 - x0), nh / (y1 - y0)
            return extract_crop(small, crop, (sx * kx, sy * ky), ((ox - x0) * kx, (oy - y0) * ky))
    # picture point u = S p + o  ->  crop point q = A (p - origin) = A S^-1 (u - o) - A origin
    a = crop._rotation().T / crop.scale @ np.diag([1 / sx, 1 / sy])
    b = -a @ np.array([ox, oy]) - crop._rotation().T / crop.scale @ np.array([crop.x0, crop.y0])
    b = b + a @ np.array([PIXEL_CENTER, PIXEL_CENTER]) - PIXEL_CENTER  # continuous -> pixel indices
    matrix = np.hstack([a, b[:, None]])
    return cv2.warpAffine(
        gray, matrix, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
