"""Keypoints for ordinary photos: find the faces, frame each like a Kaggle image, predict, map back.

YuNet (:mod:`fkp.serving.detect`) finds the faces and five landmarks each on a copy of at most
``DETECT_MAX_SIDE`` pixels; each face's landmarks fix the similarity transform onto the detector's
template (:mod:`fkp.serving.align`), which cuts the 96x96 gray model input out of a decode just
fine enough for it (:mod:`fkp.serving.picture`) and maps the predicted keypoints back into the
photo; the model's own keypoints then frame each face again for a second prediction
(:func:`predict_faces`). ``fkp predict photo.jpg`` and ``fkp serve`` both go through
:func:`find_faces` and :func:`predict_faces`.

Coordinates are continuous pixel coordinates, as everywhere in fkp: the photo spans
``0..width`` and ``0..height``; the centre of pixel column ``i`` is at ``x = i + 0.5``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fkp.atomic import write_bytes, write_text
from fkp.core.keypoints import KEYPOINT_NAMES
from fkp.errors import DataError
from fkp.safety.image_header import DEFAULT_MAX_PIXELS, check_pixel_count
from fkp.serving.align import FaceCrop, extract_crop, fit_crop, fit_keypoints
from fkp.serving.detect import (
    DETECT_MAX_SIDE,
    LANDMARK_TEMPLATE,
    Box,
    Detection,
    detect_faces,
    detection_factor,
)
from fkp.serving.picture import Decoded, UndecodableImage, decode

__all__ = ["Box", "DETECT_MAX_SIDE", "FaceCrop", "detect_faces", "extract_crop"]


class NoFaceFoundError(DataError):
    """The face detector found no face in a photo."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        super().__init__("no face found", file=path)

    def _format(self) -> str:
        return f"no face found in {self.file}"


#: Framing passes per face: the first framed by the detector's landmarks, each further one by the
#: keypoints the model predicted on the one before (:func:`predict_faces`).
FRAMING_PASSES = 2

#: A face whose landmarks were found on a copy shrunk for the detector to fewer than this many
#: pixels per model-input pixel gets one framing pass more: a small face in a big photo, its
#: landmarks whole pixels of a copy several times smaller, framed too coarsely for two passes to
#: settle. On held-out people, 10 faces in 3000x2000 searched at 640 px: NME 0.0461 after two
#: passes, 0.0417 with this third; searched at 960 px (now), 0.0390 and 0.0389: it stays for
#: photos larger than that, whose copy is coarser. Above this scale a third pass gained nothing.
COARSE_LANDMARKS = 0.35


@dataclass(frozen=True)
class FoundFace:
    """One detected face (photo coordinates), the square that frames it first, and its framing passes."""

    detection: Detection
    crop: FaceCrop
    passes: int = FRAMING_PASSES


@dataclass(frozen=True)
class FoundFaces:
    """The faces of one photo, largest first, and the decode they were found on."""

    faces: list[FoundFace]
    decoded: Decoded

    @property
    def photo_size(self) -> tuple[int, int]:
        return self.decoded.photo_size


def to_gray(image: np.ndarray) -> np.ndarray:
    """8-bit gray from a gray, BGR or BGRA image."""
    if image.ndim == 2:
        return image
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def decode_for_detection(data: bytes) -> Decoded:
    """The photo decoded only as finely as the detector looks (JPEG: straight at a reduced size).

    Raises :class:`fkp.serving.picture.UndecodableImage` for pixels that cannot be decoded.
    """
    return decode(data, "RGB", max_side=DETECT_MAX_SIDE)


