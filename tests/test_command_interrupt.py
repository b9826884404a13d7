"""Stopping the commands the flows run (`fkp.orchestration.pipeline.run`): like Ctrl-C, to the whole
command, once.

A runner process calls `pipeline.run` on a command that starts a child of its own; the test signals
the runner, as a terminated sweep signals its worker processes, and looks at what is left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import wait_until

#: a command that starts a child, says so, and on SIGINT cleans up for a second (or ignores it; with
#: "term", it ignores SIGINT and cleans up on SIGTERM: a Python program that lost its KeyboardInterrupt)
COMMAND = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    ignore = sys.argv[1] in ("ignore", "term")
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    child = subprocess.Popen(sleeper, stderr=subprocess.DEVNULL)
    def stop(signum, frame):
        print("command: SIGINT, cleaning up", flush=True)
        time.sleep(1.0)
        print("command: clean", flush=True)
        sys.exit(130)
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else stop)
    if sys.argv[1] == "term":
        signal.signal(signal.SIGTERM, stop)
    print(f"command: running, child {child.pid}", flush=True)
    time.sleep(300)
    """
)

#: a worker-like process: takes SIGINT as `stop_commands_on` says, then runs the command
RUNNER = textwrap.dedent(
    """
    import sys
    from fkp.orchestration import pipeline
    pipeline.INTERRUPT_GRACE_S = float(sys.argv[2])
    pipeline.stop_commands_on()
    try:
        pipeline.run([sys.executable, "-c", sys.argv[3], sys.argv[1]], on_line=print)
    except pipeline.Interrupted as error:
        print(f"runner: {error}", flush=True)
        sys.exit(3)
    """
)


#: a worker-like process whose logging handler is slow to format the command's lines (Prefect's run
#: logger prints them in a pool worker), so that a signal lands inside the handler
SLOW_LOGGING_RUNNER = textwrap.dedent(
    """
    import logging, sys, time
    from fkp.orchestration import pipeline
    class Slow(logging.StreamHandler):
        def format(self, record):
            time.sleep(0.2)  # the signal lands here, inside the handler's try/except
            return super().format(record)
    log = logging.getLogger("runner")
    log.addHandler(Slow(sys.stdout))
    log.setLevel(logging.INFO)
    pipeline.stop_commands_on()
    chatty = "import time\\nwhile True: print('command: epoch', flush=True); time.sleep(0.01)"
    try:
        pipeline.run([sys.executable, "-c", chatty], on_line=log.info)
    except pipeline.Interrupted as error:
        print(f"runner: {error}", flush=True)
        sys.exit(3)
    """
)


