"""Batch augmentation in TensorFlow: the same random affine moves the pixels and the keypoints.

Everything works on a whole batch at once (one projective-transform op for the images, one
matrix product for the keypoints) so it runs inside ``tf.data`` without per-image Python.
Randomness is stateless: a batch's augmentation depends only on its ``seed`` tensor, which
makes training reproducible.

Pixel convention: the centre of pixel column ``i`` has x coordinate ``i + PIXEL_CENTER``
(likewise for rows and y). A horizontal mirror therefore maps x to ``MIRROR_X - x``;
flip augmentation and test-time flip averaging both use this one definition.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fkp.core.keypoints import IMAGE_SIZE, N_KEYPOINTS, PIXEL_CENTER, flip_permutation
from fkp.params import AugmentParams

#: x of a point after mirroring the image: ``MIRROR_X - x`` (= 96 with centres at i + 0.5).
MIRROR_X = IMAGE_SIZE - 1 + 2 * PIXEL_CENTER
# centre of rotation/scaling, in pixel-index coordinates (where pixel i sits at i)
_CENTRE = (IMAGE_SIZE - 1) / 2.0


def flip_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints of the horizontally mirrored image: x mirrored, left/right names swapped."""
    out = np.array(keypoints, dtype=np.float32, copy=True)
    out[..., 0::2] = MIRROR_X - out[..., 0::2]
    return out[..., flip_permutation()]


def _uniform(shape, seed, limit: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=-limit, maxval=limit)


def random_affines(batch_size, seed, params: AugmentParams) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-image forward affine ``p' = A (p - c) + c + t`` in pixel-index coordinates.

    Returns ``A`` (B, 2, 2), ``t`` (B, 2) and ``flipped`` (B,) bool. ``A`` folds together an
    optional mirror, a rotation of up to ``rotate_deg`` and a scale of up to ``1 ± scale``.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if params.flip:
        flipped = tf.random.stateless_uniform([batch_size], seeds[0]) < 0.5
    else:
        flipped = tf.zeros([batch_size], tf.bool)
    mirror = tf.where(flipped, -1.0, 1.0)
    angle = _uniform([batch_size], seeds[1], params.rotate_deg * math.pi / 180.0)
    scale = 1.0 + _uniform([batch_size], seeds[2], params.scale)
    shift = _uniform([batch_size, 2], seeds[3], params.shift_px)
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    # A = scale * R(angle) @ diag(mirror, 1)
    a = tf.stack([tf.stack([cos * mirror, -sin], -1), tf.stack([sin * mirror, cos], -1)], -2)
    return a, shift, flipped


def transform_keypoints(
    keypoints: tf.Tensor, a: tf.Tensor, t: tf.Tensor, flipped: tf.Tensor, mirror_x: float = MIRROR_X
) -> tf.Tensor:
    """Apply the affines to (B, 30) pixel keypoints; NaN (missing) stays NaN, mirrored rows swap sides.

    A mirrored row maps x to ``mirror_x - x`` before rotation, scaling and shift.
    """
    points = tf.reshape(keypoints, [-1, N_KEYPOINTS, 2]) - (PIXEL_CENTER + _CENTRE)
    # the geometric mirror sends x to MIRROR_X - x; shifting x first by the difference gives mirror_x - x
    label_shift = tf.where(flipped, MIRROR_X - mirror_x, 0.0)
    points = points + tf.stack([label_shift, tf.zeros_like(label_shift)], -1)[:, None, :]
    moved = tf.einsum("bij,bkj->bki", a, points) + (_CENTRE + PIXEL_CENTER) + t[:, None, :]
    moved = tf.reshape(moved, tf.shape(keypoints))
    swapped = tf.gather(moved, flip_permutation(), axis=1)
    return tf.where(flipped[:, None], swapped, moved)


