"""Self-training: a teacher fills the labels nobody gave; the model trains on observed + confident guesses.

Most Kaggle-format faces carry 4 of the 15 keypoints, so the other 11 are learnt from about a third
of the faces. The ``pseudo`` imputation trains a teacher (the configured network, on the observed
labels only, as ``mask`` would), predicts every training face with and without mirroring, and fills a
missing keypoint with the average of the two where they agree within ``max_disagreement`` pixels: a
teacher that contradicts itself under a mirror is guessing, so that keypoint stays missing. Observed
labels are never replaced, and validation faces are never labelled: the validation split only stops
the teacher's training early, exactly as it does for the model itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fkp.impute import impute_training_rows
from fkp.params import ImputeParams, ModelParams, TrainParams


@dataclass(frozen=True)
class PseudoLabels:
    """Training rows and their targets (observed + accepted guesses), and what the teacher did."""

    rows: np.ndarray
    targets: np.ndarray
    teacher_val_rmse: float
    filled: int  # missing coordinates given a pseudo-label
    rejected: int  # missing coordinates left missing (the teacher disagreed with its mirror)


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
    images_u8: np.ndarray,
    keypoints: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    impute: ImputeParams,
    model: ModelParams,
    train: TrainParams,
    *,
    verbose: bool = True,
) -> PseudoLabels:
    """Train the teacher on the observed training labels and fill the missing ones it is sure of."""
    from fkp.fit import fit_model
    from fkp.images import to_model_input
    from fkp.inference import compile_predictor, predict_batches
    from fkp.models import model_mirror_x

    rows, observed = impute_training_rows(keypoints, train_rows, "mask")
    teacher_params = dataclasses.replace(train, epochs=impute.teacher_epochs, tta_flip=False)
    teacher = fit_model(
        images_u8[rows],
        observed,
        images_u8[val_rows],
        keypoints[val_rows],
        model,
        teacher_params,
        verbose=verbose,
    )
    x = to_model_input(images_u8[rows])
    mirror_x = model_mirror_x(teacher.model)
    plain = predict_batches(compile_predictor(teacher.model, tta_flip=False, mirror_x=mirror_x), x, 256)
    both = predict_batches(compile_predictor(teacher.model, tta_flip=True, mirror_x=mirror_x), x, 256)
    mirrored = 2.0 * both - plain  # the flip average is (plain + mirrored) / 2
    guesses = agreeing_average(plain, mirrored, impute.max_disagreement)
    targets = fill_missing(observed, guesses)
    missing = ~np.isfinite(observed)
    filled = int((missing & np.isfinite(targets)).sum())
    return PseudoLabels(rows, targets, teacher.best_val_rmse, filled, int(missing.sum()) - filled)
