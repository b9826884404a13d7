"""An uploaded photo -> the faces in it -> their keypoints in photo pixels.

The same steps as ``fkp predict photo.jpg`` (:mod:`fkp.serving.photos`): faces found and
framed on the Kaggle mean face, cut out at 96x96, predicted and mapped back. A 96x96 image
is taken to be such a crop already and goes to the model as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from fkp.core.keypoints import IMAGE_SIZE
from fkp.serving.photos import Box, FaceCrop, face_inputs, face_record, find_faces
from fkp.serving.picture import Decoded

_NO_INPUTS = np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)

#: ``f(uint8 (n, 96, 96)) -> (n, 30)`` model-input coordinates.
Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PhotoFaces:
    """Where the model will look: one (box, crop) per face, largest first, and their model inputs."""

    faces: list[tuple[Box, FaceCrop]]
    inputs: np.ndarray  # (len(faces), 96, 96) uint8
    detected: int  # faces the detector found (may exceed len(faces))
    is_crop: bool  # the image itself is a 96x96 model input


def locate_faces(data: bytes, decoded: Decoded, max_faces: int) -> PhotoFaces:
    """The up to ``max_faces`` largest faces of an encoded photo; a 96x96 image is one face as it is.

    ``decoded`` is the photo's :func:`fkp.serving.photos.decode_for_detection`.
    """
    if decoded.photo_size == (IMAGE_SIZE, IMAGE_SIZE):
        whole = Box(0.0, 0.0, float(IMAGE_SIZE), float(IMAGE_SIZE))
        pixels = cv2.cvtColor(decoded.pixels, cv2.COLOR_BGR2GRAY)
        return PhotoFaces([(whole, FaceCrop(0.0, 0.0, float(IMAGE_SIZE)))], pixels[None], 1, True)
    found = find_faces(decoded)
    kept = found.faces[:max_faces]
    inputs = face_inputs(data, found, [f.crop for f in kept]) if kept else _NO_INPUTS
    return PhotoFaces([(f.detection.box, f.crop) for f in kept], inputs, len(found.faces), False)


def face_keypoints(located: PhotoFaces, predict: Predict) -> list[dict[str, Any]]:
    """One :func:`fkp.serving.photos.face_record` per face, all faces predicted as one batch."""
    if not located.faces:
        return []
    coords = predict(located.inputs)
    return [
        face_record(box, crop, crop.to_photo(c)) for (box, crop), c in zip(located.faces, coords, strict=True)
    ]
