"""The pipeline's locks, with real processes: the registry's flock, and DVC's repository lock held for a
whole run (a real DVC repository whose stage command runs while another `dvc repro` is tried)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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


#: a stage command written as users write theirs (one plain command); ``delay`` is in its name
SLOW_STAGE = "python slow_delay.py"
SLOW_SCRIPT = "import time\ntime.sleep(float(open('delay').read()))\nopen('out.txt', 'w').write('new')\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real git + DVC repository with one stage whose command takes a while (``delay`` seconds)."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([_dvc(), "init", "-q"], cwd=root, check=True)
    (root / "delay").write_text("0")
    (root / "slow_delay.py").write_text(SLOW_SCRIPT)
    (root / "dvc.yaml").write_text(
        f"stages:\n  slow:\n    cmd: {json.dumps(SLOW_STAGE)}\n"
        "    deps: [delay, slow_delay.py]\n    outs: [out.txt]\n"
    )
    subprocess.run([_dvc(), "repro", "-q"], cwd=root, check=True)
    (root / "delay").write_text("30")
    return root


def _dvc() -> str:
    from fkp.orchestration.pipeline import dvc_executable

    return dvc_executable()


HOLDER = """
import sys
from fkp.orchestration import pipeline, repo_lock
with repo_lock.hold(owner="retrain flow run brave-otter") as repo:
    pipeline.reproduce(repo, "slow", on_line=lambda line: print(line, flush=True))
print("done", flush=True)
"""


def _start_holder(root: Path) -> subprocess.Popen:
    # DVC runs commands with $SHELL, else /bin/sh: on Debian dash, which forks its command rather than
    # exec-ing it (a parent-death signal set on the shell would not reach the command)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=root,
        env={**os.environ, "SHELL": "/bin/sh"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    while not any("Running stage 'slow'" in line for line in lines):
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    return proc


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.parts and "tmp" not in path.parts
    }


def test_dvc_commands_are_refused_while_a_run_holds_the_pipeline_and_touch_nothing(repo) -> None:
    holder = _start_holder(repo)
    try:
        time.sleep(1)  # the stage's command is running: DVC itself would have let go of its lock here
        before = _snapshot(repo)
        refused = subprocess.run(
            [_dvc(), "repro", "-f"], cwd=repo, capture_output=True, text=True, check=False
        )
        assert refused.returncode != 0 and "Unable to acquire lock" in refused.stderr, refused.stderr
        checkout = subprocess.run(
            [_dvc(), "checkout", "-f"], cwd=repo, capture_output=True, text=True, check=False
        )
        assert checkout.returncode != 0, checkout.stderr
        assert _snapshot(repo) == before  # out.txt (the last output) still there, byte for byte

        second = subprocess.run(
            [sys.executable, "-c", HOLDER], cwd=repo, capture_output=True, text=True, check=False
        )
        assert second.returncode != 0
        message = second.stderr.strip().splitlines()[-1]
        assert "the pipeline is busy: held by retrain flow run brave-otter (pid" in message, second.stderr
        assert "--wait" in message

        fkp = Path(sys.executable).parent / "fkp"  # a pipeline step run by hand takes the same lock
        by_hand = subprocess.run(
            [str(fkp), "sample", "--out", "data/raw/sample", "--n-train", "4", "--n-test", "2"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
        assert by_hand.returncode == 75, by_hand.stderr
        assert by_hand.stderr.startswith(
            "fkp sample: the pipeline is busy: held by retrain flow run brave-otter"
        )
        assert not (repo / "data").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_run_takes_its_stage_command_with_it_and_frees_the_pipeline(repo) -> None:
    import psutil

    holder = _start_holder(repo)
    from conftest import wait_until

    def stage_command() -> list:
        return [
            p for p in psutil.Process(holder.pid).children(recursive=True) if "delay" in " ".join(p.cmdline())
        ]

    (command,) = wait_until(stage_command, 30, "the stage's command to start", interval=0.1)
    holder.kill()  # SIGKILL: the run can clean up nothing itself
    holder.wait()
    psutil.wait_procs([command], timeout=5)
    assert not command.is_running() or command.status() == psutil.STATUS_ZOMBIE
    (repo / "delay").write_text("0")
    done = subprocess.run(
        [sys.executable, "-c", HOLDER], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "done" in done.stdout, done.stdout + done.stderr
    status = subprocess.run([_dvc(), "status"], cwd=repo, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout, status.stdout


def test_a_run_does_not_start_while_a_plain_dvc_repro_runs_a_stage(repo) -> None:
    # `dvc repro` lets go of its lock while a command runs, but keeps the stage's files in its rwlock
    from fkp.orchestration import repo_lock

    repro = subprocess.Popen(
        [_dvc(), "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        from conftest import wait_until

        wait_until(
            lambda: repo_lock.running_stage_commands(repo), 60, "dvc repro to run its stage", interval=0.2
        )
        with (
            pytest.raises(repo_lock.PipelineBusy, match=r"`dvc repro` \(pid"),
            repo_lock.hold(repo, owner="flow"),
        ):
            pass
    finally:
        repro.kill()
        repro.wait()
