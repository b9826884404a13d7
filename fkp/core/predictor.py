"""Load a trained model, however it is named, and predict keypoints with it.

A model is named by a ``.keras`` file, a local MLflow model folder, or an MLflow model URI
(``models:/facial-keypoints-cnn@champion``, ``runs:/<id>/model``). For an MLflow model the
``.keras`` file logged inside it is loaded, so every entry point (this module, the served
pyfunc, the photo tool) runs the very same Keras weights.

TensorFlow and MLflow are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fkp.core.images import to_model_input
from fkp.core.inference import Predictor, compile_predictor, predict_batches
from fkp.core.keypoints import IMAGE_SIZE, N_COORDS
from fkp.errors import DataError

if TYPE_CHECKING:
    import keras

#: Name of the ``.keras`` file inside a logged pyfunc model's artifacts (see :mod:`fkp.serving.pyfunc`).
KERAS_ARTIFACT = "keras_model"
_REBUILD_HINT = "retrain with `fkp train`, or restore it with `dvc checkout models/model.keras`"

# a URI scheme of two or more letters ("models:/", "runs:/", "s3://"); "C:/..." stays a path
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

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

    import fkp.core.models  # noqa: F401  (registers the custom layers and losses saved models refer to)

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot be loaded as a Keras model ({reason}): {_REBUILD_HINT}", file=path) from None


def keras_file_in_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """The ``.keras`` artifact of a pyfunc model folder (:func:`fkp.serving.pyfunc.log_keypoint_model`)."""
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
    from fkp.core.models import model_mirror_x

    cache = model.__dict__.setdefault("_fkp_predictors", {})
    if tta_flip not in cache:
        cache[tta_flip] = compile_predictor(model, tta_flip=tta_flip, mirror_x=model_mirror_x(model))
    return cache[tta_flip]


def predict_model_input(
    model: keras.Model,
    x: np.ndarray,
    *,
    tta_flip: bool = True,
    batch_size: int = 256,
    second_look: bool = True,
) -> np.ndarray:
    """(n, 30) pixel coordinates for float model input ``x`` (n, 96, 96, 1) in 0..1.

    With ``tta_flip`` the prediction is averaged with the one for the mirrored image
    (mapped back), which cancels part of the model's left/right bias. With ``second_look``
    faces framed far from the training framing are framed again and predicted again
    (:mod:`fkp.core.reframe`); callers that frame faces themselves (the photo path) turn it off.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ValueError(f"model input must have shape (n, 96, 96, 1), got {x.shape}")
    if len(x) == 0:
        return np.empty((0, N_COORDS), dtype=np.float32)
    predictor = _predictor(model, tta_flip)
    out = predict_batches(predictor, x, batch_size)
    if out.shape != (len(x), N_COORDS):
        raise ValueError(f"model output has shape {out.shape}, expected ({len(x)}, {N_COORDS})")
    if second_look:
        from fkp.core.reframe import second_look as look_again

        out = look_again(lambda framed: predict_batches(predictor, framed, batch_size), x, out)
    return out


def predict_keypoints(
    model: keras.Model,
    images_u8: np.ndarray,
    *,
    tta_flip: bool = True,
    batch_size: int = 256,
    second_look: bool = True,
) -> np.ndarray:
    """(n, 30) pixel coordinates in Kaggle column order for uint8 faces (n, 96, 96)."""
    images = np.asarray(images_u8)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must have shape (n, 96, 96), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels 0..255, got dtype {images.dtype}")
    return predict_model_input(
        model, to_model_input(images), tta_flip=tta_flip, batch_size=batch_size, second_look=second_look
    )
