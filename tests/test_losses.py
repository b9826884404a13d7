"""Masked loss and metrics count observed coordinates only."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fkp.core.losses import (
    WING_EPS,
    WING_W,
    MaskedMAE,
    MaskedRMSE,
    get_loss,
    masked_mae,
    masked_mse,
    masked_wing,
)


def targets_and_predictions():
    y_true = np.array([[10.0, 20.0, np.nan, np.nan], [30.0, np.nan, 50.0, 60.0]], dtype=np.float32)
    y_pred = np.array([[11.0, 18.0, 500.0, -500.0], [30.0, 999.0, 53.0, 60.0]], dtype=np.float32)
    return y_true, y_pred


def test_masked_mse_averages_observed_coordinates_only():
    y_true, y_pred = targets_and_predictions()
    # observed errors: 1, -2, 0, 3, 0 -> (1 + 4 + 0 + 9 + 0) / 5
    assert float(masked_mse(y_true, y_pred)) == pytest.approx(14.0 / 5.0)
    # counting the missing targets (here as zeros) would give a very different loss
    assert float(masked_mse(np.nan_to_num(y_true), y_pred)) > 1000.0


def test_masked_mae_averages_observed_coordinates_only():
    y_true, y_pred = targets_and_predictions()
    assert float(masked_mae(y_true, y_pred)) == pytest.approx(6.0 / 5.0)


def test_gradient_is_finite_and_zero_for_missing_targets():
    y_true, y_pred = targets_and_predictions()
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        loss = masked_mse(tf.constant(y_true), pred)
    grad = tape.gradient(loss, pred).numpy()
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[np.isnan(y_true)], 0.0)
    assert grad[0, 0] == pytest.approx(2 * 1.0 / 5.0)


def test_all_missing_batch_gives_zero_loss():
    y_true = np.full((2, 4), np.nan, dtype=np.float32)
    assert float(masked_mse(y_true, np.ones((2, 4), np.float32))) == 0.0


def test_metrics_accumulate_exactly_over_batches():
    y_true, y_pred = targets_and_predictions()
    rmse, mae = MaskedRMSE(), MaskedMAE()
    for metric in (rmse, mae):
        metric.update_state(y_true[:1], y_pred[:1])  # 2 observed: errors 1, -2
        metric.update_state(y_true[1:], y_pred[1:])  # 3 observed: errors 0, 3, 0
    assert float(rmse.result()) == pytest.approx(np.sqrt(14.0 / 5.0))
    assert float(mae.result()) == pytest.approx(6.0 / 5.0)
    rmse.reset_state()
    assert float(rmse.result()) == 0.0


def test_unknown_loss_name_is_rejected():
    assert get_loss("mse") is masked_mse
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        get_loss("huber")


def test_wing_loss_is_log_then_linear_continuous_and_masked():
    def wing(error: float, label: float = 10.0) -> float:
        return float(
            masked_wing(
                np.array([[label, np.nan]], np.float32), np.array([[label + error, 99.0]], np.float32)
            )
        )

    assert wing(0.0) == 0.0
    assert wing(1.0) == pytest.approx(WING_W * np.log1p(1.0 / WING_EPS), rel=1e-5)
    assert wing(-1.0) == pytest.approx(wing(1.0), rel=1e-6)
    # continuous at w, then slope 1 (a gross error grows linearly, not quadratically)
    assert wing(WING_W - 1e-3) == pytest.approx(wing(WING_W + 1e-3), abs=1e-2)
    assert wing(WING_W + 11.0) - wing(WING_W + 1.0) == pytest.approx(10.0, rel=1e-4)
    # steeper than MSE near zero: small errors still pull
    assert wing(0.5) > 0.5**2
    assert get_loss("wing") is masked_wing
