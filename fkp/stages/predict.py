"""The ``predict`` stage: keypoints for every face of a Kaggle test.csv, written as a submission.

Loading and the forward pass are :mod:`fkp.core.predictor`'s; this module adds the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fkp.atomic import atomic_path
from fkp.core.kaggle_csv import read_id_lookup, read_test, submission_from_predictions, write_submission
from fkp.core.keypoints import COORD_COLUMNS, N_COORDS
from fkp.core.predictor import predict_keypoints, resolve_model

if TYPE_CHECKING:
    import keras

PREDICTIONS_CSV = "predictions.csv"
SUBMISSION_CSV = "submission.csv"
GRID_PNG = "test_predictions.png"
GRID_FACES = 16
_PROGRESS_CHUNK = 512

_log = logging.getLogger(__name__)


def _predict_with_progress(
    model: keras.Model, images: np.ndarray, *, tta_flip: bool, batch_size: int
) -> np.ndarray:
    """Predict in chunks, logging progress, so a long test set shows signs of life."""
    n = len(images)
    parts = []
    for start in range(0, n, _PROGRESS_CHUNK):
        chunk = images[start : start + _PROGRESS_CHUNK]
        parts.append(predict_keypoints(model, chunk, tta_flip=tta_flip, batch_size=batch_size))
        if n > _PROGRESS_CHUNK:
            _log.info("predicted %d/%d test images", start + len(chunk), n)
    return np.concatenate(parts) if parts else np.empty((0, N_COORDS), dtype=np.float32)


def predictions_frame(image_ids: np.ndarray, predictions: np.ndarray) -> pd.DataFrame:
    """``ImageId`` plus the 30 coordinate columns, one row per test image."""
    df = pd.DataFrame(np.asarray(predictions, dtype=np.float64), columns=list(COORD_COLUMNS))
    df.insert(0, "ImageId", np.asarray(image_ids, dtype=np.int64))
    return df


def predict_test(
    model_ref: Any,
    test_csv: str | os.PathLike[str],
    id_lookup_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    tta_flip: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Predict every face of a Kaggle test.csv and write the submission the lookup table asks for.

    Writes (each atomically) ``predictions.csv`` (ImageId + 30 columns), ``submission.csv``
    (``RowId,Location``, one row per lookup row, clipped to 0..96) and a PNG grid of some
    test faces with their predicted keypoints. ``predictions.csv`` keeps the raw, unclipped
    model output. Both inputs are read and checked against each other before the model is
    loaded, so a bad file fails fast and leaves no output behind.
    """
    out_dir = Path(out_dir)
    test = read_test(test_csv)
    lookup = read_id_lookup(id_lookup_csv)
    # map placeholder predictions first: raises on an unknown ImageId / FeatureName now, not later
    submission_from_predictions(lookup, test.image_ids, np.zeros((len(test.image_ids), N_COORDS)))
    model = resolve_model(model_ref)
    _log.info("predicting %d test images (flip averaging %s)", len(test.images), "on" if tta_flip else "off")
    predictions = _predict_with_progress(model, test.images, tta_flip=tta_flip, batch_size=batch_size)
    submission = submission_from_predictions(lookup, test.image_ids, predictions)

    predictions_csv = out_dir / PREDICTIONS_CSV
    with atomic_path(predictions_csv) as tmp:
        predictions_frame(test.image_ids, predictions).to_csv(
            tmp, index=False, float_format="%.4f", lineterminator="\n"
        )
    submission_csv = out_dir / SUBMISSION_CSV
    write_submission(submission_csv, submission["RowId"].to_numpy(), submission["Location"].to_numpy())
    grid_png = _write_grid(test.images, predictions, out_dir / GRID_PNG)
    return {
        "predictions_csv": predictions_csv,
        "submission_csv": submission_csv,
        "grid_png": grid_png,
        "n_images": len(test.images),
        "n_rows": len(submission),
    }


def _write_grid(images: np.ndarray, predictions: np.ndarray, out_png: Path) -> Path | None:
    """Draw a seeded pick of test faces with their predicted keypoints; ``None`` if there are none."""
    if len(images) == 0:
        return None
    from fkp.core.plots import plot_face_grid

    title = f"test faces with predicted keypoints ({len(images)} images)"
    return plot_face_grid(images, None, out_png, predictions=predictions, n=GRID_FACES, title=title)
