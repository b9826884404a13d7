"""Augmentation moves pixels and keypoints together, swaps left/right on a mirror, keeps NaN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from fkp.core.augment import MIRROR_X, PIXEL_CENTER, augment_batch, flip_keypoints
from fkp.core.keypoints import COORD_COLUMNS, IMAGE_SIZE
from fkp.params import AugmentParams

NO_DEGRADATION = {"blur": 0.0, "noise": 0.0, "jpeg": 0.0, "gamma": 0.0, "occlusion": 0.0}


def geometry_only(**kwargs) -> AugmentParams:
    """Augmentation params with the camera degradations off: they move no keypoint but smear the dots."""
    return AugmentParams(**{**NO_DEGRADATION, **kwargs})


STILL = geometry_only(flip=False, shift_px=0.0, rotate_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0)
LEFT_EYE_X = COORD_COLUMNS.index("left_eye_center_x")
RIGHT_EYE_X = COORD_COLUMNS.index("right_eye_center_x")


def dot_image(row: int, col: int) -> np.ndarray:
    """A dark (1, 96, 96, 1) image with one bright pixel."""
    image = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    image[0, row, col, 0] = 1.0
    return image


def dot_keypoints(row: int, col: int, column: int = LEFT_EYE_X) -> np.ndarray:
    """Keypoints with only one keypoint observed, placed on the centre of pixel (row, col)."""
    keypoints = np.full((1, 30), np.nan, dtype=np.float32)
    keypoints[0, column] = col + PIXEL_CENTER
    keypoints[0, column + 1] = row + PIXEL_CENTER
    return keypoints


def brightest(image: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre (x, y) of the image, in keypoint coordinates."""
    weights = np.asarray(image)[0, :, :, 0]
    rows, cols = np.indices(weights.shape)
    total = weights.sum()
    return (cols * weights).sum() / total + PIXEL_CENTER, (rows * weights).sum() / total + PIXEL_CENTER


def run(image, keypoints, params, seed=(1, 2)):
    out_image, out_keypoints = augment_batch(
        tf.constant(image), tf.constant(keypoints), tf.constant(seed, tf.int64), params
    )
    return out_image.numpy(), out_keypoints.numpy()


def flipping_seed(params: AugmentParams, want: bool) -> tuple[int, int]:
    """A seed whose (single-image) draw mirrors the image, or does not."""
    for s in range(100):
        _, keypoints = run(dot_image(10, 20), dot_keypoints(10, 20), params, seed=(s, 0))
        if np.isnan(keypoints[0, LEFT_EYE_X]) == want:
            return (s, 0)
    raise AssertionError("no seed found")


def test_no_augmentation_is_identity():
    image, keypoints = dot_image(30, 40), dot_keypoints(30, 40)
    out_image, out_keypoints = run(image, keypoints, STILL)
    np.testing.assert_allclose(out_image, image, atol=1e-6)
    np.testing.assert_array_equal(out_keypoints, keypoints)


def test_flip_moves_dot_and_swaps_left_right():
    params = geometry_only(
        flip=True, shift_px=0.0, rotate_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0, mirror_x=MIRROR_X
    )
    seed = flipping_seed(params, want=True)
    image, keypoints = dot_image(30, 70), dot_keypoints(30, 70)
    out_image, out_keypoints = run(image, keypoints, params, seed=seed)
    # the dot is mirrored to column 95 - 70, and the label moved from left eye to right eye
    assert out_image[0, 30, IMAGE_SIZE - 1 - 70, 0] == pytest.approx(1.0)
    assert np.isnan(out_keypoints[0, LEFT_EYE_X])
    x, y = out_keypoints[0, RIGHT_EYE_X], out_keypoints[0, RIGHT_EYE_X + 1]
    assert (x, y) == pytest.approx(brightest(out_image))
    assert x == pytest.approx(MIRROR_X - (70 + PIXEL_CENTER))


