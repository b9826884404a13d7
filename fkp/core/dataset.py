"""tf.data input pipelines built from in-memory uint8 images and (n, 30) pixel keypoints.

The training stream shuffles row indices, gathers a whole batch at once, converts it to
float and augments it as a batch; it repeats forever (``fit`` counts ``steps_per_epoch``)
so every batch has a distinct step number, which seeds its stateless augmentation. Given
the same seed the stream is identical, batch for batch.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fkp.core.augment import augment_batch
from fkp.params import AugmentParams


def _as_model_input(images_u8: tf.Tensor) -> tf.Tensor:
    """uint8 (B, 96, 96) -> float32 (B, 96, 96, 1) in 0..1, the models' input."""
    return tf.cast(images_u8, tf.float32)[..., None] / 255.0


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches that make one pass over ``n`` rows (the last, partial batch is filled from the next pass)."""
    return max(1, math.ceil(n / batch_size))


def train_dataset(
    images_u8: np.ndarray,
    keypoints: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    augment: AugmentParams | None,
) -> tf.data.Dataset:
    """Endless, shuffled, augmented ``(images, keypoints)`` batches (``augment=None``: no augmentation)."""
    images = tf.constant(np.asarray(images_u8, dtype=np.uint8))
    targets = tf.constant(np.asarray(keypoints, dtype=np.float32))
    n = int(images.shape[0])

    def load(step, index):
        x = _as_model_input(tf.gather(images, index))
        y = tf.gather(targets, index)
        if augment is not None:
            x, y = augment_batch(x, y, tf.stack([tf.constant(seed, tf.int64), step]), augment)
        return x, y

    indices = (
        tf.data.Dataset.range(n)
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .enumerate()
    )
    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def eval_dataset(images_u8: np.ndarray, keypoints: np.ndarray, *, batch_size: int) -> tf.data.Dataset:
    """Batches of ``(images, keypoints)`` in row order, converted once and cached."""
    ds = tf.data.Dataset.from_tensor_slices(
        (np.asarray(images_u8, dtype=np.uint8), keypoints.astype(np.float32))
    )
    ds = ds.batch(batch_size).map(lambda x, y: (_as_model_input(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.cache().prefetch(tf.data.AUTOTUNE)
