"""The MLflow pyfunc wrapper that makes a trained keypoint model servable.

The logged model carries the ``.keras`` file as an artifact, a copy of the ``fkp`` package as
code, and the model itself as code (MLflow's models-from-code, :mod:`fkp.serving.pyfunc_model`), not as
a pickle: loading it runs only the reviewed source, never bytes from the artifact store.
``mlflow models serve -m models:/facial-keypoints-cnn@champion`` needs nothing but the pinned
requirements. Requests are a DataFrame with an ``Image`` column of Kaggle pixel strings;
responses are the 30 Kaggle coordinate columns. Flip averaging is on or off per model
(``model_config``) and can be overridden per request (``params``).

A bad request gets HTTP 400 whose ``message`` is one line saying what is wrong (no stack trace,
no server paths, no echo of the request); so do unknown columns and params (MLflow's schema
enforcement would drop them with only a warning in the server log) and batches above
``max_batch`` rows (``model_config``, env ``FKP_SERVE_MAX_BATCH`` overrides it).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from fkp.core.images import format_images, parse_images
from fkp.core.keypoints import COORD_COLUMNS, IMAGE_COLUMN, IMAGE_SIZE
from fkp.core.predictor import KERAS_ARTIFACT, load_keras_file, predict_model_input
from fkp.errors import DataError

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_BATCH = 1024
MAX_BATCH_ENV = "FKP_SERVE_MAX_BATCH"
MODEL_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
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


class RequestError(MlflowException):
    """A bad request: HTTP 400 whose ``message`` is the one-line reason and nothing else.

    MLflow's scoring server prefixes a failing request's message with the whole request
    (``Failed to predict data '<DataFrame>'``); the setter below keeps the reason alone, so the
    answer stays one line and echoes nothing back.
    """

    def __init__(self, reason: str) -> None:
        self._reason = " ".join(str(reason).split())
        super().__init__(self._reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, _value: str) -> None:
        pass


class _DroppedInputs(logging.Filter):
    """Collects, per thread, what MLflow's schema enforcement is about to drop from a request.

    MLflow ignores unknown columns and params with a warning just before it calls the model, in
    the same thread; the model then refuses the request instead of silently ignoring them.
    """

    _MARKERS = ("Found extra inputs", "Unrecognized params")

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self._MARKERS):
            self.local.__dict__.setdefault("messages", []).append(message)
        return True

    def pop(self) -> list[str]:
        return self.local.__dict__.pop("messages", [])


_DROPPED = _DroppedInputs()


def refusal_for_dropped(messages: list[str]) -> str | None:
    """The one-line refusal for inputs MLflow dropped (see :class:`_DroppedInputs`), if any."""
    reasons = []
    for message in messages:
        names = re.search(r"\[[^\]]*\]", message)
        listed = names.group(0) if names else "?"
        if message.startswith("Found extra inputs"):
            reasons.append(f"unknown column(s) {listed}: a request has only the column {IMAGE_COLUMN!r}")
        else:
            reasons.append(f"unknown param(s) {listed}: the only param is 'tta_flip'")
    return "; ".join(reasons) or None


class KeypointPyfunc(mlflow.pyfunc.PythonModel):
    """Serves a Keras keypoint model: Kaggle ``Image`` strings (or pixel arrays) in, 30 coordinates out."""

    def load_context(self, context) -> None:
        self._model = load_keras_file(context.artifacts[KERAS_ARTIFACT])
        config = context.model_config or {}
        self._tta_flip = _as_bool(config.get("tta_flip", True))
        self._batch_size = int(config.get("batch_size", DEFAULT_BATCH_SIZE))
        self._max_batch = int(os.environ.get(MAX_BATCH_ENV) or config.get("max_batch", DEFAULT_MAX_BATCH))
        for name in ("mlflow.models.utils", "mlflow.pyfunc"):
            if _DROPPED not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_DROPPED)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """(n, 30) coordinates as a DataFrame with the Kaggle column names.

        Served requests arrive as a DataFrame (the signature's ``Image`` column); Python
        callers of the unwrapped model may also pass a pixel array (see :func:`images_from_input`).
        ``params={"tta_flip": False}`` switches flip averaging off for this request.
        """
        if refusal := refusal_for_dropped(_DROPPED.pop()):
            raise RequestError(refusal)
        if len(model_input) > self._max_batch:
            raise RequestError(
                f"{len(model_input)} rows in one request, above the limit of {self._max_batch}: "
                "split the request"
            )
        try:
            x = images_from_input(model_input)
        except (DataError, ValueError) as error:
            raise RequestError(str(error)) from None
        tta_flip = self._tta_flip
        if params and params.get("tta_flip") is not None:
            tta_flip = _as_bool(params["tta_flip"])
        try:
            coords = predict_model_input(self._model, x, tta_flip=tta_flip, batch_size=self._batch_size)
        except Exception:
            logging.getLogger(__name__).exception("prediction failed")
            raise MlflowException(
                "prediction failed (see the server log)", error_code=INTERNAL_ERROR
            ) from None
        index = model_input.index if isinstance(model_input, pd.DataFrame) else None
        return pd.DataFrame(coords.astype(np.float64), columns=list(COORD_COLUMNS), index=index)


def model_signature(tta_flip: bool = True) -> ModelSignature:
    """``Image`` string column in, 30 double columns out, optional ``tta_flip`` request parameter.

    ``Image`` is declared optional although every request needs it: MLflow refuses a request
    without a required column before the model is called, with a message that prints the whole
    request; declared optional, the request reaches :meth:`KeypointPyfunc.predict`, which refuses
    it in one line (``unknown column(s) [...]`` or ``input needs an 'Image' column``).
    """
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN, required=False)]),
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
    source = Path(__file__).resolve().parents[1]  # the fkp package
    target = dest / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_keypoint_model(
    keras_path: str | os.PathLike[str],
    *,
    name: str = "model",
    tta_flip: bool = True,
    input_example_images: np.ndarray | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> ModelInfo:
    """Log ``keras_path`` as a servable pyfunc model in the active MLflow run.

    ``input_example_images`` (uint8 (m, 96, 96)) supplies the stored request example (first
    two faces); by default two synthetic images are used. ``max_batch`` bounds the rows of one
    request to the served model. Register the returned
    ``model_uri`` to make it a version of the registered model.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_keypoint_model needs an active MLflow run (inside mlflow.start_run())")
    keras_path = Path(keras_path)
    if not keras_path.is_file():
        raise FileNotFoundError(f"model not found: {keras_path}")
    with tempfile.TemporaryDirectory(prefix="fkp-code-") as tmp:
        staged = Path(tmp) / "model.keras"  # the artifact's name, whatever the file is called here
        shutil.copyfile(keras_path, staged)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={KERAS_ARTIFACT: str(staged)},
            code_paths=[str(_copy_package(Path(tmp)))],
            signature=model_signature(tta_flip),
            input_example=input_example(input_example_images),
            pip_requirements=serving_requirements(),
            model_config=_non_default_config(tta_flip=tta_flip, max_batch=max_batch),
        )


def _non_default_config(*, tta_flip: bool, max_batch: int) -> dict[str, Any]:
    """The serving settings that differ from :class:`KeypointPyfunc`'s defaults (which travel with its code).

    MLflow logs a model's ``model_config`` as params of the run: a ``batch_size 256`` there sat beside
    the training's ``train.batch_size 64`` and read as if the model had been trained with it.
    """
    chosen = {"tta_flip": tta_flip, "max_batch": max_batch}
    defaults = {"tta_flip": True, "max_batch": DEFAULT_MAX_BATCH}
    return {key: value for key, value in chosen.items() if value != defaults[key]}
