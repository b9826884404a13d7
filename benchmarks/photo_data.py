"""The photo benchmark's data: labelled photos as they are, and harder photos made from them.

A photo set is a folder with ``images/`` and ``labels.csv`` (``file``, ``person``, ``group``, then
the 15 Kaggle keypoints as ``<name>_x``, ``<name>_y`` in photo pixels). From it this module makes,
deterministically from a seed, the harder cases real photos hold: several faces pasted small into
large canvases, rotated heads, heavy JPEG compression, plus a 640x480 photo for throughput and a
very large JPEG for time and memory. Every made photo carries its faces' true keypoints, mapped
with the same transform as its pixels (continuous pixel coordinates, as everywhere in fkp).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fkp.core.keypoints import KEYPOINT_NAMES
from fkp.errors import DataError

LEFT_OUTER, RIGHT_OUTER = (
    KEYPOINT_NAMES.index(k) for k in ("left_eye_outer_corner", "right_eye_outer_corner")
)
LEFT_EYE, RIGHT_EYE = (KEYPOINT_NAMES.index(k) for k in ("left_eye_center", "right_eye_center"))
#: A detection matches a labelled face when their eye centres are closer than this many
#: outer-eye-corner distances of the labelled face.
MATCH_RADIUS = 0.5


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo file of a photo set and its face's true keypoints (15, 2), photo pixels."""

    path: Path
    person: str
    group: int
    keypoints: np.ndarray


@dataclass
class BenchPhoto:
    """A photo as the client sends it, and the faces in it that carry labels."""

    name: str
    data: bytes  # encoded JPEG/PNG
    width: int
    height: int
    faces: list[np.ndarray] = field(default_factory=list)  # (15, 2) each
    groups: list[int] = field(default_factory=list)  # one per face


def read_photo_set(folder: Path) -> list[LabelledPhoto]:
    """``labels.csv`` of a photo set; a bad row stops with the file, row and field named."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise DataError("file not found (a photo set is images/ plus labels.csv)", file=labels)
    columns = [f"{k}_{axis}" for k in KEYPOINT_NAMES for axis in ("x", "y")]
    out = []
    with labels.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("file", "person", "group", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column {missing[0]}", file=labels)
        for row_number, row in enumerate(reader, start=2):
            try:
                group = int(row["group"])
            except ValueError:
                raise DataError(
                    f"row {row_number}: field group is not an integer: {row['group']!r}", file=labels
                ) from None
            values = []
            for column in columns:
                try:
                    values.append(float(row[column]))
                except (TypeError, ValueError):
                    raise DataError(
                        f"row {row_number}: field {column} is not a number: {row[column]!r}", file=labels
                    ) from None
            path = folder / row["file"]
            if not path.is_file():
                raise DataError(f"row {row_number}: field file names a missing image {path}", file=labels)
            out.append(LabelledPhoto(path, row["person"], group, np.array(values).reshape(15, 2)))
    return out


def outer_eye_distance(points: np.ndarray) -> float:
    """The NME normaliser: distance between the outer eye corners (15, 2)."""
    return float(np.linalg.norm(points[LEFT_OUTER] - points[RIGHT_OUTER]))


def eye_centre(points: np.ndarray) -> np.ndarray:
    """Midpoint of the two eye centres: where a face is, for matching predictions to labels."""
    return (points[LEFT_EYE] + points[RIGHT_EYE]) / 2


def nme(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean point-to-point error of (15, 2) keypoints over the true outer-eye-corner distance."""
    return float(np.mean(np.linalg.norm(predicted - truth, axis=1)) / outer_eye_distance(truth))


def match_faces(centres: list[np.ndarray], truth: list[np.ndarray]) -> list[int | None]:
    """For each labelled face, the index of its detected face (closest eye centres first), or None.

    ``centres`` are the detected faces' eye centres (midpoint of the two eyes), photo pixels.

    Greedy on distance: each prediction serves at most one labelled face, and only within
    :data:`MATCH_RADIUS` outer-eye distances of it.
    """
    pairs = []
    for t, true in enumerate(truth):
        radius = MATCH_RADIUS * outer_eye_distance(true)
        for p, centre in enumerate(centres):
            distance = float(np.linalg.norm(centre - eye_centre(true)))
            if distance <= radius:
                pairs.append((distance, t, p))
    out: list[int | None] = [None] * len(truth)
    used: set[int] = set()
    for _, t, p in sorted(pairs):
        if out[t] is None and p not in used:
            out[t], used = p, used | {p}
    return out


def _encode(image: np.ndarray, fmt: str = ".jpg", quality: int = 92) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    ok, encoded = cv2.imencode(fmt, image, params)
    if not ok:
        raise RuntimeError(f"cannot encode a {image.shape} photo as {fmt}")
    return encoded.tobytes()


