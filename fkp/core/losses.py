"""Masked losses and metrics: only observed keypoint coordinates count.

Targets carry NaN for a missing coordinate (the form ``read_training`` returns), so no
separate mask travels through the pipeline. Every function here averages over the
observed coordinates of the whole batch, which is exactly what Kaggle's RMSE averages
over; a row with 8 labels therefore weighs less than a row with 30, as it should.
Predictions and targets are pixel coordinates, so the metrics read in pixels.
"""

from __future__ import annotations

import keras
from keras import ops

_PACKAGE = "fkp"


def _masked_errors(y_true, y_pred):
    """(error with zeros where the target is missing, 0/1 mask of observed targets)."""
    y_true = ops.convert_to_tensor(y_true, dtype=y_pred.dtype)
    observed = ops.logical_not(ops.isnan(y_true))
    error = ops.where(observed, y_pred - ops.where(observed, y_true, 0.0), 0.0)
    return error, ops.cast(observed, y_pred.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def masked_mse(y_true, y_pred):
    """Mean squared error (px^2) over the observed coordinates of the batch; 0 if none is observed."""
    error, mask = _masked_errors(y_true, y_pred)
    return ops.sum(ops.square(error)) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def masked_mae(y_true, y_pred):
    """Mean absolute error (px) over the observed coordinates of the batch; 0 if none is observed."""
    error, mask = _masked_errors(y_true, y_pred)
    return ops.sum(ops.abs(error)) / ops.maximum(ops.sum(mask), 1.0)


#: Wing loss constants, in pixels of the 96x96 image: errors under ``WING_W`` are in the log region.
WING_W = 4.0
WING_EPS = 1.0


@keras.saving.register_keras_serializable(package=_PACKAGE)
def masked_wing(y_true, y_pred):
    """Wing loss (Feng et al., 2018) over the observed coordinates of the batch.

    ``w ln(1 + |e|/eps)`` for errors below ``w`` pixels, ``|e| - C`` above (C makes it continuous).
    Small and medium errors keep a large gradient (MSE's vanishes near zero, which is where the
    last pixel of accuracy is), large ones grow only linearly, so a few mislabelled points do not
    dominate the batch as they do under MSE.
    """
    error, mask = _masked_errors(y_true, y_pred)
    abs_error = ops.abs(error)
    c = WING_W - WING_W * ops.log1p(WING_W / WING_EPS)
    loss = ops.where(abs_error < WING_W, WING_W * ops.log1p(abs_error / WING_EPS), abs_error - c)
    return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)


LOSSES = {"mse": masked_mse, "mae": masked_mae, "wing": masked_wing}


def get_loss(name: str):
    """The masked loss function called ``name`` (``mse`` or ``mae``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


class _MaskedErrorSum(keras.metrics.Metric):
    """Accumulates an error sum and the count of observed coordinates over a whole epoch.

    Averaging per-batch values would weigh a small last batch like a full one; summing
    first gives the exact dataset figure.
    """

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _error_sum(self, error):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        error, mask = _masked_errors(y_true, ops.cast(y_pred, self.dtype))
        self.total.assign_add(self._error_sum(error))
        self.count.assign_add(ops.sum(mask))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedRMSE(_MaskedErrorSum):
    """Root mean squared error in pixels over every observed coordinate seen (Kaggle's metric)."""

    def __init__(self, name: str = "rmse", **kwargs):
        super().__init__(name=name, **kwargs)

    def _error_sum(self, error):
        return ops.sum(ops.square(error))

    def result(self):
        return ops.sqrt(self.total / ops.maximum(self.count, 1.0))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMAE(_MaskedErrorSum):
    """Mean absolute error in pixels over every observed coordinate seen."""

    def __init__(self, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)

    def _error_sum(self, error):
        return ops.sum(ops.abs(error))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)
