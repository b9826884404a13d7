"""Train a keypoint model: masked loss, AdamW with a warm-up + cosine schedule, early stopping.

Early stopping watches the validation RMSE in pixels over observed labels only and puts
back the weights of the best epoch, so the returned model is the one the scores describe.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from fkp.core.dataset import eval_dataset, steps_per_epoch, train_dataset
from fkp.core.images import to_model_input
from fkp.core.losses import MaskedMAE, MaskedRMSE, get_loss
from fkp.core.models import build_model, predict_with_flip
from fkp.params import ModelParams, TrainParams

_EVAL_BATCH = 256


@dataclass
class FitResult:
    """The trained model (best epoch's weights) and what happened on the way.

    ``history`` holds one value per epoch for ``loss``, ``rmse``, ``mae``, ``val_loss``,
    ``val_rmse`` and ``val_mae`` (pixels), ``lr`` and ``seconds``. ``best_epoch`` is 1-based.
    """

    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    best_val_rmse: float
    epochs_run: int
    train_seconds: float
    val_rmse_tta: float | None = None


def learning_rate_schedule(params: TrainParams, steps: int):
    """Linear warm-up then cosine decay to zero over ``params.epochs``, or a constant rate."""
    if params.lr_schedule == "constant":
        return params.lr
    if params.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {params.lr_schedule!r}; choose cosine or constant")
    warmup = min(params.warmup_epochs * steps, params.epochs * steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.lr / 100.0 if warmup else params.lr,
        decay_steps=params.epochs * steps - warmup,
        warmup_target=params.lr if warmup else None,
        warmup_steps=warmup,
    )


def rmse_px(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """RMSE in pixels over the observed (non-NaN) targets, as Kaggle scores it."""
    observed = ~np.isnan(y_true)
    return float(np.sqrt(np.mean((np.asarray(y_pred)[observed] - y_true[observed]) ** 2)))


class _EpochLog(keras.callbacks.Callback):
    """Adds ``lr`` and ``seconds`` to each epoch's logs and prints one progress line."""

    def __init__(self, epochs: int, images_per_epoch: int, verbose: bool):
        super().__init__()
        self.epochs, self.images, self.verbose = epochs, images_per_epoch, verbose
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self._start
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = seconds
        if self.verbose:
            print(
                f"epoch {epoch + 1:3d}/{self.epochs}  loss {logs.get('loss', float('nan')):8.4f}  "
                f"val_rmse {logs.get('val_rmse', float('nan')):7.4f} px  lr {logs['lr']:.2e}  "
                f"{seconds:5.1f} s  {self.images / seconds:6.0f} img/s",
                flush=True,
            )


def fit_model(
    x_train_u8: np.ndarray,
    y_train: np.ndarray,
    x_val_u8: np.ndarray,
    y_val: np.ndarray,
    model_params: ModelParams,
    train_params: TrainParams,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: bool = True,
) -> FitResult:
    """Train ``model_params``' network on uint8 (n, 96, 96) images and (n, 30) pixel targets.

    NaN targets are missing and ignored by the loss; ``y_val`` should be the original
    observed labels. ``callbacks`` run after the built-in ones and see ``lr``/``seconds``.
    """
    tp = train_params
    keras.utils.set_random_seed(tp.seed)
    steps = steps_per_epoch(len(x_train_u8), tp.batch_size)
    augment = tp.augment if tp.augment.enabled else None
    train = train_dataset(x_train_u8, y_train, batch_size=tp.batch_size, seed=tp.seed, augment=augment)
    val = eval_dataset(x_val_u8, y_val, batch_size=_EVAL_BATCH)

    model = build_model(model_params, seed=tp.seed, mirror_x=tp.augment.mirror_x)
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(tp, steps),
        weight_decay=tp.weight_decay,
        use_ema=tp.ema > 0,
        ema_momentum=tp.ema or 0.99,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(
        optimizer=optimizer,
        loss=get_loss(tp.loss),
        metrics=[MaskedRMSE(name="rmse"), MaskedMAE(name="mae")],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_rmse", mode="min", patience=tp.patience, restore_best_weights=True
    )
    # With EMA, validation, early stopping and the returned model all see the averaged weights.
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if tp.ema > 0 else []
    log = _EpochLog(tp.epochs, steps * tp.batch_size, verbose)
    start = time.perf_counter()
    keras_history = model.fit(
        train,
        validation_data=val,
        epochs=tp.epochs,
        steps_per_epoch=steps,
        callbacks=[*ema, log, stopper, *callbacks],
        shuffle=False,  # the dataset shuffles, seeded
        verbose=0,
    )
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in keras_history.history.items()}
    best = int(np.nanargmin(history["val_rmse"]))
    if verbose:
        print(
            f"best epoch {best + 1}: val_rmse {history['val_rmse'][best]:.4f} px ({seconds:.0f} s)",
            flush=True,
        )
    val_rmse_tta = None
    if tp.tta_flip:
        predicted = predict_with_flip(model, to_model_input(x_val_u8), batch_size=_EVAL_BATCH)
        val_rmse_tta = rmse_px(y_val, predicted)
        if verbose:
            print(f"val_rmse with flip averaging {val_rmse_tta:.4f} px", flush=True)
    return FitResult(
        model=model,
        history=history,
        best_epoch=best + 1,
        best_val_rmse=history["val_rmse"][best],
        epochs_run=len(history["val_rmse"]),
        train_seconds=seconds,
        val_rmse_tta=val_rmse_tta,
    )
