"""One run of the pipeline at a time, on DVC's own repository lock.

Every ``dvc`` command takes DVC's repository lock (``.dvc/tmp/lock``) before it touches a file and
refuses ("Unable to acquire lock") or, with ``--wait-for-lock``, waits. The flows hold that same lock
from their first step to their last: :func:`hold` opens one ``Repo`` and takes it (``lock_repo``,
re-entrant within that ``Repo``), and :func:`fkp.orchestration.pipeline.reproduce` runs each stage
through that ``Repo``. So a concurrent ``dvc repro``, ``dvc exp run`` or ``dvc checkout`` is refused
by DVC itself before it removes or writes any output, and a second flow run is refused (or waits).

The one thing we change in DVC: ``dvc repro`` lets go of the lock while a stage's command runs
(``dvc.stage.decorators.unlocked_repo``, so that a command may call ``dvc`` itself). Held that way,
another ``dvc repro -f`` got in while our ``train`` ran and deleted ``data/raw/sample`` under it.
Our stage commands never call ``dvc``, so for the ``Repo`` a flow holds, :class:`_KeptLock` keeps
the lock through the commands. A killed flow's lock ends with its process (the kernel drops the
``flock``), so nothing stale is left behind.

Beside DVC's lock file the holder leaves a note (:data:`HOLDER_FILE`: which flow run, pid, since
when), so that a refused command can say who holds the pipeline; DVC's own message cannot.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dvc.repo import Repo

#: who holds DVC's lock through :func:`hold`, for the messages of refused commands
HOLDER_FILE = Path(".dvc/tmp/fkp-holder.json")
WAIT_HINT = "wait for it with --wait (flows) or `dvc --wait-for-lock repro`"

#: the ``Repo`` this run holds the lock through: every DVC call of the run must go through it
#: (a second ``Repo`` in the same process would wait for the lock its own run holds)
_held: contextvars.ContextVar[Repo | None] = contextvars.ContextVar("fkp_held_repo", default=None)


class PipelineBusy(RuntimeError):
    """DVC's repository lock is held by another run; the message names it."""


class _KeptLock:
    """DVC's lock object with ``unlock``/``lock`` made no-ops: the lock stays held through commands."""

    def __init__(self, lock: Any):
        self._lock = lock

    def lock(self) -> None:
        pass

    def unlock(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lock, name)


def held_repo() -> Repo | None:
    """The ``Repo`` whose lock this run holds (inside :func:`hold`), else ``None``."""
    return _held.get()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(root: str | Path = ".") -> str:
    """Who holds the pipeline, from the holder's note and DVC's rwlock; a generic phrase if unknown."""
    root = Path(root)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        note = json.loads((root / HOLDER_FILE).read_text())
        if _alive(int(note["pid"])):
            return f"{note['owner']} (pid {note['pid']}, since {note['since']})"
    running = running_stage_commands(root)
    if running:
        return ", ".join(f"`{cmd}` (pid {pid})" for pid, cmd in running)
    with contextlib.suppress(OSError, ValueError):
        pid = int((root / ".dvc/tmp/lock").read_text().split()[0])  # zc.lockfile writes its holder's pid
        if pid != os.getpid() and _alive(pid):
            return f"`{_command_of(pid)}` (pid {pid})"
    return "another dvc command"


def _command_of(pid: int) -> str:
    """``dvc repro -f`` for a process run as ``/path/to/venv/bin/dvc repro -f``; ``dvc`` if unreadable."""
    try:
        argv = [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if part]
    except OSError:
        return "dvc"
    at = next((i for i, part in enumerate(argv) if Path(part).name == "dvc"), None)
    return " ".join(["dvc", *argv[at + 1 :]]) if at is not None else " ".join(argv)


def running_stage_commands(root: str | Path = ".") -> list[tuple[int, str]]:
    """Live DVC processes that hold a stage's files (DVC's rwlock): a ``dvc repro`` inside a command.

    DVC releases its repository lock while a plain ``dvc repro`` runs a stage's command, but keeps
    that stage's files in its rwlock; a flow that started then would be refused at that stage, after
    running the ones before it. Read from DVC's own file, not locked: a stale entry only costs a wait.
    """
    try:
        data = json.loads((Path(root) / ".dvc/tmp/rwlock").read_text() or "{}")
    except (OSError, ValueError):
        return []
    found: dict[int, str] = {}
    for mode in ("read", "write"):
        for infos in (data.get(mode) or {}).values():
            for info in infos if isinstance(infos, list) else [infos]:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    pid = int(info["pid"])
                    if pid != os.getpid() and _alive(pid):
                        found[pid] = _command_of(pid)
    return sorted(found.items())


def busy_message(root: str | Path = ".") -> str:
    return f"the pipeline is busy: held by {describe_holder(root)}; {WAIT_HINT}"


def _try_lock(repo: Repo) -> bool:
    from dvc.lock import LockError

    try:
        repo.lock.lock()
    except LockError:
        return False
    if running_stage_commands(repo.root_dir):
        repo.lock.unlock()
        return False
    return True


def busy(root: str | Path = ".") -> str | None:
    """The message :func:`hold` would refuse with now, or ``None`` when the pipeline is free.

    For commands that should refuse in one line before they start anything (a Prefect server, a
    flow run); the lock is taken for a moment and let go, so :func:`hold` still decides.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if not _try_lock(repo):
            return busy_message(repo.root_dir)
        repo.lock.unlock()
    return None


@contextlib.contextmanager
def hold(
    root: str | Path = ".",
    *,
    owner: str,
    wait: bool = False,
    poll_seconds: float = 2.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Repo]:
    """Hold DVC's repository lock for the ``with`` body; yield the ``Repo`` to run stages through.

    Refuses with :class:`PipelineBusy` (naming the holder) when another run holds it, or waits
    (``wait=True``), telling ``on_wait`` once who it waits for.
    """
    from dvc.repo import Repo, lock_repo

    repo = Repo(str(root))
    try:
        told = False
        while not _try_lock(repo):
            message = busy_message(repo.root_dir)
            if not wait:
                raise PipelineBusy(message)
            if on_wait is not None and not told:
                on_wait(message.replace("; " + WAIT_HINT, "; waiting for it to finish"))
                told = True
            time.sleep(poll_seconds)
        real = repo.lock
        repo._lock_depth = 1  # lock_repo below sees it held: no second take, no release on exit
        note = Path(repo.root_dir) / HOLDER_FILE
        try:
            since = datetime.now(UTC).isoformat(timespec="seconds")
            note.write_text(json.dumps({"owner": owner, "pid": os.getpid(), "since": since}) + "\n")
            repo.lock = _KeptLock(real)
            repo._reset()
            token = _held.set(repo)
            try:
                with lock_repo(repo):
                    yield repo
            finally:
                _held.reset(token)
        finally:
            repo.lock = real
            repo._lock_depth = 0
            with contextlib.suppress(OSError):
                note.unlink()
            real.unlock()
    finally:
        repo.close()
