"""The registry's lock: one registration at a time, so two runs never compare against the same champion.

MLflow's model registry has no lock of its own (moving an alias is one call, but deciding whether to move
it reads the champion first), so registration holds an ``flock`` on :data:`REGISTRY_LOCK`. ``flock``
is the kernel's lock: it belongs to an open file, so two runs in threads of one process exclude each
other like two processes do, and the kernel releases it when its holder dies (no stale lock after a
crash). The file only tells who holds it; it is rewritten in place (never replaced) because the lock
lives on its inode.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

#: held around each registration (the register stage, the sweep's registrations)
REGISTRY_LOCK = Path("reports/.registry.lock")


class LockBusyError(RuntimeError):
    """The lock was still held by another run when the wait ran out."""


def _holder(path: Path) -> str:
    """Who holds ``path`` as recorded in it, for messages; ``"another run"`` if unreadable."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "another run"
    parts = [str(info.get("owner") or "a run")]
    if info.get("pid"):
        parts.append(f"pid {info['pid']} on {info.get('host', '?')}")
    if info.get("since"):
        parts.append(f"since {info['since']}")
    return ", ".join(parts)


@contextlib.contextmanager
def file_lock(
    path: str | Path,
    *,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    owner: str = "",
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if needed) for the body of the ``with``.

    ``timeout=None`` waits as long as it takes, ``0`` fails at once, otherwise the wait is bounded
    in seconds; when it runs out :class:`LockBusyError` names the holder. ``on_wait`` is called once,
    with a message naming the holder, if the lock is busy when asked for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if deadline is not None and time.monotonic() >= deadline:
                    waited = "" if not timeout else f" after waiting {timeout:g} s"
                    raise LockBusyError(f"{path} is locked by {holder}{waited}") from None
                if on_wait is not None and not told:
                    on_wait(f"{path} is locked by {holder}; waiting for it to finish")
                    told = True
                pause = poll_seconds if deadline is None else min(poll_seconds, deadline - time.monotonic())
                time.sleep(max(0.05, pause))
        record = {
            "owner": owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