def _affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Continuous coordinates through a 2x3 pixel-index affine (centre of pixel i is i + 0.5)."""
    index = points - 0.5
    return index @ matrix[:, :2].T + matrix[:, 2] + 0.5


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth, coloured, faceless scene: low-frequency noise upsampled, plus fine grain."""
    coarse = rng.uniform(40, 215, (max(2, height // 120), max(2, width // 120), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def paste(
    canvas: np.ndarray, photo: np.ndarray, points: np.ndarray, x0: int, y0: int, scale: float
) -> np.ndarray:
    """Paste ``photo`` resized by ``scale`` at (x0, y0) with feathered edges; its points, moved."""
    h, w = photo.shape[:2]
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    feather = max(1, min(nw, nh) // 10)
    mask = np.zeros((nh, nw), np.float32)
    mask[feather : -feather or None, feather : -feather or None] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), feather / 2)[..., None] if feather > 1 else np.ones((nh, nw, 1))
    region = canvas[y0 : y0 + nh, x0 : x0 + nw].astype(np.float32)
    canvas[y0 : y0 + nh, x0 : x0 + nw] = (mask * small + (1 - mask) * region).astype(np.uint8)
    return points * np.array([nw / w, nh / h]) + (x0, y0)


def crowd(
    name: str,
    photos: list[LabelledPhoto],
    rng: np.random.Generator,
    size: tuple[int, int],
    faces: int,
    eye_px: tuple[float, float],
) -> BenchPhoto:
    """``faces`` photos pasted without overlap into a ``size`` canvas, outer-eye distance in ``eye_px``."""
    width, height = size
    canvas = background(rng, width, height)
    taken: list[tuple[int, int, int, int]] = []
    out = BenchPhoto(name, b"", width, height)
    for labelled in (photos[i] for i in rng.choice(len(photos), faces, replace=False)):
        image = cv2.imread(str(labelled.path), cv2.IMREAD_COLOR)
        scale = rng.uniform(*eye_px) / outer_eye_distance(labelled.keypoints)
        w, h = round(image.shape[1] * scale), round(image.shape[0] * scale)
        for _ in range(50):  # a free place, else the face is left out
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if all(x0 >= b[2] or b[0] >= x0 + w or y0 >= b[3] or b[1] >= y0 + h for b in taken):
                taken.append((x0, y0, x0 + w, y0 + h))
                out.faces.append(paste(canvas, image, labelled.keypoints, x0, y0, scale))
                out.groups.append(labelled.group)
                break
    out.data = _encode(canvas)
    return out


def rotated(labelled: LabelledPhoto, degrees: float) -> BenchPhoto:
    """The photo turned ``degrees`` about its centre on a canvas big enough to keep all of it."""
    image = cv2.imread(str(labelled.path), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    nw, nh = round(w * cos + h * sin), round(w * sin + h * cos)
    matrix[:, 2] += ((nw - w) / 2, (nh - h) / 2)
    turned = cv2.warpAffine(image, matrix, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    points = _affine_points(labelled.keypoints, matrix)
    return BenchPhoto(
        f"{labelled.path.stem}_rot{degrees:+.0f}", _encode(turned), nw, nh, [points], [labelled.group]
    )


def as_is(labelled: LabelledPhoto, quality: int | None = None) -> BenchPhoto:
    """The photo's own bytes, or re-encoded as a JPEG of ``quality``."""
    image = cv2.imread(str(labelled.path), cv2.IMREAD_COLOR)
    data = labelled.path.read_bytes() if quality is None else _encode(image, quality=quality)
    suffix = "" if quality is None else f"_q{quality}"
    h, w = image.shape[:2]
    return BenchPhoto(labelled.path.stem + suffix, data, w, h, [labelled.keypoints], [labelled.group])


def single(
    name: str, labelled: LabelledPhoto, size: tuple[int, int], eye_px: float, quality: int = 90
) -> BenchPhoto:
    """One face, centred, outer-eye distance ``eye_px``, in a ``size`` picture (throughput, big photo)."""
    width, height = size
    rng = np.random.default_rng(0)
    canvas = background(rng, width, height)
    image = cv2.imread(str(labelled.path), cv2.IMREAD_COLOR)
    scale = eye_px / outer_eye_distance(labelled.keypoints)
    w, h = round(image.shape[1] * scale), round(image.shape[0] * scale)
    points = paste(canvas, image, labelled.keypoints, (width - w) // 2, (height - h) // 2, scale)
    return BenchPhoto(name, _encode(canvas, quality=quality), width, height, [points], [labelled.group])


#: The sets of the benchmark, easiest first: name -> what they are (the table's first column).
SETS = {
    "as is": "the photos as they are (one face each)",
    "jpeg q20": "each photo re-encoded as JPEG quality 20",
    "rotated": "each photo turned by a random angle in +-25 deg",
    "crowd 1920x1080": "6 faces each, outer eyes 25-70 px apart, in 1920x1080",
    "crowd 3000x2000": "10 faces each, outer eyes 25-90 px apart, in 3000x2000",
}


def make_sets(photos: list[LabelledPhoto], seed: int, crowds: int) -> Iterator[tuple[str, BenchPhoto]]:
    """(set name, photo) for every set of :data:`SETS`, the same for the same photos and seed."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-25, 25, len(photos))
    for labelled in photos:
        yield "as is", as_is(labelled)
    for labelled in photos:
        yield "jpeg q20", as_is(labelled, quality=20)
    for labelled, angle in zip(photos, angles, strict=True):
        yield "rotated", rotated(labelled, float(angle))
    for k in range(crowds):
        yield (
            "crowd 1920x1080",
            crowd(f"crowd_hd_{k}", photos, rng, (1920, 1080), min(6, len(photos)), (25, 70)),
        )
    for k in range(max(1, crowds // 2)):
        yield (
            "crowd 3000x2000",
            crowd(f"crowd_3k_{k}", photos, rng, (3000, 2000), min(10, len(photos)), (25, 90)),
        )
