"""Predict keypoints with a trained model and write a Kaggle submission.

A model is named by a ``.keras`` file, a local MLflow model folder, or an MLflow model URI
(``models:/facial-keypoints-cnn@champion``, ``runs:/<id>/model``). For an MLflow model the
``.keras`` file logged inside it is loaded, so every entry point (this module, the served
pyfunc, the photo tool) runs the very same Keras weights.

TensorFlow and MLflow are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fkp.atomic import atomic_path
from fkp.errors import DataError
from fkp.images import to_model_input
from fkp.inference import Predictor, compile_predictor, predict_batches
from fkp.kaggle_csv import read_id_lookup, read_test, submission_from_predictions, write_submission
from fkp.keypoints import COORD_COLUMNS, IMAGE_SIZE, N_COORDS

if TYPE_CHECKING:
    import keras

#: Name of the ``.keras`` file inside a logged pyfunc model's artifacts (see :mod:`fkp.serving`).
KERAS_ARTIFACT = "keras_model"
PREDICTIONS_CSV = "predictions.csv"
SUBMISSION_CSV = "submission.csv"
GRID_PNG = "test_predictions.png"
GRID_FACES = 16
_PROGRESS_CHUNK = 512
_REBUILD_HINT = "retrain with `fkp train`, or restore it with `dvc checkout models/model.keras`"

# a URI scheme of two or more letters ("models:/", "runs:/", "s3://"); "C:/..." stays a path
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- loading


def is_model_uri(model_ref: str | os.PathLike[str]) -> bool:
    """True for an MLflow URI such as ``models:/name@champion``; False for a file system path."""
    return bool(_URI.match(str(model_ref)))


def load_keras_file(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` file for inference, with the project's custom layers registered.

    A truncated, empty or otherwise unreadable file is a :class:`DataError` naming the file and
    what to do (Keras would report "File not found" for a file that exists).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise DataError(
            f"is not a Keras model ({size} bytes, truncated or damaged): {_REBUILD_HINT}", file=path
        )
    import keras

    import fkp.models  # noqa: F401  (registers the custom layers and losses saved models refer to)

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot be loaded as a Keras model ({reason}): {_REBUILD_HINT}", file=path) from None


def keras_file_in_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """The ``.keras`` artifact of a pyfunc model folder written by :func:`fkp.serving.log_keypoint_model`."""
    from mlflow.models import Model

    model_dir = Path(model_dir)
    flavor = Model.load(model_dir / "MLmodel").flavors.get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(KERAS_ARTIFACT)
    if not artifact:
        raise DataError(f"not an fkp keypoint model (no {KERAS_ARTIFACT!r} artifact)", file=model_dir)
    return model_dir / artifact["path"]


def load_model(model_ref: str | os.PathLike[str]) -> keras.Model:
    """Load the Keras model behind ``model_ref`` (``.keras`` path, MLflow model folder or URI)."""
    if is_model_uri(model_ref):
        import mlflow

        with tempfile.TemporaryDirectory(prefix="fkp-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=str(model_ref), dst_path=tmp)
            return load_keras_file(keras_file_in_model_dir(local))
    path = Path(model_ref)
    if path.is_dir():
        if not (path / "MLmodel").is_file():
            raise DataError("folder is not an MLflow model (no MLmodel file)", file=path)
        return load_keras_file(keras_file_in_model_dir(path))
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if path.suffix != ".keras":
        raise DataError("expected a .keras model file, an MLflow model folder or a models:/ URI", file=path)
    return load_keras_file(path)


def resolve_model(model_ref: Any) -> keras.Model:
    """``model_ref`` itself if it is already a loaded model, else :func:`load_model` of it."""
    if isinstance(model_ref, str | os.PathLike):
        return load_model(model_ref)
    return model_ref


# --------------------------------------------------------------------------- prediction


def _predictor(model: keras.Model, tta_flip: bool) -> Predictor:
    """The model's compiled forward pass, built once per model and mode (serving calls it often)."""
    from fkp.models import model_mirror_x

    cache = model.__dict__.setdefault("_fkp_predictors", {})
    if tta_flip not in cache:
        cache[tta_flip] = compile_predictor(model, tta_flip=tta_flip, mirror_x=model_mirror_x(model))
    return cache[tta_flip]


def predict_model_input(
    model: keras.Model, x: np.ndarray, *, tta_flip: bool = True, batch_size: int = 256
) -> np.ndarray:
    """(n, 30) pixel coordinates for float model input ``x`` (n, 96, 96, 1) in 0..1.

    With ``tta_flip`` the prediction is averaged with the one for the mirrored image
    (mapped back), which cancels part of the model's left/right bias.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ValueError(f"model input must have shape (n, 96, 96, 1), got {x.shape}")
    if len(x) == 0:
        return np.empty((0, N_COORDS), dtype=np.float32)
    out = predict_batches(_predictor(model, tta_flip), x, batch_size)
    if out.shape != (len(x), N_COORDS):
        raise ValueError(f"model output has shape {out.shape}, expected ({len(x)}, {N_COORDS})")
    return out


def predict_keypoints(
    model: keras.Model, images_u8: np.ndarray, *, tta_flip: bool = True, batch_size: int = 256
) -> np.ndarray:
    """(n, 30) pixel coordinates in Kaggle column order for uint8 faces (n, 96, 96)."""
    images = np.asarray(images_u8)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must have shape (n, 96, 96), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}")
    return predict_model_input(model, to_model_input(images), tta_flip=tta_flip, batch_size=batch_size)


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
    from fkp.plots import plot_face_grid

    title = f"test faces with predicted keypoints ({len(images)} images)"
    return plot_face_grid(images, None, out_png, predictions=predictions, n=GRID_FACES, title=title)
