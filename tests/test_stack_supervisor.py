"""The stack's process supervisor with real processes: records, health checks, stop, SIGKILL, pid reuse,
and an interrupted ``fkp stack up`` that stops what it had started."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fkp.orchestration.stack import supervisor
from fkp.orchestration.stack.supervisor import Service, StackError

pytestmark = pytest.mark.team

BIN = Path(sys.executable).parent


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_started_process_is_recorded_and_stopped(tmp_path):
    service = Service("sleeper", _python("import time; time.sleep(120)"), healthy=lambda: True)
    record = supervisor.start(service, tmp_path)
    assert [r.pid for r in supervisor.records(supervisor.read_state(tmp_path))] == [record.pid]
    assert supervisor.process_of(record) is not None
    supervisor.stop_all(tmp_path, timeout=10, report=lambda _: None)
    assert supervisor.process_of(record) is None and not psutil.pid_exists(record.pid)
    assert supervisor.records(supervisor.read_state(tmp_path)) == []


def test_a_process_ignoring_sigterm_is_killed_with_its_children_after_the_timeout(tmp_path):
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); time.sleep(120)"
    )
    record = supervisor.start(Service("stubborn", _python(code), healthy=lambda: True), tmp_path)
    deadline = time.monotonic() + 30
    while not psutil.Process(record.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    family = [psutil.Process(record.pid), *psutil.Process(record.pid).children()]
    assert len(family) == 2
    assert supervisor.stop(record, timeout=1) == "killed after 1 s"
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_recycled_pid_is_never_signalled(tmp_path):
    other = subprocess.Popen(_python("import time; time.sleep(120)"))
    try:
        created = psutil.Process(other.pid).create_time()
        stale = supervisor.Record("old", other.pid, created - 1000, "log", int(signal.SIGKILL), False)
        assert supervisor.process_of(stale) is None
        assert supervisor.stop(stale, timeout=1) == "not running"
        assert other.poll() is None  # still alive: it is not the process we started
    finally:
        other.kill()
        other.wait()


def test_a_service_that_exits_at_start_is_reported_with_its_log_and_forgotten(tmp_path):
    service = Service("broken", _python("import sys; print('bad config: port'); sys.exit(3)"), lambda: False)
    with pytest.raises(StackError, match=r"broken exited with code 3 .*\n.*bad config: port"):
        supervisor.start(service, tmp_path)
    assert supervisor.records(supervisor.read_state(tmp_path)) == []


def test_a_service_never_healthy_is_stopped_after_its_start_timeout(tmp_path):
    service = Service("silent", _python("import time; time.sleep(120)"), lambda: False, start_timeout=1)
    with pytest.raises(StackError, match="silent not ready after 1 s"):
        supervisor.start(service, tmp_path)
    assert supervisor.records(supervisor.read_state(tmp_path)) == []


def test_interrupted_stack_up_stops_what_it_started(tmp_path):
    state_dir = Path(tempfile.mkdtemp(prefix="fkp-stack-"))
    os.chmod(state_dir, 0o755)  # PostgreSQL runs as the postgres user when the tests run as root
    env = {**os.environ, "DO_NOT_TRACK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    up = subprocess.Popen(
        [str(BIN / "fkp"), "stack", "up", "--state-dir", str(state_dir), "--project", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen: list[supervisor.Record] = []
        deadline = time.monotonic() + 300
        while len(seen) < 2 and up.poll() is None and time.monotonic() < deadline:  # postgres, then mlflow
            time.sleep(0.2)
            try:
                seen = supervisor.records(supervisor.read_state(state_dir))
            except (StackError, json.JSONDecodeError):
                continue
        assert len(seen) >= 2, "fkp stack up never started two services"
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=120)
        assert up.returncode == 130
        assert err.strip().splitlines()[-1] == "fkp stack: interrupted; stopped what was started"
        assert all(supervisor.process_of(r) is None for r in seen)
        assert supervisor.records(supervisor.read_state(state_dir)) == []
    finally:
        if up.poll() is None:
            up.kill()
        subprocess.run(
            [str(BIN / "fkp"), "stack", "down", "--state-dir", str(state_dir)], env=env, timeout=120
        )
        shutil.rmtree(state_dir, ignore_errors=True)


def test_config_keeps_the_ports_it_picked():
    from fkp.orchestration.stack.config import StackConfig, resolve

    first = resolve(StackConfig(), None)
    assert all(getattr(first, name) > 0 for name in ("postgres_port", "mlflow_port", "dask_port"))
    again = resolve(StackConfig(), first)
    assert again == first
    fixed = resolve(dataclasses.replace(StackConfig(), mlflow_port=5123), first)
    assert fixed.mlflow_port == 5123 and fixed.prefect_port == first.prefect_port
