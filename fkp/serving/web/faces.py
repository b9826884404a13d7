"""A decoded photo -> the faces in it -> their keypoints in photo pixels.

The same steps as ``fkp predict photo.jpg`` (:mod:`fkp.serving.photos`): OpenCV's Haar cascade
finds faces, each is framed like a Kaggle image, cut out at 96x96, predicted and mapped
back. A 96x96 image is taken to be such a crop already and goes to the model as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fkp.core.keypoints import IMAGE_SIZE
from fkp.serving.photos import Box, FaceCrop, crop_for_face, detect_faces, extract_crop, face_record

#: ``f(uint8 (n, 96, 96)) -> (n, 30)`` model-input coordinates.
Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FoundFaces:
    """Where the model will look: one (box, crop) per face, largest first."""

    faces: list[tuple[Box, FaceCrop]]
    detected: int  # faces the detector found (may exceed len(faces))
    is_crop: bool  # the image itself is a 96x96 model input


def find_faces(gray: np.ndarray, max_faces: int) -> FoundFaces:
    """The up to ``max_faces`` largest faces of a gray photo; a 96x96 image is one face as is."""
    if gray.shape == (IMAGE_SIZE, IMAGE_SIZE):
        whole = Box(0.0, 0.0, float(IMAGE_SIZE), float(IMAGE_SIZE))
        return FoundFaces([(whole, FaceCrop(0, 0, IMAGE_SIZE))], 1, True)
    boxes = detect_faces(gray)
    return FoundFaces([(box, crop_for_face(box)) for box in boxes[:max_faces]], len(boxes), False)


def face_keypoints(gray: np.ndarray, found: FoundFaces, predict: Predict) -> list[dict[str, Any]]:
    """One :func:`fkp.serving.photos.face_record` per face, all faces predicted as one batch."""
    if not found.faces:
        return []
    crops = np.stack([extract_crop(gray, crop) for _, crop in found.faces])
    coords = predict(crops)
    return [
        face_record(box, crop, crop.to_photo(c)) for (box, crop), c in zip(found.faces, coords, strict=True)
    ]
