"""Self-training: a teacher fills the labels nobody gave; the model trains on observed + confident guesses.

Most Kaggle-format faces carry 4 of the 15 keypoints, so the other 11 are learnt from about a third
of the faces. The ``pseudo`` imputation trains a teacher (the configured network, on the observed
labels only, as ``mask`` would), predicts every training face with and without mirroring, and fills a
missing keypoint with the average of the two where they agree within ``max_disagreement`` pixels: a
teacher that contradicts itself under a mirror is guessing, so that keypoint stays missing. Observed
labels are never replaced, and validation faces are never labelled: the validation split only stops
the teacher's training early, exactly as it does for the model itself. It runs in the train stage
(the teacher is a training), so its time counts as training time.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from fkp.params import ImputeParams, ModelParams, Params, TrainParams


@dataclass(frozen=True)
class PseudoLabels:
    """The training targets (observed + accepted guesses) and what the teacher did."""

    targets: np.ndarray
    teacher_val_rmse: float
    filled: int  # missing coordinates given a pseudo-label
    rejected: int  # missing coordinates left missing (the teacher disagreed with its mirror)
    seconds: float  # the teacher's training and predictions: part of what the model cost to train


def agreeing_average(plain: np.ndarray, mirrored: np.ndarray, max_disagreement: float) -> np.ndarray:
    """Average of two (n, 30) predictions, NaN for every keypoint whose two guesses are further apart."""
    average = (plain + mirrored) / 2.0
    gap = np.linalg.norm((plain - mirrored).reshape(len(plain), -1, 2), axis=-1)  # (n, 15) px
    confident = np.repeat(gap <= max_disagreement, 2, axis=1)
    return np.where(confident, average, np.nan).astype(np.float32)


def fill_missing(observed: np.ndarray, guesses: np.ndarray) -> np.ndarray:
    """Observed labels where there are any, the guesses (possibly NaN) elsewhere."""
    return np.where(np.isfinite(observed), observed, guesses).astype(np.float32)


def pseudo_label(
    x_train_u8: np.ndarray,
    observed: np.ndarray,
    x_val_u8: np.ndarray,
    y_val: np.ndarray,
    impute: ImputeParams,
    model: ModelParams,
    train: TrainParams,
    *,
    verbose: bool = True,
) -> PseudoLabels:
    """Train the teacher on the observed labels (NaN = missing) and fill the missing ones it is sure of."""
    from fkp.core.fit import fit_model
    from fkp.core.images import to_model_input
    from fkp.core.inference import compile_predictor, predict_batches
    from fkp.core.models import model_mirror_x

    start = time.perf_counter()
    teacher_params = dataclasses.replace(train, epochs=impute.teacher_epochs, tta_flip=False)
    teacher = fit_model(x_train_u8, observed, x_val_u8, y_val, model, teacher_params, verbose=verbose)
    x = to_model_input(x_train_u8)
    mirror_x = model_mirror_x(teacher.model)
    plain = predict_batches(compile_predictor(teacher.model, tta_flip=False, mirror_x=mirror_x), x, 256)
    both = predict_batches(compile_predictor(teacher.model, tta_flip=True, mirror_x=mirror_x), x, 256)
    mirrored = 2.0 * both - plain  # the flip average is (plain + mirrored) / 2
    targets = fill_missing(observed, agreeing_average(plain, mirrored, impute.max_disagreement))
    missing = ~np.isfinite(observed)
    filled = int((missing & np.isfinite(targets)).sum())
    return PseudoLabels(
        targets, teacher.best_val_rmse, filled, int(missing.sum()) - filled, time.perf_counter() - start
    )


def teach(
    x_train_u8: np.ndarray,
    targets: np.ndarray,
    x_val_u8: np.ndarray,
    y_val: np.ndarray,
    params: Params,
    *,
    verbose: bool = True,
) -> tuple[np.ndarray, dict[str, float]]:
    """The training targets and the figures to log: pseudo-labelled under ``pseudo``, else as they are."""
    if params.impute.strategy != "pseudo":
        return targets, {}
    impute = params.impute
    if verbose:
        print(f"pseudo labels: training the teacher ({impute.teacher_epochs} epochs) ...", flush=True)
    labels = pseudo_label(
        x_train_u8, targets, x_val_u8, y_val, impute, params.model, params.train, verbose=verbose
    )
    if verbose:
        print(
            f"pseudo labels: teacher val_rmse {labels.teacher_val_rmse:.4f} px; filled {labels.filled} "
            f"missing coordinates, left {labels.rejected} (mirror gap > {impute.max_disagreement} px)",
            flush=True,
        )
    info = {
        "impute.teacher_val_rmse": round(labels.teacher_val_rmse, 4),
        "impute.pseudo_filled": labels.filled,
        "impute.pseudo_rejected": labels.rejected,
        "impute.teacher_seconds": round(labels.seconds, 1),
    }
    return labels.targets, info