def python(code: str, *args: str) -> subprocess.Popen:
    """``python -c code args``: its output (stdout and stderr together) as unbuffered text."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def start_runner(mode: str, grace: float) -> tuple[subprocess.Popen, list[str], int, int]:
    """The runner and its output so far, once its command is running: (runner, lines, command, child)."""
    runner = python(RUNNER, mode, str(grace), COMMAND)
    lines: list[str] = []
    while not lines or "command: running" not in lines[-1]:
        line = runner.stdout.readline()
        assert line, f"the runner ended early: {lines}"
        lines.append(line.rstrip("\n"))
    child = int(lines[-1].rsplit(" ", 1)[1])
    return runner, lines, os.getpgid(child), child


@pytest.fixture(autouse=True)
def no_leftovers():
    """Whatever a failing test leaves running (runners, command groups) is killed afterwards."""
    before = set(psutil.Process().children(recursive=True))
    yield
    for proc in set(psutil.Process().children(recursive=True)) - before:
        with contextlib.suppress(psutil.Error):
            for leftover in proc.children(recursive=True) + [proc]:
                leftover.kill()


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def finish(runner: subprocess.Popen, lines: list[str], timeout: float) -> list[str]:
    out, _ = runner.communicate(timeout=timeout)
    return lines + out.splitlines()


def test_a_signal_between_commands_is_ignored() -> None:
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from fkp.orchestration import pipeline; pipeline.stop_commands_on(); "
            "print('ready', flush=True); time.sleep(3); print('still here', flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout.readline().strip() == "ready"
    runner.send_signal(signal.SIGINT)  # an idle pool worker must survive it
    out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0 and "still here" in out


def test_an_interrupted_command_and_its_children_stop_once_after_cleaning_up() -> None:
    runner, lines, pgid, child = start_runner("clean", grace=30)
    assert pgid != os.getpgid(runner.pid)  # the command has a group of its own: only the runner signals it
    runner.send_signal(signal.SIGINT)
    time.sleep(0.3)
    runner.send_signal(signal.SIGINT)  # a second Ctrl-C must not cut the cleanup short
    lines = finish(runner, lines, timeout=30)
    assert runner.returncode == 3, lines
    # the command's last lines were still streamed, in order, before the interruption was re-raised
    assert lines[-3:] == ["command: SIGINT, cleaning up", "command: clean", "runner: stopped by SIGINT"]
    wait_until(lambda: group_is_gone(pgid), 10, "the command's child to stop")


def test_a_command_that_ignores_the_interrupt_is_killed_after_the_grace_period() -> None:
    runner, lines, pgid, child = start_runner("ignore", grace=1.0)
    started = time.monotonic()
    runner.send_signal(signal.SIGINT)
    lines = finish(runner, lines, timeout=30)
    assert runner.returncode == 3, lines
    assert 1.0 <= time.monotonic() - started < 20
    wait_until(lambda: group_is_gone(pgid), 10, "the command's group to be killed")


#: a flow-like process: Prefect turns SIGTERM into an exception raised in the flow's thread
TERMINATED_RUNNER = (
    "import signal, sys\n"
    "from fkp.orchestration import pipeline\n"
    "pipeline.INTERRUPT_ESCALATE_S = 1.0\n"
    "def terminated(signum, frame): raise SystemExit('terminated')\n"
    "signal.signal(signal.SIGTERM, terminated)\n"
    f"pipeline.run([sys.executable, '-c', {COMMAND!r}, sys.argv[1]], on_line=print)\n"
)


@pytest.mark.parametrize("signals", [1, 2])
def test_a_termination_stops_the_command_after_its_cleanup(signals: int) -> None:
    # How a flow's own thread is stopped: Prefect turns SIGTERM into an exception raised there. Its
    # runner signals a cancelled flow once per cancellation path that saw the cancel (event stream,
    # polling): a second SIGTERM that came while the training cleaned up killed it, and its MLflow run
    # was left RUNNING.
    runner = python(TERMINATED_RUNNER, "clean")
    line = runner.stdout.readline()
    assert "command: running" in line, line
    pgid = os.getpgid(int(line.rsplit(" ", 1)[1]))
    runner.send_signal(signal.SIGTERM)
    if signals == 2:
        assert "cleaning up" in runner.stdout.readline()
        runner.send_signal(signal.SIGTERM)  # the command is cleaning up (1 s)
    out, _ = runner.communicate(timeout=30)
    assert "command: clean" in out and "terminated" in out, out
    wait_until(lambda: group_is_gone(pgid), 10, "the command's group to stop")


def test_a_command_that_lost_the_interrupt_gets_sigterm_before_it_is_killed() -> None:
    # A training interrupted during its first epoch's graph tracing trained on (its KeyboardInterrupt
    # lost in library code) until it was killed at the end of the grace period, its MLflow run left
    # RUNNING: SIGTERM, fkp's other clean stop, comes first.
    runner = python(TERMINATED_RUNNER, "term")
    line = runner.stdout.readline()
    assert "command: running" in line, line
    pgid = os.getpgid(int(line.rsplit(" ", 1)[1]))
    started = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=30)
    assert "command: clean" in out and "terminated" in out, out
    assert time.monotonic() - started < 10  # SIGTERM after 1 s here, not SIGKILL after the 20 s grace
    wait_until(lambda: group_is_gone(pgid), 10, "the command's group to stop")


def test_an_interrupt_that_lands_in_a_logging_handler_still_stops_the_command() -> None:
    # A pool worker spends its time printing the command's lines through logging (Prefect's run logger),
    # and logging swallows any Exception raised while it formats or writes ("--- Logging error ---"): an
    # interrupt raised wherever the signal landed was lost there, and the sweep's variant trained on.
    runner = python(SLOW_LOGGING_RUNNER)
    for _ in range(5):
        assert "command: epoch" in runner.stdout.readline()
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 3, out[-2000:]
    assert "Logging error" not in out and out.rstrip().endswith("runner: stopped by SIGINT"), out[-2000:]


def test_a_signal_before_the_command_started_keeps_it_from_starting() -> None:
    # A sweep stopped while a worker is still setting up its variant's task: the signal comes before
    # the command exists, and the command must not then train on with nobody left to stop it.
    runner = python(
        "import os, signal, sys\n"
        "from fkp.orchestration import pipeline\n"
        "pipeline.stop_commands_on()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "print('runner: told to stop, still here', flush=True)\n"
        "try:\n"
        f"    pipeline.run([sys.executable, '-c', {COMMAND!r}, 'clean'], on_line=print)\n"
        "except pipeline.Interrupted as error:\n"
        "    print(f'runner: {error}', flush=True)\n"
        "    sys.exit(3)\n"
    )
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 3, out
    expected = ["runner: told to stop, still here", "runner: stopped by SIGINT before it started"]
    assert out.splitlines() == expected


def test_a_failed_stage_is_reported_with_its_own_exit_code_not_dvcs(tmp_path) -> None:
    """`dvc repro` exits 255 for a stage command that exited 1; the failure names the stage and the 1."""
    from fkp.orchestration import pipeline

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  broken:\n    cmd: python -c 'import sys; sys.exit(1)'\n")
    with pytest.raises(RuntimeError) as failure:
        pipeline.run([sys.executable, "-m", "dvc", "repro"], root=tmp_path, on_line=lambda line: None)
    first = str(failure.value).splitlines()[0]
    assert "stage 'broken' exited with 1" in first and "255" not in first, first
