"""Known failures as one line (what is wrong, where, what to do) and an exit code.

The command line prints these instead of a traceback; ``fkp -v`` (or ``FKP_TRACEBACK=1``) shows
the traceback too. Anything not recognised here is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from fkp.errors import DataError
from fkp.safety.leftovers import Terminated

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_STORE = 4
EXIT_SYSTEM = 5
EXIT_PORT_IN_USE = 6
EXIT_INTERRUPTED = 130

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}


@dataclass(frozen=True)
class Failure:
    message: str
    code: int


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _tracking_uri() -> str:
    try:
        import mlflow

        return mlflow.get_tracking_uri()
    except Exception:
        return "the MLflow store"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (plain or ``file:`` form), else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path[len("file:") :] if path.startswith("file:") else path)


def store_failure(text: str) -> Failure:
    """What a tracking-store error means for the user (read-only, missing or locked database)."""
    lower = text.lower()
    where = _tracking_uri()
    database = _sqlite_file(where)
    gone = database is not None and not database.exists()
    if gone and ("readonly database" in lower or "no such table" in lower):
        what = "was deleted or moved while the step ran: restore mlflow.db, or rerun to start a new store"
    elif "readonly database" in lower or "read-only" in lower:
        what = "is read-only: make the file and its folder writable (chmod u+w), or set MLFLOW_TRACKING_URI"
    elif "no such table" in lower or "unable to open database" in lower:
        what = (
            "is missing or was replaced while the step ran: restore mlflow.db, or rerun the step to "
            "start a new store"
        )
    elif "database is locked" in lower:
        what = "is busy (locked by another process): rerun the step when it is done"
    elif "disk i/o error" in lower or "database disk image is malformed" in lower:
        what = "is damaged or on a failing disk: restore mlflow.db from a backup"
    else:
        what = f"failed: {_first_line(text)}"
    return Failure(f"MLflow store {where} {what}", EXIT_STORE)


def _os_failure(error: OSError) -> Failure | None:
    where = error.filename or "a file"
    if error.errno in _DISK_FULL:
        return Failure(f"no space left writing {where}: free disk space and rerun", EXIT_SYSTEM)
    if error.errno in _NO_ACCESS:
        return Failure(f"permission denied on {where}: make it writable and rerun", EXIT_SYSTEM)
    if error.errno == errno.EADDRINUSE:
        return Failure(
            f"{where} is already in use: stop what listens there or pick another --port", EXIT_PORT_IN_USE
        )
    if error.errno == errno.ELOOP:
        return Failure(f"{where}: symbolic link loop", EXIT_BAD_INPUT)
    return None


def _is_store_error(error: BaseException) -> bool:
    kind = type(error)
    if kind.__module__.startswith(("sqlalchemy", "sqlite3")):
        return True
    if kind.__name__ == "MlflowException":
        return True
    cause = error.__cause__ or error.__context__
    return cause is not None and type(cause).__module__.startswith(("sqlalchemy", "sqlite3"))


def describe(error: BaseException) -> Failure | None:
    """The one-line message and exit code of a known failure; ``None`` for anything else.

    A signal can arrive inside library code that replaces our exception with its own (TensorFlow,
    tracing a function, reports a broken graph stack instead): once a signal was received, whatever
    ends the step is reported as that signal.
    """
    from fkp.safety import leftovers

    if isinstance(error, Terminated):
        return Failure("stopped by a signal; nothing half-written was kept", int(error.code or 143))
    if leftovers.received_signal is not None and not isinstance(error, KeyboardInterrupt):
        return Failure("stopped by a signal; nothing half-written was kept", 128 + leftovers.received_signal)
    if isinstance(error, KeyboardInterrupt):
        return Failure("interrupted; nothing half-written was kept", EXIT_INTERRUPTED)
    if isinstance(error, DataError):
        return Failure(f"bad input: {_first_line(str(error))}", EXIT_BAD_INPUT)
    if isinstance(error, FileNotFoundError):
        return Failure(_first_line(str(error)), EXIT_BAD_INPUT)
    if isinstance(error, OSError) and (failure := _os_failure(error)) is not None:
        return failure
    if _is_store_error(error):
        text = str(getattr(error, "message", "") or error)
        cause = error.__cause__ or error.__context__
        return store_failure(f"{text}\n{cause}" if cause is not None else text)
    return None
