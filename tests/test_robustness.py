"""The robustness distortions: seeded, shape-keeping, and the geometric one moves labels with pixels."""

from __future__ import annotations

import numpy as np
import pytest

from fkp.core.augment import PIXEL_CENTER
from fkp.core.keypoints import IMAGE_SIZE
from fkp.core.robustness import DESCRIPTIONS, DISTORTIONS, robustness_scores


def dot_faces(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Dark faces with one bright 3x3 dot each, its centre labelled as the first keypoint."""
    rng = np.random.default_rng(1)
    images = np.full((n, IMAGE_SIZE, IMAGE_SIZE), 10, dtype=np.uint8)
    keypoints = np.full((n, 30), np.nan, dtype=np.float32)
    for i, (row, col) in enumerate(rng.integers(25, 70, size=(n, 2))):
        images[i, row - 1 : row + 2, col - 1 : col + 2] = 250
        keypoints[i, :2] = (col + PIXEL_CENTER, row + PIXEL_CENTER)
    return images, keypoints


def find_dot(images: np.ndarray) -> np.ndarray:
    """A 'model' that finds the brightest blob: centroid of the pixels above the background."""
    out = np.full((len(images), 30), 48.0, dtype=np.float32)
    for i, im in enumerate(images.astype(np.float64)):
        w = np.clip(im - 128, 0, None)
        if not w.any():  # hidden under the occluder: guess the centre
            continue
        rows, cols = np.indices(w.shape)
        out[i, :2] = ((cols * w).sum() / w.sum() + PIXEL_CENTER, (rows * w).sum() / w.sum() + PIXEL_CENTER)
    return out


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_distortions_keep_shapes_and_are_seeded(name):
    images, keypoints = dot_faces()
    a = DISTORTIONS[name](images, keypoints, np.random.default_rng(0))
    b = DISTORTIONS[name](images, keypoints, np.random.default_rng(0))
    assert a[0].shape == images.shape and a[0].dtype == np.uint8 and a[1].shape == keypoints.shape
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], images), f"{name} left the faces unchanged"
    assert np.array_equal(np.isnan(a[1]), np.isnan(keypoints)), "unlabelled stays unlabelled"
    assert name in DESCRIPTIONS


@pytest.mark.parametrize("name", ["rotate_scale", "zoom", "offset"])
def test_geometric_distortions_move_the_labels_with_the_pixels(name):
    images, keypoints = dot_faces()
    moved, truth = DISTORTIONS[name](images, keypoints, np.random.default_rng(0))
    assert np.nanmax(np.abs(truth - keypoints)) > 2.0  # the labels did move
    np.testing.assert_allclose(find_dot(moved)[:, :2], truth[:, :2], atol=0.2)  # a thresholded centroid


def test_scores_a_dot_finder_as_perfect_except_where_the_dot_is_hidden():
    images, keypoints = dot_faces()
    scores = robustness_scores(find_dot, images, keypoints)
    assert set(scores) == {"clean", *DISTORTIONS}
    for name in ("clean", "blur", "jpeg", "rotate_scale", "zoom", "offset", "gamma_bright", "gamma_dark"):
        assert scores[name] < 0.2, (name, scores[name])