def find_faces(decoded: Decoded) -> FoundFaces:
    """Every face of a photo (its :func:`decode_for_detection`), largest first, framed by its landmarks."""
    sx, sy = decoded.scale
    height, width = decoded.pixels.shape[:2]
    shrink = detection_factor(width, height)  # detect_faces' copy of the decode
    landmark_scale = min(sx, sy) * shrink  # detector pixels per photo pixel
    faces = []
    for found in detect_faces(decoded.pixels, factor=shrink):
        detection = found.scaled(1.0 / sx, 1.0 / sy)
        crop = fit_crop(detection.landmarks, LANDMARK_TEMPLATE)
        if crop.size >= 1.0:  # landmarks collapsed onto one point frame nothing
            coarse = landmark_scale < 1.0 and landmark_scale * crop.scale < COARSE_LANDMARKS
            faces.append(FoundFace(detection, crop, FRAMING_PASSES + coarse))
    return FoundFaces(faces, decoded)


#: ``f(uint8 (n, 96, 96)) -> (n, 30)`` model-input coordinates: the keypoint model, one call a batch.
Predict = Callable[[np.ndarray], np.ndarray]


class FaceCutter:
    """Cuts 96x96 model inputs out of one photo, from a decode just fine enough for the smallest crop.

    The detection decode is used while it is fine enough (always, for photos up to
    ``DETECT_MAX_SIDE``); otherwise the photo is decoded again in gray at the scale the smallest
    face needs (model pixels per photo pixel), never finer than the photo itself. That decode is
    kept, so the crops of a later framing pass are cut from it without decoding again.
    """

    def __init__(self, data: bytes, decoded: Decoded) -> None:
        self._data = data
        self._decoded = decoded
        self._gray: np.ndarray | None = None

    def inputs(self, crops: Sequence[FaceCrop]) -> np.ndarray:
        """The (n, 96, 96) uint8 model inputs of ``crops``."""
        need = min(1.0, max(1.0 / crop.scale for crop in crops))
        if min(self._decoded.scale) < need:
            self._decoded, self._gray = decode(self._data, "L", need), None
        if self._gray is None:
            self._gray = to_gray(self._decoded.pixels)
        return np.stack([extract_crop(self._gray, crop, self._decoded.scale) for crop in crops])


def predict_faces(
    cutter: FaceCutter, crops: Sequence[FaceCrop], predict: Predict, passes: Sequence[int]
) -> list[tuple[FaceCrop, np.ndarray]]:
    """Each face's final crop and its 30 keypoint coordinates in photo pixels.

    The first pass predicts on ``crops`` (framed by the detector's five landmarks). Each further
    pass, up to the face's number of ``passes``, frames it again by its 15 predicted keypoints
    (:func:`fkp.serving.align.fit_keypoints`) and predicts again: the training faces were framed
    by all their keypoints, not by five detector landmarks, and those landmarks are whole pixels
    of a copy of at most ``DETECT_MAX_SIDE`` pixels, coarse for a small face in a big photo.
    A face whose keypoints frame it implausibly keeps the crop and keypoints it has.
    One model call per pass, batching every face still being framed.
    """
    crops, passes = list(crops), list(passes)
    coords: list[np.ndarray] = [np.empty(0)] * len(crops)
    for done in range(max(passes, default=0)):
        todo = [i for i, n in enumerate(passes) if n > done]
        if done:
            framed = {i: fit_keypoints(coords[i], crops[i]) for i in todo}
            todo = [i for i in todo if framed[i] is not None]
            crops = [framed.get(i) or crop for i, crop in enumerate(crops)]
        if not todo:
            break
        raw = predict(cutter.inputs([crops[i] for i in todo]))
        for i, r in zip(todo, raw, strict=True):
            coords[i] = crops[i].to_photo(r)
    return list(zip(crops, coords, strict=True))


# --------------------------------------------------------------------------- I/O


_UNREADABLE = "cannot read as an image (expected a PNG, JPEG or other common format)"


