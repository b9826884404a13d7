"""The MLflow pyfunc wrapper that makes a trained keypoint model servable.

The logged model carries the ``.keras`` file as an artifact and a copy of the ``fkp``
package as code, so ``mlflow models serve -m models:/facial-keypoints-cnn@champion`` needs
nothing but the pinned requirements. Requests are a DataFrame with an ``Image`` column of
Kaggle pixel strings; responses are the 30 Kaggle coordinate columns. Flip averaging is on
or off per model (``model_config``) and can be overridden per request (``params``).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from fkp.images import format_images, parse_images
from fkp.keypoints import COORD_COLUMNS, IMAGE_COLUMN, IMAGE_SIZE
from fkp.predict import KERAS_ARTIFACT, load_keras_file, predict_model_input

DEFAULT_BATCH_SIZE = 256
_REQUEST = "request"  # the "file" named in errors about a request's Image column
# distributions the served model imports; each is pinned to the version installed here
_SERVING_DISTRIBUTIONS = ("mlflow", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "pyyaml")


def _as_bool(value: Any) -> bool:
    """A flag from a request: JSON booleans, or the strings/numbers people write for them."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def images_from_input(model_input: Any) -> np.ndarray:
    """Model input (n, 96, 96, 1) float32 in 0..1 from a request.

    Accepts a DataFrame with an ``Image`` column of Kaggle pixel strings, or an array of
    shape (n, 96, 96) / (n, 96, 96, 1) holding uint8 (or integer) pixels 0..255 or floats 0..1.
    """
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(
                f"input needs an {IMAGE_COLUMN!r} column, got columns {list(model_input.columns)}"
            )
        images = parse_images(model_input[IMAGE_COLUMN].tolist(), file=_REQUEST)
        return (images.astype(np.float32) / 255.0)[..., None]
    x = np.asarray(model_input)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"image array must have shape (n, 96, 96) or (n, 96, 96, 1), got {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError("integer pixels must lie in 0..255")
        return (x.astype(np.float32) / 255.0)[..., None]
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            raise ValueError("float pixels must be finite and lie in 0..1 (pass uint8 for 0..255)")
        return x.astype(np.float32)[..., None]
    raise ValueError(f"unsupported image array dtype {x.dtype}")


class KeypointPyfunc(mlflow.pyfunc.PythonModel):
    """Serves a Keras keypoint model: Kaggle ``Image`` strings (or pixel arrays) in, 30 coordinates out."""

    def load_context(self, context) -> None:
        self._model = load_keras_file(context.artifacts[KERAS_ARTIFACT])
        config = context.model_config or {}
        self._tta_flip = _as_bool(config.get("tta_flip", True))
        self._batch_size = int(config.get("batch_size", DEFAULT_BATCH_SIZE))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """(n, 30) coordinates as a DataFrame with the Kaggle column names.

        Served requests arrive as a DataFrame (the signature's ``Image`` column); Python
        callers of the unwrapped model may also pass a pixel array (see :func:`images_from_input`).
        ``params={"tta_flip": False}`` switches flip averaging off for this request.
        """
        x = images_from_input(model_input)
        tta_flip = self._tta_flip
        if params and params.get("tta_flip") is not None:
            tta_flip = _as_bool(params["tta_flip"])
        coords = predict_model_input(self._model, x, tta_flip=tta_flip, batch_size=self._batch_size)
        index = model_input.index if isinstance(model_input, pd.DataFrame) else None
        return pd.DataFrame(coords.astype(np.float64), columns=list(COORD_COLUMNS), index=index)


def model_signature(tta_flip: bool = True) -> ModelSignature:
    """``Image`` string column in, 30 double columns out, optional ``tta_flip`` request parameter."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("double", name) for name in COORD_COLUMNS]),
        params=ParamSchema([ParamSpec("tta_flip", "boolean", tta_flip)]),
    )


def _example_images() -> np.ndarray:
    """Two deterministic 96x96 images for the input example when the caller gives none."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    radial = np.hypot(xx - 48, (yy - 48) * 0.8)
    light = np.clip(220 - 2.5 * radial, 20, 255)
    return np.stack([light, light[:, ::-1] * 0.8]).astype(np.uint8)


def input_example(images: np.ndarray | None = None) -> pd.DataFrame:
    """A request of one or two Image strings, as stored with the model and shown by the server."""
    chosen = _example_images() if images is None else np.asarray(images, dtype=np.uint8)[:2]
    return pd.DataFrame({IMAGE_COLUMN: format_images(chosen)})


def serving_requirements() -> list[str]:
    """Pinned pip requirements of the served model: the versions this environment runs."""
    pins = []
    for dist in _SERVING_DISTRIBUTIONS:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. only one of tensorflow / tensorflow-cpu is installed
    return pins


def _copy_package(dest: Path) -> Path:
    """A clean copy of the ``fkp`` package (no bytecode caches) to ship as the model's code."""
    source = Path(__file__).resolve().parent
    target = dest / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_keypoint_model(
    keras_path: str | os.PathLike[str],
    *,
    name: str = "model",
    tta_flip: bool = True,
    input_example_images: np.ndarray | None = None,
) -> ModelInfo:
    """Log ``keras_path`` as a servable pyfunc model in the active MLflow run.

    ``input_example_images`` (uint8 (m, 96, 96)) supplies the stored request example (first
    two faces); by default two synthetic images are used. Register the returned
    ``model_uri`` to make it a version of the registered model.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_keypoint_model needs an active MLflow run (inside mlflow.start_run())")
    keras_path = Path(keras_path)
    if not keras_path.is_file():
        raise FileNotFoundError(f"model not found: {keras_path}")
    with tempfile.TemporaryDirectory(prefix="fkp-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=KeypointPyfunc(),
            artifacts={KERAS_ARTIFACT: str(keras_path)},
            code_paths=[str(_copy_package(Path(tmp)))],
            signature=model_signature(tta_flip),
            input_example=input_example(input_example_images),
            pip_requirements=serving_requirements(),
            model_config={"tta_flip": tta_flip, "batch_size": DEFAULT_BATCH_SIZE},
        )
