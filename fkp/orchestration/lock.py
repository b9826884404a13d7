"""Locks, so two pipeline runs never write the same outputs or move the champion at once.

Two kinds:

* :func:`file_lock`: an ``flock`` on a file, held by one ``with`` block. ``flock`` locks belong to an
  open file, not to a process: two runs in threads of one process exclude each other just like two
  processes do, and the kernel releases the lock when its holder dies, so a crashed run never leaves a
  stale lock behind. The file only tells who holds it; it is rewritten in place (never replaced)
  because the lock lives on its inode. Used around registration (:data:`REGISTRY_LOCK`).
* :func:`pipeline_lock`: the one lock of the pipeline (:data:`PIPELINE_LOCK`), which must cover a
  whole run, not one step. A ``dvc repro`` runs each stage as a separate command and releases DVC's
  own repository lock while a command runs, so no single process can hold an ``flock`` for the whole
  run. The pipeline lock is therefore a *lease held by a process*: the lock file names a process
  (pid + start time), the lease lasts as long as that process lives, and the process's descendants
  share it. A stage command under DVC takes it on behalf of its ``dvc`` process, so every stage of one
  ``dvc repro`` (or of one Prefect retrain, which runs ``dvc repro -s`` per stage) is inside one lease,
  and another run waits, naming the holder, until that whole run has finished. A killed holder's lease
  ends with the process. Leases are checked through ``/proc`` (Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fkp.tracking.registry_lock import LockBusyError, file_lock

#: the pipeline's lease: held by one run (CLI stage, ``dvc repro``, retrain flow, sweep) at a time
PIPELINE_LOCK = Path("reports/.pipeline.lock")


# --------------------------------------------------------------------------- the pipeline's lease


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name (state is ``[0]``), or ``None`` if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process for ever."""
    fields = _stat_fields(pid)
    return fields[19] if fields and fields[0] not in ("Z", "X") else None


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def ancestors(pid: int | None = None) -> list[int]:
    """The pids of ``pid``'s parent, grandparent, ... up to init (``pid`` itself excluded)."""
    chain: list[int] = []
    current = _parent(pid or os.getpid())
    while current and current not in chain and current > 1:
        chain.append(current)
        current = _parent(current)
    return chain


def _command_line(pid: int) -> list[str]:
    try:
        return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if part]
    except OSError:
        return []


def _dvc_ancestor() -> int | None:
    """The ``dvc`` process running this command as a stage (``DVC_STAGE`` is set by DVC), if any."""
    if not os.environ.get("DVC_STAGE"):
        return None
    for pid in ancestors():
        argv = _command_line(pid)
        if any(Path(part).name == "dvc" for part in argv[:2]):
            return pid
    return None


@dataclass(frozen=True)
class Lease:
    """Who holds the pipeline: a process (pid + start time) on a host, and what it is."""

    pid: int
    start: str
    host: str
    owner: str
    since: str

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # a process on another machine sharing the folder: only it can end the lease
        return process_start(self.pid) == self.start

    def describe(self) -> str:
        return f"{self.owner or 'a run'} (pid {self.pid} on {self.host}, since {self.since})"


def _read_lease(fd: int) -> Lease | None:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        lease = Lease(**{k: data[k] for k in ("pid", "start", "host", "owner", "since")})
    except (ValueError, KeyError, TypeError):
        return None
    return lease if lease.alive() else None


def _write_lease(fd: int, lease: Lease | None) -> None:
    os.ftruncate(fd, 0)
    if lease is not None:
        os.pwrite(fd, (json.dumps(lease.__dict__) + "\n").encode(), 0)


def holder(path: str | Path = PIPELINE_LOCK) -> Lease | None:
    """The live lease on ``path``, or ``None`` when the pipeline is free."""
    path = Path(path)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_lease(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def pipeline_lock(
    path: str | Path = PIPELINE_LOCK,
    *,
    owner: str,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Lease]:
    """Hold the pipeline's lease for the ``with`` body (see the module docstring).

    Inside a run that already holds it (an ancestor process, or the ``dvc`` process running this
    command as a stage) this is a no-op that yields that lease. Otherwise it waits for a live holder
    (``timeout``: ``None`` as long as it takes, ``0`` fail at once, else seconds; then
    :class:`LockBusyError` names the holder), telling ``on_wait`` once. Under DVC the lease is taken
    for the ``dvc`` process, so it covers every stage of that run and ends when it exits; otherwise it
    is this process's and is released on exit from the ``with``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    family = {os.getpid(), *ancestors()}
    dvc = _dvc_ancestor()
    claimant = dvc or os.getpid()
    if dvc is not None:
        argv = _command_line(dvc)
        at = next(i for i, part in enumerate(argv) if Path(part).name == "dvc")
        owner = " ".join(["dvc", *argv[at + 1 :]])[:120]
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    told = False
    while True:
        with file_lock(path.with_name(path.name + ".guard")):  # read-and-claim is atomic
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                current = _read_lease(fd)
                if current is not None and current.pid in family and current.host == socket.gethostname():
                    inherited = current  # part of the run that holds it
                    break
                if current is None:
                    start = process_start(claimant) or ""
                    mine = Lease(
                        claimant,
                        start,
                        socket.gethostname(),
                        owner,
                        datetime.now(UTC).isoformat(timespec="seconds"),
                    )
                    _write_lease(fd, mine)
                    inherited = None
                    break
            finally:
                os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            waited = "" if not timeout else f" after waiting {timeout:g} s"
            raise LockBusyError(
                f"the pipeline is busy: {path} is held by {current.describe()}{waited}; "
                "run again when it has finished"
            )
        if on_wait is not None and not told:
            on_wait(f"the pipeline is busy: {path} is held by {current.describe()}; waiting for it to finish")
            told = True
        pause = poll_seconds if deadline is None else min(poll_seconds, deadline - time.monotonic())
        time.sleep(max(0.05, pause))
    if inherited is not None:
        yield inherited
        return
    try:
        yield mine
    finally:
        if dvc is None:  # a lease taken for a dvc process ends with that process
            with file_lock(path.with_name(path.name + ".guard")):
                fd = os.open(path, os.O_RDWR)
                try:
                    if _read_lease(fd) == mine:
                        _write_lease(fd, None)
                finally:
                    os.close(fd)