def read_photo_bytes(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of a photo file whose header declares at most ``max_pixels``; clear error naming it.

    The size declared in the file's header is checked before anything is decoded, so a small
    file declaring a huge picture (a decompression bomb) is refused in milliseconds.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    check_pixel_count(path, max_pixels)
    return path.read_bytes()


def read_photo(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a PNG/JPEG/... as full-size 8-bit BGR (EXIF rotation applied); clear error naming the file."""
    data = np.frombuffer(read_photo_bytes(path, max_pixels=max_pixels), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(_UNREADABLE, file=path)
    return image


@dataclass(frozen=True)
class _Face:
    path: Path
    width: int
    height: int
    box: Box
    n_faces: int
    crop: FaceCrop  # framed by the detector's landmarks: the first pass of :func:`predict_faces`
    passes: int


def _find_face(path: Path, max_pixels: int) -> _Face:
    data = read_photo_bytes(path, max_pixels=max_pixels)
    try:
        found = find_faces(decode_for_detection(data))
    except UndecodableImage:
        raise DataError(_UNREADABLE, file=path) from None
    if not found.faces:
        raise NoFaceFoundError(path)
    face = found.faces[0]
    width, height = found.photo_size
    return _Face(path, width, height, face.detection.box, len(found.faces), face.crop, face.passes)


def face_record(box: Box, crop: FaceCrop, coords: np.ndarray) -> dict[str, Any]:
    """One face as JSON: its detected box, the square fed to the model, keypoint name -> [x, y].

    The square (``crop_box``) is :class:`FaceCrop`: its top-left corner ``x, y`` and side in
    photo pixels, turned by ``angle`` degrees (clockwise on the screen) about that corner.

    ``coords`` are the 30 coordinates in photo pixels. The photo tool and the web API both
    answer with this shape, so a client reads either the same way.
    """
    pairs = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    return {
        "face_box": {
            "x": round(box.x, 2),
            "y": round(box.y, 2),
            "width": round(box.w, 2),
            "height": round(box.h, 2),
        },
        "crop_box": {
            "x": round(crop.x0, 2),
            "y": round(crop.y0, 2),
            "size": round(crop.size, 2),
            "angle": round(crop.angle, 2),
        },
        "keypoints": {
            name: [round(float(x), 2), round(float(y), 2)]
            for name, (x, y) in zip(KEYPOINT_NAMES, pairs, strict=True)
        },
    }


def keypoints_record(face: _Face, crop: FaceCrop, coords: np.ndarray, *, tta_flip: bool) -> dict[str, Any]:
    """The JSON written for one photo: keypoint name -> [x, y] in photo pixels, plus the boxes.

    ``crop`` is the square the final keypoints were predicted on.
    """
    fields = face_record(face.box, crop, coords)
    return {
        "image": str(face.path),
        "image_size": {"width": face.width, "height": face.height},
        "faces_detected": face.n_faces,
        "face_box": fields["face_box"],
        "crop_box": fields["crop_box"],
        "tta_flip": tta_flip,
        "keypoints": fields["keypoints"],
    }


def _colour(name: str) -> tuple[int, int, int]:
    """BGR: subject's left in green, right in orange, the midline in magenta."""
    if "left" in name:
        return (80, 200, 60)
    if "right" in name:
        return (0, 140, 255)
    return (220, 60, 220)


def draw_keypoints(image: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """The photo with the face box, each keypoint and its name drawn on it (BGR copy)."""
    out = image.copy()
    box = record["face_box"]
    size = max(box["width"], box["height"])
    thick = max(1, round(size / 200))
    radius = max(2, round(size / 90))
    font_scale = max(0.3, size / 700)
    fb = [round(box["x"]), round(box["y"]), round(box["x"] + box["width"]), round(box["y"] + box["height"])]
    cv2.rectangle(out, (fb[0], fb[1]), (fb[2], fb[3]), (255, 255, 255), thick, cv2.LINE_AA)
    points = {name: np.array(xy) for name, xy in record["keypoints"].items()}
    centre = np.mean(list(points.values()), axis=0)
    placed: list[tuple[int, int, int, int]] = []
    for name, xy in points.items():
        colour = _colour(name)
        px = (round((xy[0] - 0.5) * 16), round((xy[1] - 0.5) * 16))  # pixel index, 4 fractional bits
        cv2.circle(out, px, radius * 16, colour, -1, cv2.LINE_AA, shift=4)
        (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        origin = _label_origin(xy, centre, (tw, th + base), radius, placed, out.shape[1::-1])
        _outlined_text(out, name, origin, font_scale, colour)
    return out


def _label_origin(
    xy: np.ndarray,
    centre: np.ndarray,
    text_size: tuple[int, int],
    radius: int,
    placed: list[tuple[int, int, int, int]],
    image_size: tuple[int, int],
) -> tuple[int, int]:
    """Put a label outward from the face centre, pushing it further out until it overlaps no other.

    Labels stay inside the image (``image_size`` = width, height) as far as they fit.
    """
    tw, th = text_size
    width, height = image_size
    direction = xy - centre
    direction = direction / (np.linalg.norm(direction) or 1.0)
    rect = (0, 0, 0, 0)
    for step in range(1, 12):
        anchor = xy + direction * (radius * 2 + step * th * 0.8)
        x = anchor[0] - (tw if direction[0] < -0.3 else 0 if direction[0] > 0.3 else tw / 2)
        x = min(max(x, 0.0), max(0.0, width - tw))
        y = min(max(anchor[1] + th / 2, th), max(th, height - 1))
        rect = (round(x), round(y - th), round(x + tw), round(y))
        if not any(_overlap(rect, other) for other in placed):
            break
    placed.append(rect)
    return rect[0], rect[3]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _outlined_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour) -> None:
    """Text with a dark outline, legible on light and dark photos alike."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, text, origin, font, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, font, scale, colour, 1, cv2.LINE_AA)


def _check_unique_stems(paths: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DataError(
                f"has the same name as {seen[path.stem]}: both would write {path.stem}.json", file=path
            )
        seen[path.stem] = path


def predict_photos(
    model_ref: Any,
    image_paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    tta_flip: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[dict[str, Any]]:
    """Predict the keypoints of the largest face in each photo (:func:`predict_faces`).

    Writes ``<stem>.json`` and ``<stem>_keypoints.png`` per photo into ``out_dir``
    (atomically). Every photo is read and its face found before the model is loaded or
    anything is written, so an unreadable file (:class:`DataError`) or a photo without a
    face (:class:`NoFaceFoundError`) stops the whole call cleanly. ``model_ref`` is a
    ``.keras`` path, an MLflow model URI or folder, or an already loaded Keras model.
    A photo whose header declares more than ``max_pixels`` is refused before it is decoded.
    Returns the JSON records, each with the paths of the two files added.
    """
    from fkp.core.predictor import predict_keypoints, resolve_model

    paths = [Path(p) for p in image_paths]
    _check_unique_stems(paths)
    faces = [_find_face(path, max_pixels) for path in paths]
    if not faces:
        return []
    model = resolve_model(model_ref)
    out_dir = Path(out_dir)
    results = []
    for face in faces:
        data = read_photo_bytes(face.path, max_pixels=max_pixels)
        cutter = FaceCutter(data, decode_for_detection(data))
        predict = functools.partial(predict_keypoints, model, tta_flip=tta_flip, second_look=False)
        [(crop, coords)] = predict_faces(cutter, [face.crop], predict, [face.passes])
        record = keypoints_record(face, crop, coords, tta_flip=tta_flip)
        json_path = out_dir / f"{face.path.stem}.json"
        png_path = out_dir / f"{face.path.stem}_keypoints.png"
        ok, png = cv2.imencode(".png", draw_keypoints(read_photo(face.path, max_pixels=max_pixels), record))
        if not ok:
            raise RuntimeError(f"cannot encode the keypoint overlay for {face.path}")
        write_bytes(png_path, png.tobytes())
        write_text(json_path, json.dumps(record, indent=2) + "\n")
        results.append({**record, "json": json_path, "overlay": png_path})
    return results