def test_double_flip_is_identity():
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(10, 86, size=(4, 30)).astype(np.float32)
    keypoints[1, 4:] = np.nan
    np.testing.assert_allclose(flip_keypoints(flip_keypoints(keypoints)), keypoints, atol=1e-5)
    once = flip_keypoints(keypoints)
    np.testing.assert_allclose(once[:, RIGHT_EYE_X], MIRROR_X - keypoints[:, LEFT_EYE_X], atol=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        geometry_only(flip=False, shift_px=6.0, rotate_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0),
        geometry_only(flip=False, shift_px=0.0, rotate_deg=25.0, scale=0.0, brightness=0.0, contrast=0.0),
        geometry_only(flip=False, shift_px=0.0, rotate_deg=0.0, scale=0.2, brightness=0.0, contrast=0.0),
        geometry_only(
            flip=True,
            shift_px=5.0,
            rotate_deg=20.0,
            scale=0.15,
            brightness=0.0,
            contrast=0.0,
            mirror_x=MIRROR_X,
        ),
    ],
    ids=["shift", "rotate", "scale", "all"],
)
def test_geometry_moves_dot_to_transformed_keypoint(params):
    # a 3x3 blob off-centre, so rotation and scaling visibly move it
    image = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    image[0, 19:22, 69:72, 0] = 1.0
    keypoints = dot_keypoints(20, 70)
    for seed in [(s, 7) for s in range(5)]:
        out_image, out_keypoints = run(image, keypoints, params, seed=seed)
        observed = out_keypoints[0][~np.isnan(out_keypoints[0])]
        assert observed.shape == (2,)
        assert tuple(observed) == pytest.approx(brightest(out_image), abs=1.0)


def test_missing_keypoints_stay_missing_and_observed_stay_finite():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(8, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    keypoints = rng.uniform(20, 76, size=(8, 30)).astype(np.float32)
    keypoints[::2, 4:] = np.nan
    out_images, out_keypoints = run(images, keypoints, AugmentParams())
    flipped_nan = np.isnan(flip_keypoints(keypoints))
    nan = np.isnan(out_keypoints)
    # each row is missing exactly the plain or the mirrored pattern of its input
    assert all((nan[i] == np.isnan(keypoints[i])).all() or (nan[i] == flipped_nan[i]).all() for i in range(8))
    assert nan.sum() == np.isnan(keypoints).sum()
    assert out_images.min() >= 0.0 and out_images.max() <= 1.0


def test_same_seed_same_augmentation():
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(4, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    keypoints = rng.uniform(20, 76, size=(4, 30)).astype(np.float32)
    a = run(images, keypoints, AugmentParams(), seed=(5, 5))
    b = run(images, keypoints, AugmentParams(), seed=(5, 5))
    c = run(images, keypoints, AugmentParams(), seed=(5, 6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[1], c[1])


DEGRADATIONS = ("blur", "noise", "jpeg", "gamma", "occlusion")


def textured_batch(n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0.2, 0.8, size=(n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_each_degradation_changes_pixels_not_keypoints(name):
    images = textured_batch()
    keypoints = np.full((len(images), 30), 40.0, dtype=np.float32)
    out_images, out_keypoints = run(images, keypoints, dataclasses.replace(STILL, **{name: 1.0}))
    assert out_images.shape == images.shape
    assert np.all((out_images >= 0) & (out_images <= 1))
    assert np.abs(np.asarray(out_images) - images).mean() > 1e-3, name
    np.testing.assert_allclose(out_keypoints, keypoints, atol=1e-5)


def test_degradations_off_leave_the_batch_untouched_and_on_are_seeded():
    images, keypoints = textured_batch(), np.full((8, 30), 40.0, dtype=np.float32)
    off, _ = run(images, keypoints, STILL)
    np.testing.assert_allclose(off, images, atol=1e-6)
    every = dataclasses.replace(STILL, **{name: 0.5 for name in DEGRADATIONS})
    a, _ = run(images, keypoints, every, seed=(3, 4))
    b, _ = run(images, keypoints, every, seed=(3, 4))
    c, _ = run(images, keypoints, every, seed=(3, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_blur_spreads_a_dot_without_moving_it():
    image = dot_image(40, 60)
    out, _ = run(image, dot_keypoints(40, 60), dataclasses.replace(STILL, blur=1.0))
    out = np.asarray(out)
    assert out.max() < 0.9 and out.sum() == pytest.approx(1.0, rel=1e-3)  # spread, nothing lost
    x, y = brightest(out)
    assert (x, y) == pytest.approx((60 + PIXEL_CENTER, 40 + PIXEL_CENTER), abs=1e-3)
