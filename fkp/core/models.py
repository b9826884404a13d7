"""Keypoint CNNs: the seed recipe and a lean depthwise-separable network for fast CPU inference.

Every model takes float32 images (None, 96, 96, 1) scaled to 0..1 and outputs 30 pixel
coordinates in Kaggle column order, so ``model.predict`` output is usable as it is. The
lean network predicts normalised offsets ``(coord - 48) / 48`` internally and rescales them
to pixels in its last layer.
"""

from __future__ import annotations

import random

import keras
import numpy as np
from keras import layers

import fkp.core.losses  # noqa: F401  (registers the loss and metrics so saved models load)
from fkp.core.augment import MIRROR_X
from fkp.core.keypoints import IMAGE_SIZE, N_COORDS, N_KEYPOINTS
from fkp.params import ModelParams

_PACKAGE = "fkp"
_HALF = IMAGE_SIZE / 2.0
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


def build_model(params: ModelParams, *, seed: int, mirror_x: float = MIRROR_X) -> keras.Model:
    """Build the network ``params.arch`` names, with weights initialised from ``seed``.

    ``mirror_x`` is the label convention flip augmentation trains with; the model carries it
    (:class:`FlipConvention`) so flip averaging at prediction time uses the same one.
    """
    keras.utils.set_random_seed(seed)  # what the caller does next (dataset shuffles, ...) stays seeded too
    builders = {"seed": _seed_cnn, "lean": _lean_cnn}
    try:
        builder = builders[params.arch]
    except KeyError:
        raise ValueError(f"unknown model arch {params.arch!r}; choose one of {sorted(builders)}") from None
    net = builder(params, _Seeds(seed))
    outputs = FlipConvention(mirror_x=mirror_x, name=FLIP_CONVENTION)(net.output)
    return keras.Model(net.input, outputs, name=net.name)


FLIP_CONVENTION = "flip_convention"


class _Seeds:
    """Seeds for every random initializer and dropout layer, from a generator of the model's own.

    Unseeded, Keras draws them from Python's process-wide ``random``, which any other thread (a
    Prefect or MLflow client, a second training) may draw from meanwhile: the same ``seed`` then
    built different weights. The draws are the ones Keras makes after ``random.seed(seed)``, in
    layer order, so models are initialised exactly as before.
    """

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def __call__(self) -> int:
        return self._rng.randint(1, int(1e9))

    def glorot(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=self())

    def dropout(self, rate: float) -> layers.Dropout:
        return layers.Dropout(rate, seed=self() if rate > 0 else None)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FlipConvention(layers.Layer):
    """Identity on the keypoints that stores how a mirrored image maps x (``mirror_x - x``).

    It travels inside the ``.keras`` file, so every consumer of the model (evaluation,
    the CLI, the served pyfunc) flip-averages with the convention the model was trained on.
    """

    def __init__(self, mirror_x: float = MIRROR_X, **kwargs):
        super().__init__(**kwargs)
        self.mirror_x = float(mirror_x)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mirror_x": self.mirror_x}


def model_mirror_x(model: keras.Model) -> float:
    """The flip convention a model was trained with (the geometric one for older models)."""
    try:
        return model.get_layer(FLIP_CONVENTION).mirror_x
    except ValueError:
        return MIRROR_X


def _seed_cnn(params: ModelParams, seeds: _Seeds) -> keras.Model:
    """The seed recipe: five 3x3 convs, three max-pools, two dense layers, linear 30-unit output."""
    w = params.width
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = inputs
    for filters, pool in ((w, False), (w, True), (2 * w, False), (2 * w, True), (4 * w, True)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=seeds.glorot())(x)
        if pool:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu", kernel_initializer=seeds.glorot())(x)
    x = seeds.dropout(params.dropout)(x)
    x = layers.Dense(128, activation="relu", kernel_initializer=seeds.glorot())(x)
    outputs = layers.Dense(N_COORDS, kernel_initializer=seeds.glorot(), name="keypoints")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_bn(x, seeds: _Seeds, filters: int, kernel: int, strides: int = 1):
    x = layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, kernel_initializer=seeds.glorot()
    )(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _separable_block(x, seeds: _Seeds, filters: int, strides: int):
    """Depthwise 3x3 + pointwise 1x1, each with batch norm; residual when the shape is kept."""
    shortcut = x
    y = layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, depthwise_initializer=seeds.glorot()
    )(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=seeds.glorot())(y)
    y = layers.BatchNormalization()(y)
    if strides == 1 and shortcut.shape[-1] == filters:
        y = layers.Add()([shortcut, y])
    return layers.ReLU()(y)


