"""Keras callback that streams per-epoch training values into an MLflow run."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric

from fkp.tracking import tidy

#: Keras names the training-set scores ``rmse``/``mae``; next to ``val_rmse`` (THE score) those names
#: read as the same quantity, so they are logged as what they are
RENAMED = {"rmse": "train_rmse", "mae": "train_mae", "seconds": "epoch_seconds"}


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log every numeric value Keras reports at the end of an epoch, with ``step`` = the 1-based epoch.

    Steps count epochs from 1 like ``history.csv`` and the printed progress, so "best epoch 7"
    is step 7 in MLflow's charts; names are mapped through :data:`RENAMED`.

    The run is addressed by id through a client rather than through the active run, so logging
    works from any thread and whatever run is active there. One ``log_batch`` call per epoch keeps
    it cheap. The optimizer's current learning rate is added as ``lr`` when the logs lack it, so
    schedules show up as a curve next to the losses.
    """

    def __init__(self, run_id: str, *, client: MlflowClient | None = None, prefix: str = "") -> None:
        super().__init__()
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.prefix = prefix

    def _current_lr(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        try:
            return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        except (AttributeError, TypeError, ValueError):
            return None

    def epoch_metrics(self, epoch: int, logs: Mapping[str, Any] | None) -> list[Metric]:
        """The metrics one epoch produces (finite numbers only; NaN would break MLflow charts)."""
        values: dict[str, float] = {}
        for key, value in (logs or {}).items():
            try:
                number = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            values[key] = number
        if "lr" not in values and "learning_rate" not in values and (lr := self._current_lr()) is not None:
            values["lr"] = lr
        stamp = int(time.time() * 1000)
        return [
            Metric(
                key=f"{self.prefix}{RENAMED.get(key, key)}",
                value=tidy(number),
                timestamp=stamp,
                step=int(epoch) + 1,
            )
            # THE score first: MLflow's Compare plots the first metric a run ever logged by default
            for key, number in sorted(values.items(), key=lambda item: item[0] != "val_rmse")
            if math.isfinite(number)
        ]

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        metrics = self.epoch_metrics(epoch, logs)
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
