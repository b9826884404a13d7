"""The 15 Kaggle facial keypoints: names, column order and left/right symmetry.

Kaggle's convention is the *subject's* left: ``left_eye_center`` lies on the image's
right half (x about 66), ``right_eye_center`` on its left half (x about 30).
Everything that needs a keypoint name or a column position imports it from here.
"""

from __future__ import annotations

import numpy as np

#: The centre of pixel column ``i`` has x coordinate ``i + PIXEL_CENTER`` (likewise rows and y).
PIXEL_CENTER = 0.5

IMAGE_SIZE = 96
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
N_KEYPOINTS = len(KEYPOINT_NAMES)

#: The 30 coordinate columns of training.csv, in Kaggle's order (x then y per keypoint).
COORD_COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in "xy")
N_COORDS = len(COORD_COLUMNS)

#: The keypoints present in (almost) every Kaggle row; the other 11 are missing in ~70 % of rows.
CORE_KEYPOINTS: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "nose_tip",
    "mouth_center_bottom_lip",
)

#: The Kaggle mean face: each keypoint's mean position over the 7,049 rows of Kaggle's
#: training.csv (missing values skipped). Photos are framed so that a face's detected landmarks
#: land on these points, the way the training faces sit in their 96x96 frames.
MEAN_FACE: dict[str, tuple[float, float]] = {
    "left_eye_center": (66.359, 37.651),
    "right_eye_center": (30.306, 37.977),
    "left_eye_inner_corner": (59.159, 37.945),
    "left_eye_outer_corner": (73.330, 37.707),
    "right_eye_inner_corner": (36.653, 37.990),
    "right_eye_outer_corner": (22.385, 38.034),
    "left_eyebrow_inner_end": (56.069, 29.333),
    "left_eyebrow_outer_end": (79.483, 29.651),
    "right_eyebrow_inner_end": (39.322, 29.503),
    "right_eyebrow_outer_end": (15.871, 30.428),
    "nose_tip": (48.374, 62.716),
    "mouth_left_corner": (63.286, 75.971),
    "mouth_right_corner": (32.900, 76.184),
    "mouth_center_top_lip": (47.975, 72.920),
    "mouth_center_bottom_lip": (48.570, 78.970),
}
#: :data:`MEAN_FACE` as a (15, 2) array in Kaggle column order.
MEAN_KEYPOINTS = np.array([MEAN_FACE[name] for name in KEYPOINT_NAMES])

IMAGE_COLUMN = "Image"
TRAINING_COLUMNS: tuple[str, ...] = (*COORD_COLUMNS, IMAGE_COLUMN)
TEST_COLUMNS: tuple[str, ...] = ("ImageId", IMAGE_COLUMN)
ID_LOOKUP_COLUMNS: tuple[str, ...] = ("RowId", "ImageId", "FeatureName", "Location")
SUBMISSION_COLUMNS: tuple[str, ...] = ("RowId", "Location")


def _mirror_name(name: str) -> str:
    """The keypoint a horizontal flip maps ``name`` onto (left <-> right)."""
    if "left" in name:
        return name.replace("left", "right")
    if "right" in name:
        return name.replace("right", "left")
    return name


def flip_permutation() -> np.ndarray:
    """Index array ``p`` so that ``flipped[:, i] = coords[:, p[i]]`` after mirroring x.

    A mirrored image shows the subject's left eye where the right one was, so the
    column that held ``right_eye_center_x`` now feeds ``left_eye_center_x``.
    """
    index = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
    perm = np.empty(N_COORDS, dtype=np.int64)
    for i, name in enumerate(KEYPOINT_NAMES):
        j = index[_mirror_name(name)]
        perm[2 * i] = 2 * j
        perm[2 * i + 1] = 2 * j + 1
    return perm


def core_mask() -> np.ndarray:
    """Boolean mask over the 30 coordinates marking the four core keypoints."""
    return np.array([col.rsplit("_", 1)[0] in CORE_KEYPOINTS for col in COORD_COLUMNS])
