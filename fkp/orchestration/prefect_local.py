"""A temporary Prefect server for one command, that never outlives it.

A flow run with no ``PREFECT_API_URL`` configured makes Prefect start a temporary server in a child
process; when the command is killed (``kill -9``, an OOM kill), that server is left running, orphaned,
holding its port. :func:`api_url` starts the same server itself, with the kernel told to stop it when
its parent dies (``PR_SET_PDEATHSIG``), and stops it on every ordinary exit too. With a configured
server (the normal case for schedules and teams) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1
STARTUP_TIMEOUT = 120.0


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send this process ``signum`` when its parent dies (``PR_SET_PDEATHSIG``).

    For ``preexec_fn`` (runs in the child between fork and exec; kept across exec), or called by a
    worker process itself. The parent is the thread that started the process: start it from one that
    lives as long as the parent does.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether the Prefect API at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _flush() -> None:
    """Send the run's last logs and events before the server goes (else Prefect reports it cannot)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


@contextlib.contextmanager
def api_url() -> Iterator[str]:
    """The Prefect API to report to: the configured one, else a temporary server tied to this process."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).parent / "prefect"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    print(
        f"no Prefect server configured: starting a temporary one on {url} (it keeps no history)", flush=True
    )
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the temporary Prefect server did not start on {url}")
            time.sleep(0.5)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # for the processes the run starts (task workers)
        # ... and for this process's threads that start with an empty context (the process pool's
        # log/event forwarder, the log and event workers): they read Prefect's process-wide settings,
        # built at import, and without this each would start a hidden temporary server of its own.
        refresh_global_settings_context()
        try:
            with temporary_settings({PREFECT_API_URL: url}):
                yield url
        finally:
            _flush()  # while the settings still point at the server the logs and events are for
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
            refresh_global_settings_context()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
