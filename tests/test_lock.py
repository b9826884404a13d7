"""The pipeline's locks: the registry's flock and the pipeline's lease, with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fkp.orchestration.lock import holder, pipeline_lock, process_start
from fkp.tracking.registry_lock import LockBusyError, file_lock


def test_file_lock_excludes_a_second_holder_and_names_the_first(tmp_path) -> None:
    path = tmp_path / "reports" / ".registry.lock"
    told: list[str] = []
    with file_lock(path, owner="first run"):
        with pytest.raises(LockBusyError, match="first run"), file_lock(path, timeout=0):
            pass
        with (
            pytest.raises(LockBusyError, match="after waiting 0.2 s"),
            file_lock(path, timeout=0.2, poll_seconds=0.05, on_wait=told.append),
        ):
            pass
    assert told and "first run" in told[0]
    with file_lock(path, timeout=0):  # released on exit
        pass


def test_file_lock_waits_for_the_holder_to_finish(tmp_path) -> None:
    path = tmp_path / "lock"
    order: list[str] = []
    released = threading.Event()

    def hold() -> None:
        with file_lock(path):
            order.append("first in")
            released.wait(10)
            order.append("first out")

    holder_thread = threading.Thread(target=hold)
    holder_thread.start()
    while not order:
        threading.Event().wait(0.01)
    threading.Timer(0.3, released.set).start()
    with file_lock(path, poll_seconds=0.05):
        order.append("second in")
    holder_thread.join()
    assert order == ["first in", "first out", "second in"]


def _python(code: str, lock: Path, **env: str) -> subprocess.CompletedProcess:
    header = "import sys\nfrom pathlib import Path\nfrom fkp.orchestration.lock import *\n"
    script = header + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, str(lock)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_pipeline_lease_is_shared_with_the_holders_children(tmp_path) -> None:
    lock = tmp_path / "reports" / ".pipeline.lock"
    with pipeline_lock(lock, owner="retrain flow run nice-otter") as lease:
        assert lease.pid == os.getpid() and lease.start == process_start(os.getpid())
        assert holder(lock) == lease
        # a child process (a stage run by this run) is inside the lease
        child = _python(
            """
            with pipeline_lock(Path(sys.argv[1]), owner="stage", timeout=0) as got:
                print(got.owner)
            """,
            lock,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == "retrain flow run nice-otter"
    assert holder(lock) is None  # released on exit


def _hold_in_subprocess(lock: Path, owner: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom fkp.orchestration.lock import pipeline_lock\n"
            "with pipeline_lock(sys.argv[1], owner=sys.argv[2]):\n"
            "    print('held', flush=True)\n    time.sleep(60)",
            str(lock),
            owner,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_another_run_is_refused_or_waits_naming_the_holder(tmp_path) -> None:
    lock = tmp_path / ".pipeline.lock"
    proc = _hold_in_subprocess(lock, "retrain flow run nice-otter")
    try:
        with pytest.raises(LockBusyError) as refused, pipeline_lock(lock, owner="other", timeout=0):
            pass
        message = str(refused.value)
        assert "retrain flow run nice-otter" in message and f"pid {proc.pid}" in message
        assert "run again when it has finished" in message
        told: list[str] = []
        threading.Timer(0.5, proc.kill).start()
        with pipeline_lock(lock, owner="waiter", poll_seconds=0.1, on_wait=told.append) as lease:
            assert lease.owner == "waiter"
        assert len(told) == 1 and "nice-otter" in told[0] and "waiting" in told[0]
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holders_lease_ends_with_it(tmp_path) -> None:
    lock = tmp_path / ".pipeline.lock"
    proc = _hold_in_subprocess(lock, "doomed")
    assert holder(lock).owner == "doomed"
    proc.kill()
    proc.wait()
    assert holder(lock) is None  # the record is still there, but its process is gone
    assert json.loads(lock.read_text())["owner"] == "doomed"
    with pipeline_lock(lock, owner="next", timeout=0) as lease:
        assert lease.owner == "next"


def test_a_stage_under_dvc_takes_the_lease_for_its_dvc_process(tmp_path) -> None:
    """Every stage of one `dvc repro` shares one lease, which lasts until that dvc process exits."""
    lock = tmp_path / ".pipeline.lock"
    fake_dvc = tmp_path / "bin" / "dvc"  # stands for the dvc process: a parent named dvc
    fake_dvc.parent.mkdir()
    fake_dvc.write_text(
        "#!/bin/sh\n"
        f'"{sys.executable}" -c "from fkp.orchestration.lock import pipeline_lock\n'
        f"with pipeline_lock('{lock}', owner='stage') as got: print(got.owner)\" && exec sleep 30\n"
    )
    fake_dvc.chmod(0o755)
    proc = subprocess.Popen(
        [str(fake_dvc), "repro"], stdout=subprocess.PIPE, text=True, env={**os.environ, "DVC_STAGE": "train"}
    )
    try:
        owner = proc.stdout.readline().strip()
        assert owner.startswith("dvc repro")
        lease = holder(lock)
        assert lease is not None and lease.pid == proc.pid  # the dvc process's, not the stage's
        with pytest.raises(LockBusyError, match="dvc repro"), pipeline_lock(lock, owner="flow", timeout=0):
            pass
    finally:
        proc.kill()
        proc.wait()
    assert holder(lock) is None
