"""Who owns a run or a temporary file: pid, host and process start time.

A killed process cannot clean up after itself, so whatever it leaves behind carries its
owner, and the next start removes only what belongs to processes that no longer exist. The
start time guards against a recycled pid; a different host is never judged (its processes
cannot be seen from here), so a shared folder is safe.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from functools import cache

#: marks a temporary name: ``fkp<pid>x<host hash>`` (e.g. ``.model.fkp4242x1a2b3c4d.k3j2.keras``)
_TOKEN = re.compile(r"\.fkp(\d+)x([0-9a-f]{8})\.")


@cache
def host_id() -> str:
    """A short, stable, file-name-safe id of this host."""
    return hashlib.md5(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:8]


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), ``None`` if unknown or a zombie."""
    try:
        stat = open(f"/proc/{pid}/stat", encoding="ascii", errors="replace").read()  # noqa: SIM115
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # state, then field 22 of the file at index 19
        return None
    return fields[19]


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: str | None = None

    @classmethod
    def me(cls) -> Owner:
        return cls(os.getpid(), host_id(), start_time(os.getpid()))

    def is_dead(self) -> bool:
        """True only when this process certainly no longer runs (same host, pid gone or recycled)."""
        if self.host != host_id():
            return False
        if self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # someone else's live process
        now = start_time(self.pid)
        if now is None:
            return os.path.exists("/proc/self/stat")  # a zombie, when /proc can tell
        return self.started is not None and now != self.started


def token() -> str:
    """The owner mark this process puts into the names of its temporaries."""
    return f"fkp{os.getpid()}x{host_id()}"


def owner_of_name(name: str) -> Owner | None:
    """The owner marked in a temporary's name, or ``None`` for names without a mark."""
    found = _TOKEN.search(name)
    return Owner(int(found.group(1)), found.group(2)) if found else None
