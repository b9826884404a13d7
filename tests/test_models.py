"""Models output pixel keypoints, survive a save/load round trip, and flip averaging is exact."""

from __future__ import annotations

import random
import threading

import keras
import numpy as np
import pytest

from fkp.core.augment import PIXEL_CENTER, flip_keypoints
from fkp.core.keypoints import IMAGE_SIZE, N_KEYPOINTS
from fkp.core.losses import MaskedRMSE, masked_mse
from fkp.core.models import SoftArgmax, build_model, predict_with_flip
from fkp.params import ModelParams

SMALL = {
    "seed": ModelParams(arch="seed", width=4),
    "lean_dense": ModelParams(arch="lean", width=8, head="dense", head_channels=8),
    "lean_softargmax": ModelParams(arch="lean", width=8, head="softargmax", head_channels=8),
    "lean_softargmax_skip": ModelParams(
        arch="lean", width=8, head="softargmax", head_channels=8, head_skip=True
    ),
}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_outputs_30_coordinates(name):
    model = build_model(SMALL[name], seed=0)
    out = model.predict(images(3), verbose=0)
    assert out.shape == (3, 30)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", ["lean_dense", "lean_softargmax", "lean_softargmax_skip"])
def test_lean_model_starts_inside_the_image_in_pixels(name):
    out = build_model(SMALL[name], seed=0).predict(images(2), verbose=0)
    assert (out > 0).all() and (out < IMAGE_SIZE).all()
    if name == "lean_dense":  # zero-initialised offsets: every keypoint at the image centre
        np.testing.assert_allclose(out, IMAGE_SIZE / 2)


def test_same_seed_same_weights():
    a = build_model(SMALL["lean_dense"], seed=3).get_weights()
    b = build_model(SMALL["lean_dense"], seed=3).get_weights()
    c = build_model(SMALL["lean_dense"], seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_same_seed_same_weights_while_another_thread_draws_random_numbers():
    # Prefect's and MLflow's client threads use Python's global random; they must not reach the weights.
    reference = build_model(SMALL["lean_dense"], seed=3).get_weights()
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        built = build_model(SMALL["lean_dense"], seed=3).get_weights()
    finally:
        stop.set()
        thread.join()
    assert all(np.array_equal(x, y) for x, y in zip(reference, built, strict=True))


def test_unknown_arch_and_head_are_rejected():
    with pytest.raises(ValueError, match="unknown model arch 'vgg'"):
        build_model(ModelParams(arch="vgg"), seed=0)
    with pytest.raises(ValueError, match="unknown model head 'gap'"):
        build_model(ModelParams(arch="lean", head="gap"), seed=0)


@pytest.mark.parametrize("name", ["seed", "lean_softargmax"])
def test_keras_file_round_trip(name, tmp_path):
    model = build_model(SMALL[name], seed=0)
    model.compile(optimizer="adamw", loss=masked_mse, metrics=[MaskedRMSE()])
    x = images(4)
    y = np.full((4, 30), 48.0, dtype=np.float32)
    y[:, 8:] = np.nan
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-4
    )
    assert loaded.evaluate(x, y, verbose=0, return_dict=True)["rmse"] == pytest.approx(
        model.evaluate(x, y, verbose=0, return_dict=True)["rmse"], rel=1e-5
    )


def brightest_pixel_model() -> keras.Model:
    """A perfect single-dot detector: every keypoint at the centre of the brightest pixel."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    conv = keras.layers.Conv2D(N_KEYPOINTS, 1, use_bias=False, kernel_initializer="ones")
    logits = keras.layers.Rescaling(200.0)(conv(inputs))
    return keras.Model(inputs, SoftArgmax()(logits))


def test_soft_argmax_reads_pixel_centres():
    x = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    x[0, 20, 70, 0] = 1.0
    out = brightest_pixel_model().predict(x, verbose=0)[0]
    np.testing.assert_allclose(out[0::2], 70 + PIXEL_CENTER, atol=1e-3)
    np.testing.assert_allclose(out[1::2], 20 + PIXEL_CENTER, atol=1e-3)


def test_flip_averaging_keeps_an_exact_detector_exact():
    x = np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    x[0, 20, 70, 0] = 1.0
    x[1, 60, 11, 0] = 1.0
    model = brightest_pixel_model()
    np.testing.assert_allclose(predict_with_flip(model, x, 2), model.predict(x, verbose=0), atol=1e-3)


def test_flip_averaging_swaps_left_and_right():
    # a model that ignores the image: the mirrored pass must come back mirrored and relabelled
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    zero = keras.layers.Dense(30, kernel_initializer="zeros", bias_initializer="zeros")(
        keras.layers.GlobalAveragePooling2D()(inputs)
    )
    constant = np.linspace(20, 80, 30).astype(np.float32)
    model = keras.Model(inputs, keras.layers.Rescaling(1.0, offset=constant)(zero))
    out = predict_with_flip(model, images(3), batch_size=2)
    expected = (constant + flip_keypoints(constant)) / 2
    np.testing.assert_allclose(out, np.broadcast_to(expected, (3, 30)), rtol=1e-6)
