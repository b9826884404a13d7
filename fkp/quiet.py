"""Keep third-party start-up banners, progress bars and notices out of the terminal unless asked for.

What fkp prints is the summary people read (one line per result); what the libraries print on the
way (TensorFlow's oneDNN/absl banner at import, MLflow's INFO lines, its cloudpickle notice and
its artifact progress bars) buries it. :func:`install` is the one place that turns them down. It
runs when ``fkp`` is imported, so it is in force before any fkp module imports TensorFlow, whatever
the entrypoint (the CLI, a DVC stage, a Prefect flow, a test). ``FKP_VERBOSE=1`` (or ``fkp -v``)
leaves every library as it is.

TensorFlow writes its banner from C++ at import, through absl, before any log level applies
(``TF_CPP_MIN_LOG_LEVEL`` does not reach it), so the import itself runs with the process's stderr
pointed at a temporary file; what was written there is replayed if the import fails.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType

VERBOSE_ENV = "FKP_VERBOSE"

#: environment defaults, set only when the user has not chosen a value
ENV_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines at run time
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one multi-thousand-character line per download
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables...", signature checks
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "🏃 View run ... at:" after every run on a server
}
#: Python loggers of libraries that report routine progress: (quiet level, verbose level)
QUIET_LOGGERS = {
    "absl": (logging.ERROR, logging.NOTSET),
    "tensorflow": (logging.ERROR, logging.NOTSET),
    "mlflow": (logging.WARNING, logging.INFO),  # MLflow's own default is INFO
}
#: MLflow warns on every pyfunc model logged from a Python object; the model class ships as code
_CLOUDPICKLE_NOTICE = "Passing a Python object as `python_model`"


def is_verbose() -> bool:
    """``FKP_VERBOSE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _DropNotice(logging.Filter):
    """Drops log records whose message starts with a known, harmless notice."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_NOTICE_FILTER = _DropNotice(_CLOUDPICKLE_NOTICE)
_set_by_us: set[str] = set()  # environment variables install() set, so verbose mode can undo them


@contextlib.contextmanager
def stderr_to_file() -> Iterator[tempfile._TemporaryFileWrapper]:
    """Point file descriptor 2 (what C++ code writes to) at a temporary file for the body.

    Yields the file so a caller can replay it; the process's stderr is restored afterwards.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader with stderr captured; replays the capture if the import fails."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with stderr_to_file() as sink:
            try:
                self._loader.exec_module(module)
                return
            except BaseException as error:
                failure = error
                sink.seek(0)
                captured = sink.read()
        os.write(2, captured)  # stderr is back: show why the import failed, then fail as it did
        raise failure

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self._loader, name)


class QuietTensorflowFinder(importlib.abc.MetaPathFinder):
    """Imports the top-level ``tensorflow`` package with its C++ start-up banner captured."""

    name = "tensorflow"

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def _finder() -> QuietTensorflowFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, QuietTensorflowFinder)), None)


@contextlib.contextmanager
def mlflow_notices() -> Iterator[None]:
    """Hold back what MLflow prints for a person at a prompt during the body, unless verbose.

    ``mlflow.register_model`` prints "Successfully registered model", "Registered model ... already
    exists" and "Created version ..." straight to its event stream (no logger level reaches them);
    fkp logs the registry's decision itself, in one line.
    """
    if is_verbose():
        yield
        return
    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    enabled, stream.enabled = stream.enabled, False
    try:
        yield
    finally:
        stream.enabled = enabled


def install(verbose: bool | None = None) -> None:
    """Turn third-party chatter down (or, when ``verbose``, back up); safe to call repeatedly.

    ``verbose`` defaults to :func:`is_verbose`. Environment variables the user set win over ours.
    """
    verbose = is_verbose() if verbose is None else verbose
    mlflow_pyfunc = logging.getLogger("mlflow.pyfunc")
    for name, (quiet, loud) in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(loud if verbose else quiet)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # subprocesses (DVC stages, workers) follow
        while _set_by_us:
            os.environ.pop(_set_by_us.pop(), None)
        if (finder := _finder()) is not None:
            sys.meta_path.remove(finder)
        mlflow_pyfunc.removeFilter(_NOTICE_FILTER)
        return
    for key, value in ENV_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_by_us.add(key)
    if _finder() is None and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, QuietTensorflowFinder())
    mlflow_pyfunc.addFilter(_NOTICE_FILTER)
