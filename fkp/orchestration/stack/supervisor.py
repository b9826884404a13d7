"""Start, record, health-check and stop the stack's processes, and nothing else.

Every started process is written to ``<state>/stack.json`` (pid, start time, how to stop it) the moment
it exists, before its health check, so ``fkp stack down`` can stop it even if ``fkp stack up`` was
killed half-way. A pid is only signalled while it still belongs to the process we started (same
start time), so a recycled pid is never killed. Each service runs in its own session: stopping sends
the service's stop signal, waits, then SIGKILLs what is left of its process group and its children.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fkp import atomic

STATE_FILE = "stack.json"
LOG_DIR = "logs"


class StackError(RuntimeError):
    """A service could not be started or checked; the message says which and where its log is."""


@dataclass(frozen=True)
class Service:
    """How to run one long-lived process of the stack and how to tell that it is ready."""

    name: str
    argv: Sequence[str]
    healthy: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    user: str | None = None  # run as this user (PostgreSQL refuses to run as root)
    stop_signal: int = signal.SIGTERM
    signal_group: bool = True  # False: signal the leader only and let it stop its children (PostgreSQL)
    start_timeout: float = 180.0


@dataclass(frozen=True)
class Record:
    """A started process as written to the state file."""

    name: str
    pid: int
    create_time: float
    log: str
    stop_signal: int
    signal_group: bool
    url: str | None = None


# --------------------------------------------------------------------------- state file


def read_state(state_dir: Path) -> dict[str, Any]:
    """The state file's content (``{"config": ..., "processes": [...]}``); empty when there is none."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return {"config": None, "processes": []}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StackError(f"{path}: not valid JSON ({error.msg}); stop the processes by hand") from None


def write_state(state_dir: Path, state: Mapping[str, Any]) -> None:
    atomic.write_text(state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def records(state: Mapping[str, Any]) -> list[Record]:
    return [Record(**entry) for entry in state.get("processes", [])]


def _append(state_dir: Path, record: Record) -> None:
    state = read_state(state_dir)
    state["processes"] = [*state.get("processes", []), asdict(record)]
    write_state(state_dir, state)


def _forget(state_dir: Path, record: Record) -> None:
    state = read_state(state_dir)
    state["processes"] = [p for p in state.get("processes", []) if p["pid"] != record.pid]
    write_state(state_dir, state)


# --------------------------------------------------------------------------- processes


def process_of(record: Record) -> psutil.Process | None:
    """The live process ``record`` describes, or None if it is gone (or its pid was reused)."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_once(argv: Sequence[str], *, env: Mapping[str, str] | None = None, what: str, **kwargs: Any) -> str:
    """Run a short set-up command to completion; a failure becomes a :class:`StackError` with its output."""
    done = subprocess.run(
        list(argv),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()[-10:]
        raise StackError(f"{what} failed (exit code {done.returncode}): " + " | ".join(output))
    return done.stdout


def start(service: Service, state_dir: Path) -> Record:
    """Start ``service`` in its own session, record it, and wait until it is healthy.

    A service that exits or stays unhealthy past its timeout is stopped and reported with the end of
    its log.
    """
    log = state_dir / LOG_DIR / f"{service.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(service.argv),
            cwd=service.cwd,
            env={**os.environ, **service.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=service.user,
            group=service.user,
        )
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = time.time()
    record = Record(
        service.name, proc.pid, created, str(log), int(service.stop_signal), service.signal_group, service.url
    )
    _append(state_dir, record)
    deadline = time.monotonic() + service.start_timeout
    while True:
        code = proc.poll()
        if code is not None:
            _forget(state_dir, record)
            raise StackError(
                f"{service.name} exited with code {code} before it was ready; end of {log}:\n{_tail(log)}"
            )
        if service.healthy():
            return record
        if time.monotonic() > deadline:
            stop(record, timeout=10)
            _forget(state_dir, record)
            raise StackError(
                f"{service.name} not ready after {service.start_timeout:.0f} s; end of {log}:\n{_tail(log)}"
            )
        time.sleep(0.5)


def _group(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def _alive(procs: Sequence[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def stop(record: Record, timeout: float = 20.0) -> str:
    """Stop the process of ``record`` (and its group and children); return what happened, in words."""
    leader = process_of(record)
    if leader is None:
        return "not running"
    try:
        family = [leader, *leader.children(recursive=True), *_group(record.pid)]
    except psutil.Error:
        family = [leader]
    try:
        if record.signal_group:
            os.killpg(record.pid, record.stop_signal)
        else:
            leader.send_signal(record.stop_signal)
    except (ProcessLookupError, psutil.Error):
        pass
    deadline = time.monotonic() + timeout
    # poll rather than psutil.wait_procs: that waits out the timeout on a zombie nobody has reaped yet
    while remaining := _alive([*family, *_group(record.pid)]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not remaining:
        _reap(record.pid)
        return "stopped"
    for proc in remaining:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(remaining, timeout=5)
    _reap(record.pid)
    return f"killed after {timeout:.0f} s"


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (started by this very process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_all(state_dir: Path, timeout: float = 20.0, report: Callable[[str], None] = print) -> None:
    """Stop every recorded process, last started first, forgetting each one once it is gone."""
    for record in reversed(records(read_state(state_dir))):
        began = time.monotonic()
        outcome = stop(record, timeout)
        report(f"{record.name} (pid {record.pid}): {outcome} ({time.monotonic() - began:.1f} s)")
        _forget(state_dir, record)
