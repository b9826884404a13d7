"""Temporaries of dead processes are removed on the next start; signals end a step cleanly.

Every temporary fkp writes (see :mod:`fkp.atomic`, :mod:`fkp.safety.swap`, the import staging
folder) is a dot-name beside its target, carrying its owner's mark (:func:`fkp.safety.owner.token`).
SIGTERM, SIGHUP and SIGINT become exceptions, so ``finally`` blocks and context managers remove
what the step was writing and MLflow marks the run FAILED; SIGKILL cannot be caught, and what it
leaves is removed by :func:`remove_stale` at the next start of any step.
"""

from __future__ import annotations

import _thread
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from fkp.safety.owner import owner_of_name

#: where fkp writes outputs (relative to the project root); each is scanned, not recursed into
OUTPUT_FOLDERS = (
    ".",
    "models",
    "data",
    "data/raw",
    "data/prepared",
    "reports",
    "reports/train",
    "reports/eval",
    "reports/predict",
    "reports/validation",
)

_log = logging.getLogger(__name__)


class Terminated(SystemExit):
    """The process got SIGTERM or SIGHUP: unwind (cleaning up) and exit with 128 + signal number."""


def stale_temporaries(folders: Iterable[str | Path]) -> list[Path]:
    """Dot-named entries of ``folders`` whose owner mark names a process that no longer runs."""
    found = []
    for folder in folders:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith("."):
                continue
            owner = owner_of_name(entry.name)
            if owner is not None and owner.is_dead():
                found.append(entry)
    return found


def remove_stale(folders: Iterable[str | Path] = OUTPUT_FOLDERS) -> list[Path]:
    """Remove what dead fkp processes left in ``folders``; return what was removed."""
    removed = []
    for path in stale_temporaries(folders):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another start removed it first
        removed.append(path)
        _log.info("removed %s (left by a killed run)", path)
    return removed


#: the signal that stopped this process, once one arrived: an error raised after it is its consequence
received_signal: int | None = None


def _raise_terminated(signum: int, _frame) -> None:
    global received_signal
    received_signal = signum
    raise Terminated(128 + signum)


class _Redelivery:
    """Delivers a swallowed signal again, from a helper thread, once the finalizer is over.

    The handler runs wherever the main thread happens to be, sometimes in a ``__del__`` or weakref
    callback, where Python reports "Exception ignored" and carries on as if nothing happened. The
    unraisable hook sees that exception; the helper thread then re-sends the signal to the main
    thread a moment later (not from inside the hook, where it would be swallowed again).
    """

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.wake = threading.Event()
        self.previous_hook = sys.unraisablehook
        threading.Thread(target=self._run, name="fkp-signal-redelivery", daemon=True).start()

    def hook(self, unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, Terminated):
            self.pending.append(int(error.code) - 128)
            self.wake.set()
        elif isinstance(error, KeyboardInterrupt):
            self.pending.append(signal.SIGINT)
            self.wake.set()
        else:
            self.previous_hook(unraisable)

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            time.sleep(0.05)  # let the main thread leave the finalizer and the hook
            while self.pending:
                _thread.interrupt_main(self.pending.pop(0))


_redelivery: _Redelivery | None = None


def exit_cleanly_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (SIGINT already raises KeyboardInterrupt)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    global _redelivery
    if _redelivery is None:
        _redelivery = _Redelivery()
        sys.unraisablehook = _redelivery.hook
