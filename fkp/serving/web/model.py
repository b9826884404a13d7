"""The served model: loaded by MLflow URI or ``.keras`` file, swapped when its alias moves.

A ``models:/<name>@<alias>`` reference is resolved to a concrete version first and that
version is loaded, so the API always names the exact version that answered. A poller asks
the registry where the alias points; when it moved, the new version is loaded and warmed up
(its compiled forward pass traced) next to the old one, then the holder's reference is
replaced in one assignment. A request takes the reference once at its start, so every
request runs wholly on one version and none fails during the swap.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fkp.core.keypoints import IMAGE_SIZE
from fkp.core.predictor import is_model_uri

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")

_log = logging.getLogger(__name__)


class ModelUnavailableError(FileNotFoundError):
    """The model reference names nothing that can be loaded (one line, says what to do)."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded model and what the API reports about it."""

    keras_model: Any
    ref: str  # what the server was asked to serve
    uri: str  # what was loaded: models:/name/version, a run URI or a file path
    name: str | None  # registered model name, if any
    version: str  # registry version, or "file:<sha256 prefix>" for a .keras file
    tta_flip: bool
    loaded_at: float

    def describe(self) -> dict[str, Any]:
        """What answers say about the model; a file is named without its folder (no server paths)."""
        if self.name is None and not is_model_uri(self.ref):
            return {
                "ref": Path(self.ref).name,
                "uri": Path(self.uri).name,
                "name": None,
                "version": self.version,
            }
        return {"ref": self.ref, "uri": self.uri, "name": self.name, "version": self.version}

    def predict(self, crops_u8: np.ndarray, *, second_look: bool = False) -> np.ndarray:
        """(n, 30) model-input coordinates for uint8 (n, 96, 96) crops.

        Crops the photo path framed get no second look (:mod:`fkp.core.reframe`): it frames each
        face again from the photo itself; a 96x96 upload, framed by whoever cut it, does.
        """
        from fkp.core.predictor import predict_keypoints

        return predict_keypoints(self.keras_model, crops_u8, tta_flip=self.tta_flip, second_look=second_look)


def alias_target(ref: str) -> tuple[str, str] | None:
    """``(name, alias)`` of a ``models:/<name>@<alias>`` URI, else ``None``."""
    match = _ALIAS_URI.match(ref)
    return (match["name"], match["alias"]) if match else None


def _check_store_exists(ref: str) -> None:
    """Refuse a SQLite store that is not there, rather than let MLflow create an empty one."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ModelUnavailableError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')} to find {ref} in: run `dvc repro` first "
            "(or set MLFLOW_TRACKING_URI), or pass --model path/to/model.keras"
        )


def resolve(ref: str) -> tuple[str, str | None, str]:
    """``(uri to load, registered name or None, version)`` of a model reference.

    An alias is looked up in the registry now; a ``.keras`` file is versioned by a hash of its
    bytes, so a retrained file shows up as a new version too.
    """
    target = alias_target(ref)
    if target:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        name, alias = target
        _check_store_exists(ref)
        try:
            version = MlflowClient().get_model_version_by_alias(name, alias).version
        except MlflowException:
            raise ModelUnavailableError(
                f"no model {ref} in the MLflow registry: run `dvc repro` (or `fkp train` and "
                f"`fkp register`) first, or pass --model path/to/model.keras"
            ) from None
        return f"models:/{name}/{version}", name, str(version)
    match = _VERSION_URI.match(ref)
    if match:
        return ref, match["name"], match["version"]
    if is_model_uri(ref):
        return ref, None, ref
    path = Path(ref)
    if not path.is_file():
        raise ModelUnavailableError(f"model file not found: {path} (give a .keras file or a models:/ URI)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return str(path), None, f"file:{digest}"


def load(ref: str, *, tta_flip: bool) -> ServedModel:
    """Load and warm up the model behind ``ref`` (the first request must not pay the tracing)."""
    from fkp.core.predictor import load_model

    uri, name, version = resolve(ref)
    served = ServedModel(load_model(uri), ref, uri, name, version, tta_flip, time.time())
    served.predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8))
    return served


class ModelHolder:
    """The model requests use now; :meth:`refresh` swaps in a new version when the alias moved."""

    def __init__(
        self, served: ServedModel, *, on_swap: Callable[[ServedModel, ServedModel], None] | None = None
    ) -> None:
        self.current = served
        self.on_swap = on_swap
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the alias's new version if it moved; True when a swap happened.

        A registry or loading failure is logged and the current model keeps serving.
        """
        old = self.current
        if alias_target(old.ref) is None:
            return False
        with self._refresh_lock:
            try:
                _, _, version = resolve(old.ref)
                if version == old.version:
                    return False
                new = load(old.ref, tta_flip=old.tta_flip)
            except Exception as error:  # keep serving what works; say why the new one is not used
                _log.warning(
                    "model reload of %s failed, still serving version %s: %s", old.ref, old.version, error
                )
                return False
            self.current = new
        _log.info("model %s moved: now serving version %s (was %s)", old.ref, new.version, old.version)
        if self.on_swap:
            self.on_swap(old, new)
        return True

    def start_polling(self, seconds: float) -> None:
        """Check the alias every ``seconds`` in a daemon thread (nothing to do for a fixed model)."""
        if seconds <= 0 or alias_target(self.current.ref) is None:
            return

        def poll() -> None:
            while not self._stop.wait(seconds):
                self.refresh()

        self._thread = threading.Thread(target=poll, name="fkp-model-poller", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