def _lean_cnn(params: ModelParams, seeds: _Seeds) -> keras.Model:
    """Strided stem to 48x48, separable stages down to 6x6, then a dense or soft-argmax head."""
    w = params.width
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = _conv_bn(inputs, seeds, w, 3, strides=2)  # 48x48
    stages = []
    for filters, depth in ((2 * w, params.depth), (4 * w, params.depth), (8 * w, params.depth)):
        x = _separable_block(x, seeds, filters, strides=2)
        for _ in range(depth - 1):
            x = _separable_block(x, seeds, filters, strides=1)
        stages.append(x)  # 24x24, 12x12, 6x6
    # x: 6x6 at 8w channels
    if params.head == "dense":
        x = _conv_bn(x, seeds, params.head_channels, 1)
        x = layers.Flatten()(x)
        x = seeds.dropout(params.dropout)(x)
        offsets = layers.Dense(N_COORDS, kernel_initializer="zeros", name="offsets")(x)
        outputs = layers.Rescaling(_HALF, offset=_HALF, name="keypoints")(offsets)
    elif params.head == "softargmax":
        hc = params.head_channels
        if params.head_skip:
            # The 6x6 stage knows what the parts are, the 12x12 stage still knows where: both are
            # projected to the head's width (before upsampling, where it is cheap), added, and one
            # separable 3x3 conv makes the 12x12 heatmaps. Costs about a tenth of the plain head.
            x = layers.UpSampling2D(2, interpolation="bilinear")(_conv_bn(x, seeds, hc, 1))
            x = layers.Add()([x, _conv_bn(stages[1], seeds, hc, 1)])
            x = _separable_block(x, seeds, hc, strides=1)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear")(x)  # 12x12 heatmaps
            x = _conv_bn(x, seeds, hc, 3)
        logits = layers.Conv2D(N_KEYPOINTS, 1, kernel_initializer=seeds.glorot(), name="heatmap_logits")(x)
        outputs = SoftArgmax(name="keypoints")(logits)
    else:
        raise ValueError(f"unknown model head {params.head!r}; choose dense or softargmax")
    return keras.Model(inputs, outputs, name=f"lean_{params.head}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftArgmax(layers.Layer):
    """(B, H, W, K) heatmap logits -> (B, 2K) pixel coordinates ``x0, y0, x1, y1, ...``.

    A spatial softmax per keypoint, then the expected position of the cell centres; being
    differentiable, it trains on the coordinate loss directly and resolves sub-cell positions.
    """

    def call(self, logits):
        from keras import ops

        shape = ops.shape(logits)
        h, w, k = logits.shape[1], logits.shape[2], logits.shape[3]
        flat = ops.reshape(ops.transpose(logits, (0, 3, 1, 2)), (shape[0], k, h * w))
        prob = ops.softmax(flat, axis=-1)
        ys = (np.arange(h, dtype=np.float32) + 0.5) * (IMAGE_SIZE / h)
        xs = (np.arange(w, dtype=np.float32) + 0.5) * (IMAGE_SIZE / w)
        grid_x = ops.convert_to_tensor(np.tile(xs, h))
        grid_y = ops.convert_to_tensor(np.repeat(ys, w))
        x = ops.sum(prob * grid_x, axis=-1)
        y = ops.sum(prob * grid_y, axis=-1)
        return ops.reshape(ops.stack([x, y], axis=-1), (shape[0], 2 * k))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[3])


def predict_with_flip(
    model: keras.Model, x: np.ndarray, batch_size: int = 256, *, mirror_x: float | None = None
) -> np.ndarray:
    """Average the predictions for ``x`` and for its mirror image (mapped back), shape (n, 30).

    The mirrored prediction is mapped back with the convention the model carries
    (``x -> mirror_x - x``, left/right keypoints swapped), unless ``mirror_x`` is given.
    """
    from fkp.core.inference import compile_predictor, predict_batches

    mx = model_mirror_x(model) if mirror_x is None else mirror_x
    return predict_batches(compile_predictor(model, tta_flip=True, mirror_x=mx), x, batch_size)
