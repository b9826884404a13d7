"""An uploaded photo -> the faces in it -> their keypoints in photo pixels.

The same steps as ``fkp predict photo.jpg`` (:mod:`fkp.serving.photos`): faces found and
framed by the detector's landmarks, cut out at 96x96, predicted and framed again
(:func:`fkp.serving.photos.predict_faces`), mapped back. A 96x96 image is taken to be such a
crop already and goes to the model as it is, once (with the model's second look at a face it
finds framed far off, :mod:`fkp.core.reframe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fkp.core.keypoints import IMAGE_SIZE
from fkp.serving.photos import (
    Box,
    FaceCrop,
    FaceCutter,
    Predict,
    face_record,
    find_faces,
    predict_faces,
)
from fkp.serving.picture import Decoded


@dataclass(frozen=True)
class PhotoFaces:
    """Where the model will look: one (box, crop) per face, largest first, and the pixels to cut them from."""

    faces: list[tuple[Box, FaceCrop]]
    passes: list[int]  # framing passes per face (:func:`fkp.serving.photos.predict_faces`)
    cutter: FaceCutter
    detected: int  # faces the detector found (may exceed len(faces))
    is_crop: bool  # the image itself is a 96x96 model input


def locate_faces(data: bytes, decoded: Decoded, max_faces: int) -> PhotoFaces:
    """The up to ``max_faces`` largest faces of an encoded photo; a 96x96 image is one face as it is.

    ``decoded`` is the photo's :func:`fkp.serving.photos.decode_for_detection`.
    """
    cutter = FaceCutter(data, decoded)
    if decoded.photo_size == (IMAGE_SIZE, IMAGE_SIZE):
        whole = Box(0.0, 0.0, float(IMAGE_SIZE), float(IMAGE_SIZE))
        return PhotoFaces([(whole, FaceCrop(0.0, 0.0, float(IMAGE_SIZE)))], [1], cutter, 1, True)
    found = find_faces(decoded)
    kept = found.faces[:max_faces]
    faces = [(f.detection.box, f.crop) for f in kept]
    return PhotoFaces(faces, [f.passes for f in kept], cutter, len(found.faces), False)


def face_keypoints(located: PhotoFaces, predict: Predict) -> list[dict[str, Any]]:
    """One :func:`fkp.serving.photos.face_record` per face, all faces predicted as one batch a pass."""
    crops = [crop for _, crop in located.faces]
    final = predict_faces(located.cutter, crops, predict, located.passes)
    boxes = [box for box, _ in located.faces]
    return [face_record(box, crop, coords) for box, (crop, coords) in zip(boxes, final, strict=True)]