def transform_images(images: tf.Tensor, a: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """Resample (B, 96, 96, C) images under the forward affines (bilinear, edges extended)."""
    inv = tf.linalg.inv(a)
    offset = _CENTRE + t  # p = inv (p' - c - t) + c
    c0 = _CENTRE - (inv[:, 0, 0] * offset[:, 0] + inv[:, 0, 1] * offset[:, 1])
    c1 = _CENTRE - (inv[:, 1, 0] * offset[:, 0] + inv[:, 1, 1] * offset[:, 1])
    zeros = tf.zeros_like(c0)
    # output (x, y) -> input (a0 x + a1 y + a2, b0 x + b1 y + b2); x is the column
    transforms = tf.stack(
        [inv[:, 0, 0], inv[:, 0, 1], c0, inv[:, 1, 0], inv[:, 1, 1], c1, zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def adjust_intensity(images: tf.Tensor, seed, params: AugmentParams) -> tf.Tensor:
    """Random per-image contrast (about the image mean) and brightness shift, clipped to 0..1."""
    if params.brightness <= 0 and params.contrast <= 0:
        return images
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = [tf.shape(images)[0], 1, 1, 1]
    contrast = 1.0 + _uniform(shape, seeds[0], params.contrast)
    brightness = _uniform(shape, seeds[1], params.brightness)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 1.0)


# Ranges of the camera degradations; the params say how often each is applied (0: never).
BLUR_SIGMA = (0.3, 1.6)  # Gaussian blur, px (defocus, motion-free webcams, upscaled crops)
NOISE_STD = (2 / 255, 14 / 255)  # additive Gaussian sensor noise, in 0..1 intensity units
JPEG_QUALITY = (10, 60)  # re-encoding quality (heavily compressed video frames and uploads)
LOG_GAMMA = 0.5  # gamma in exp(-0.5)..exp(0.5) = 0.61..1.65 (exposure, tone curves)
OCCLUDER_SIDE = (0.15, 0.4)  # occluding rectangle sides, as fractions of the image (hands, mics, hair)
_BLUR_RADIUS = 4  # taps each side: 3 sigma of the largest blur


def _chosen(shape, seed, probability: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed) < probability


def _between(shape, seed, bounds: tuple[float, float]) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=bounds[0], maxval=bounds[1])


def _blur(images: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur with one sigma per image (sigma ~0: unchanged), edges reflected.

    The batch is laid out as channels of one image, so one depthwise convolution per axis
    blurs every image with its own kernel.
    """
    taps = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
    weights = tf.exp(-(taps[None, :] ** 2) / (2.0 * tf.maximum(sigma, 1e-3)[:, None] ** 2))
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # (B, K)
    x = tf.transpose(images, [3, 1, 2, 0])  # (1, H, W, B)
    pad = [[0, 0], [_BLUR_RADIUS, _BLUR_RADIUS], [_BLUR_RADIUS, _BLUR_RADIUS], [0, 0]]
    x = tf.pad(x, pad, mode="REFLECT")
    kernel = tf.transpose(weights)[:, :, None]  # (K, B, 1)
    x = tf.nn.depthwise_conv2d(x, kernel[None, :, :, :], [1, 1, 1, 1], "VALID")  # along x
    x = tf.nn.depthwise_conv2d(x, kernel[:, None, :, :], [1, 1, 1, 1], "VALID")  # along y
    return tf.transpose(x, [3, 1, 2, 0])


def _jpeg(images: tf.Tensor, quality: tf.Tensor, chosen: tf.Tensor) -> tf.Tensor:
    """The chosen images re-encoded as JPEGs, each at its own quality, and decoded again."""

    def one(args):
        image, q, pick = args
        return tf.cond(pick, lambda: tf.image.adjust_jpeg_quality(image, q), lambda: image)

    return tf.map_fn(one, (images, quality, chosen), fn_output_signature=tf.float32)


def _occlude(images: tf.Tensor, seed) -> tf.Tensor:
    """A rectangle of one random grey level over each image, at a random place and size."""
    b = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    size = tf.cast(IMAGE_SIZE, tf.float32)
    sides = _between([b, 2], seeds[0], OCCLUDER_SIDE) * size
    corner = tf.random.stateless_uniform([b, 2], seeds[1]) * (size - sides)
    grey = tf.random.stateless_uniform([b, 1, 1, 1], seeds[2])
    grid = tf.range(IMAGE_SIZE, dtype=tf.float32)
    inside_x = (grid[None, :] >= corner[:, :1]) & (grid[None, :] < corner[:, :1] + sides[:, :1])
    inside_y = (grid[None, :] >= corner[:, 1:]) & (grid[None, :] < corner[:, 1:] + sides[:, 1:])
    inside = (inside_y[:, :, None] & inside_x[:, None, :])[..., None]
    return tf.where(inside, grey, images)


def degrade(images: tf.Tensor, seed, params: AugmentParams) -> tf.Tensor:
    """What other cameras do to a face: gamma, blur, JPEG, noise and occlusion, each with its probability.

    Applied in the order a camera pipeline would (tone curve, optics, compression, then the
    noise of a new sensor), occlusion last. Keypoints do not move.
    """
    b = tf.shape(images)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 11))
    if params.gamma > 0:
        gamma = tf.exp(_uniform([b, 1, 1, 1], seeds[0], LOG_GAMMA))
        chosen = _chosen([b, 1, 1, 1], seeds[1], params.gamma)
        images = tf.where(chosen, tf.maximum(images, 1e-6) ** gamma, images)
    if params.blur > 0:
        sigma = _between([b], seeds[2], BLUR_SIGMA)
        images = _blur(images, tf.where(_chosen([b], seeds[3], params.blur), sigma, 0.0))
    if params.jpeg > 0:
        quality = tf.cast(_between([b], seeds[4], JPEG_QUALITY), tf.int32)
        images = _jpeg(images, quality, _chosen([b], seeds[5], params.jpeg))
    if params.noise > 0:
        std = _between([b, 1, 1, 1], seeds[6], NOISE_STD)
        std = tf.where(_chosen([b, 1, 1, 1], seeds[7], params.noise), std, 0.0)
        images = images + std * tf.random.stateless_normal(tf.shape(images), seeds[8])
    if params.occlusion > 0:
        chosen = _chosen([b, 1, 1, 1], seeds[9], params.occlusion)
        images = tf.where(chosen, _occlude(images, seeds[10]), images)
    return tf.clip_by_value(images, 0.0, 1.0)


def augment_batch(
    images: tf.Tensor, keypoints: tf.Tensor, seed, params: AugmentParams
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment a batch: (B, 96, 96, 1) float images in 0..1 and (B, 30) pixel keypoints.

    ``seed`` is a shape-(2,) integer tensor; the same seed gives the same augmentation.
    """
    geometry_seed, intensity_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a, t, flipped = random_affines(tf.shape(images)[0], geometry_seed, params)
    images = transform_images(images, a, t)
    keypoints = transform_keypoints(keypoints, a, t, flipped, params.mirror_x)
    images = adjust_intensity(images, intensity_seed, params)
    if any((params.blur, params.noise, params.jpeg, params.gamma, params.occlusion)):
        # a seed of its own, so switching degradations on leaves the geometry stream unchanged
        images = degrade(images, tf.random.experimental.stateless_fold_in(seed, 7), params)
    return images, keypoints
