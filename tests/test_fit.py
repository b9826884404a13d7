"""fit_model trains reproducibly on a tiny synthetic set and returns the best epoch's model."""

from __future__ import annotations

import numpy as np
import pytest

from fkp.core.dataset import train_dataset
from fkp.core.fit import fit_model, rmse_px
from fkp.core.images import to_model_input
from fkp.core.keypoints import IMAGE_SIZE
from fkp.params import AugmentParams, ModelParams, TrainParams

MODEL = ModelParams(arch="lean", width=8, depth=1, head="dense", head_channels=8)
TRAIN = TrainParams(epochs=2, batch_size=16, lr=3e-3, warmup_epochs=1, patience=5, seed=7, tta_flip=True)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark images with bright squares at four random keypoints; 2/3 of the rows partly labelled."""
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(20, 76, size=(n, 30)).astype(np.float32)
    images = rng.integers(0, 40, size=(n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in range(n):
        for x, y in keypoints[i].reshape(-1, 2)[:4]:
            images[i, int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    keypoints[rng.random(n) < 2 / 3, 8:] = np.nan
    return images, keypoints


@pytest.fixture(scope="module")
def data():
    return (*synthetic(64, 0), *synthetic(24, 1))


@pytest.mark.slow
def test_fit_returns_history_and_best_model(data):
    x_train, y_train, x_val, y_val = data
    result = fit_model(x_train, y_train, x_val, y_val, MODEL, TRAIN, verbose=False)
    for key in ("loss", "val_rmse", "val_mae", "lr", "seconds"):
        assert len(result.history[key]) == 2, key
    assert result.epochs_run == 2
    assert 1 <= result.best_epoch <= 2
    assert result.best_val_rmse == min(result.history["val_rmse"])
    # the returned weights are the best epoch's: re-scoring them gives the recorded figure
    predicted = result.model.predict(to_model_input(x_val), verbose=0)
    assert rmse_px(y_val, predicted) == pytest.approx(result.best_val_rmse, rel=1e-4)
    assert result.val_rmse_tta is not None and np.isfinite(result.val_rmse_tta)


@pytest.mark.slow
def test_fit_is_reproducible(data):
    x_train, y_train, x_val, y_val = data
    first = fit_model(x_train, y_train, x_val, y_val, MODEL, TRAIN, verbose=False)
    second = fit_model(x_train, y_train, x_val, y_val, MODEL, TRAIN, verbose=False)
    for key in ("loss", "val_rmse", "val_mae", "lr"):
        np.testing.assert_allclose(first.history[key], second.history[key], rtol=1e-4, err_msg=key)


def test_train_stream_is_deterministic_and_keeps_missing_labels(data):
    x_train, y_train, _, _ = data

    def first_batches(seed: int):
        ds = train_dataset(x_train, y_train, batch_size=16, seed=seed, augment=AugmentParams())
        return [(x.numpy(), y.numpy()) for x, y in ds.take(5)]  # more than one pass over 64 rows

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][1], c[0][1])
    images, keypoints = a[0]
    assert images.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 1) and images.dtype == np.float32
    assert keypoints.shape == (16, 30)
    # augmentation moves labels but never invents or drops one
    labelled = sorted(np.isnan(y).sum() for y in y_train)
    assert all(np.isnan(row).sum() in labelled for row in keypoints)


@pytest.mark.slow
def test_ema_weights_are_what_is_validated_and_returned(data):
    """With ``train.ema`` the best epoch's averaged weights come back, and they score as recorded."""
    import dataclasses

    x_train, y_train, x_val, y_val = data
    params = dataclasses.replace(TRAIN, epochs=3, ema=0.9, tta_flip=False)
    plain = fit_model(
        x_train, y_train, x_val, y_val, MODEL, dataclasses.replace(params, ema=0.0), verbose=False
    )
    result = fit_model(x_train, y_train, x_val, y_val, MODEL, params, verbose=False)
    predicted = result.model.predict(to_model_input(x_val), verbose=0)
    assert rmse_px(y_val, predicted) == pytest.approx(result.best_val_rmse, rel=1e-4)
    # same seed and data: only the averaging differs, so the validation curves must differ
    assert not np.allclose(plain.history["val_rmse"], result.history["val_rmse"])
