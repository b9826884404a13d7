"""Robustness: the validation faces as other cameras and sources would deliver them, one distortion at a time.

Each distortion is a pure, seeded function of uint8 faces (n, 96, 96) and their pixel keypoints
(n, 30); the geometric ones (rotation/scale, and the framings of other sources: a tighter crop, a
face off centre) move the keypoints with the pixels. They are implemented with OpenCV and NumPy,
independently of the training augmentation (:mod:`fkp.core.augment`, TensorFlow), and at fixed
severities at or beyond the training ranges, so a good score cannot come from the test
reproducing the training code. The scores are RMSE in pixels over the observed labels, as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from fkp.core.keypoints import IMAGE_SIZE, PIXEL_CENTER
from fkp.core.metrics import rmse

Faces = tuple[np.ndarray, np.ndarray]
Distortion = Callable[[np.ndarray, np.ndarray, np.random.Generator], Faces]


def _per_image(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(image) for image in images]).astype(np.uint8)


def blur(images, keypoints, rng, sigma: float = 1.2) -> Faces:
    """Gaussian blur: defocus, cheap optics, a face upscaled from a small crop."""
    return _per_image(images, lambda im: cv2.GaussianBlur(im, (0, 0), sigma)), keypoints


def noise(images, keypoints, rng, std: float = 10.0) -> Faces:
    """Additive Gaussian sensor noise, in grey levels."""
    noisy = images.astype(np.float32) + rng.normal(0.0, std, images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), keypoints


def jpeg(images, keypoints, rng, quality: int = 20) -> Faces:
    """Re-encoded as a heavily compressed JPEG (video frames, messaging apps)."""

    def one(im):
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)

    return _per_image(images, one), keypoints


def gamma(images, keypoints, rng, value: float = 1.0) -> Faces:
    """A different tone curve: ``value`` < 1 brightens (overexposed), > 1 darkens."""
    table = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** value), 0, 255).astype(np.uint8)
    return table[images], keypoints


def _warp(images: np.ndarray, keypoints: np.ndarray, matrices: list[np.ndarray]) -> Faces:
    """Each face warped by its 2x3 affine ``matrices[i]`` (pixel-index coordinates); keypoints follow."""
    out_images, out_points = [], []
    for im, kp, m in zip(images, keypoints, matrices, strict=True):
        out_images.append(
            cv2.warpAffine(
                im, m, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        )
        points = kp.reshape(-1, 2).astype(np.float64) - PIXEL_CENTER  # to pixel-index coordinates
        moved = points @ m[:, :2].T + m[:, 2] + PIXEL_CENTER
        out_points.append(moved.reshape(-1))  # NaN (unlabelled) stays NaN
    return np.stack(out_images), np.stack(out_points).astype(np.float32)


_CENTRE = ((IMAGE_SIZE - 1) / 2.0, (IMAGE_SIZE - 1) / 2.0)


def rotate_scale(images, keypoints, rng, degrees: float = 15.0, scale: float = 0.9) -> Faces:
    """Rotated by +-``degrees`` (alternating) and scaled by ``scale`` about the centre; keypoints follow."""
    signs = [1 if i % 2 == 0 else -1 for i in range(len(images))]
    return _warp(images, keypoints, [cv2.getRotationMatrix2D(_CENTRE, s * degrees, scale) for s in signs])


def zoom(images, keypoints, rng, scale: float = 1.12) -> Faces:
    """The face ``scale`` times larger in its frame: a source that crops its faces tighter."""
    return _warp(images, keypoints, [cv2.getRotationMatrix2D(_CENTRE, 0.0, scale)] * len(images))


def offset(images, keypoints, rng, pixels: float = 4.0) -> Faces:
    """The face ``pixels`` off the centre of its frame, in turn down, up, right and left: a source
    whose crops sit the face elsewhere (a detector box centred on the forehead, or on the chin)."""
    steps = [(0, pixels), (0, -pixels), (pixels, 0), (-pixels, 0)]
    shifts = [steps[i % len(steps)] for i in range(len(images))]
    return _warp(images, keypoints, [np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]) for dx, dy in shifts])


def occlusion(images, keypoints, rng, side: int = 28) -> Faces:
    """A mid-grey square over a random part of each face (hand, microphone, hair); labels unchanged."""
    out = images.copy()
    corners = rng.integers(0, IMAGE_SIZE - side + 1, size=(len(images), 2))
    for im, (x, y) in zip(out, corners, strict=True):
        im[y : y + side, x : x + side] = 128
    return out, keypoints


DISTORTIONS: dict[str, Distortion] = {
    "blur": blur,
    "noise": noise,
    "jpeg": jpeg,
    "gamma_bright": lambda im, kp, rng: gamma(im, kp, rng, 0.6),
    "gamma_dark": lambda im, kp, rng: gamma(im, kp, rng, 1.6),
    "rotate_scale": rotate_scale,
    "zoom": zoom,
    "offset": offset,
    "occlusion": occlusion,
}
#: What each distortion is, for tables and pictures.
DESCRIPTIONS = {
    "clean": "none (the validation faces as they are)",
    "blur": "Gaussian blur, sigma 1.2 px",
    "noise": "Gaussian noise, sigma 10 grey levels",
    "jpeg": "JPEG quality 20",
    "gamma_bright": "gamma 0.6 (brighter)",
    "gamma_dark": "gamma 1.6 (darker)",
    "rotate_scale": "rotation +-15 deg and scale 0.9",
    "zoom": "face 12 % larger in its frame",
    "offset": "face 4 px off centre (down, up, right or left)",
    "occlusion": "grey 28 px square at a random place",
}


def robustness_scores(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, keypoints: np.ndarray, *, seed: int = 0
) -> dict[str, float]:
    """RMSE (px) of ``predict`` on the clean faces and on each distortion of them."""
    scores = {"clean": rmse(predict(images), keypoints)}
    for name, distort in DISTORTIONS.items():
        distorted, truth = distort(images, keypoints, np.random.default_rng(seed))
        scores[name] = rmse(predict(distorted), truth)
    return scores
