"""The DVC pipeline as the flows see it: its stages in DVC's order, which are stale, and one stage run.

``dvc.yaml`` is the one definition of the DAG. The Prefect flows do not list steps of their own:
they ask DVC for the stages and their order (:func:`stages`), ask DVC whether a stage is stale
(:func:`is_stale`), and run a stale stage through DVC's Python API (:func:`reproduce`, one stage at a time),
so ``dvc.lock`` records every run whichever way it was started, and ``dvc status`` / ``dvc repro``
agree with the flows. A stage added to ``dvc.yaml`` appears in the flows with no code change.

Per-stage orchestration settings live in the stage's ``meta`` in ``dvc.yaml`` (``meta.retries``:
how often a flow retries the stage, for stages that talk to the MLflow store).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the lines of a failed stage kept in the error message (the end of its output says what went wrong)
FAILURE_TAIL = 40
#: how long an interrupted command may take to clean up before it is killed: less than the 30 s
#: Prefect's runner gives a cancelled flow run between SIGTERM and SIGKILL
INTERRUPT_GRACE_S = 20.0
#: how long after Ctrl-C's SIGINT a command that still runs gets SIGTERM, its other clean stop: a
#: Python command can lose a KeyboardInterrupt that lands in library code catching it (Keras traces
#: the first training step's loss through bare ``except:`` clauses: a training interrupted there
#: trained on and was killed at the end of the grace period, its MLflow run left RUNNING). The usual
#: escalation of a supervisor (systemd's, Kubernetes'): a polite signal, a firmer one, then SIGKILL.
#: Prefect's runner does the same (SIGTERM, SIGKILL after 30 s) but to the flow process only: the
#: command runs in a process group of its own (so DVC sees Ctrl-C, not a kill), which only we signal.
INTERRUPT_ESCALATE_S = 5.0


@dataclass(frozen=True)
class Stage:
    """One ``dvc.yaml`` stage: its name (DVC's address), command and orchestration settings."""

    name: str
    cmd: str
    retries: int = 0
    retry_delay_seconds: float = 5.0
    mlflow: bool = False  # meta.mlflow: its results live in the MLflow store (rerun against one without them)


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries the end of its output (e.g. validation errors)."""

    def __init__(self, stage: str, returncode: int, tail: Sequence[str]):
        self.stage, self.returncode, self.tail = stage, returncode, list(tail)
        body = "\n".join(self.tail)
        super().__init__(f"stage '{stage}' failed (exit code {returncode}):\n{body}")


class Interrupted(RuntimeError):
    """A command was stopped because its process was told to stop (see :func:`stop_commands_on`)."""


#: the command :func:`_stream` runs in the main thread, while it runs (what the handler stops)
_running: subprocess.Popen[str] | None = None
#: the signal that told this process to stop and when (monotonic seconds), once it came
_stopped: tuple[str, float] | None = None
#: the signal :func:`stop_commands_on` made the handler of in this process, if it did
_handling: int | None = None
#: the pid of this worker's parent when :func:`stop_commands_on` ran (the flow)
_parent: int | None = None


def stop_commands_on(signum: int = signal.SIGINT) -> None:
    """Make ``signum`` stop the command :func:`run` runs in this process, and nothing else.

    For a pool's worker processes (the sweep's variants): while a command runs, the signal is passed on
    to the command's process group as one SIGINT (what Ctrl-C does), its output is still streamed while
    it cleans up, it is killed after :data:`INTERRUPT_GRACE_S` seconds, and :func:`run` then raises
    :class:`Interrupted`, which fails the task with an exception worth no retry. The handler raises
    nothing itself: an exception raised wherever the signal lands would be swallowed by any ``except
    Exception`` there (the logging handler that prints the command's line catches it as a "Logging
    error", and the command trains on). A signal that comes before the command started (a worker still
    setting up its task) is kept: the command is then not started, or stopped as soon as it is, and
    :func:`run` raises :class:`Interrupted` all the same; a told-to-stop process starts no command again.
    The process itself does not exit: an idle worker that died would make the pool kill the busy ones
    before their commands clean up. A second signal is ignored, so a second Ctrl-C does not cut the
    first one's cleanup short. This also undoes an inherited "ignore SIGINT" (processes started with
    ``&`` in a script).
    """
    global _handling, _parent
    signal.signal(signum, _interrupt_command)
    _handling, _parent = signum, os.getppid()
    # A worker whose parent (the flow) is killed gets the same signal from the kernel: its command is
    # stopped as on Ctrl-C instead of training on, orphaned. The pool itself offers no such thing.
    from fkp.orchestration.prefect_local import die_with_parent

    die_with_parent(signum)


def _interrupt_command(signum: int, frame: object) -> None:
    global _stopped
    if _stopped is not None:
        return
    _stopped = (signal.Signals(signum).name, time.monotonic())
    command = _running
    if command is not None:
        _signal_group(command.pid, signal.SIGINT)
    elif _orphaned():
        os._exit(128 + signum)  # an idle worker of a killed flow: nothing to stop, no one to serve


def _orphaned() -> bool:
    """Whether the process that started this worker has died (the kernel re-parented us)."""
    return _parent is not None and os.getppid() != _parent


def _kill_when_overdue(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after the grace period, to the group of a command the handler stopped
    that still streams (:data:`INTERRUPT_ESCALATE_S`, :data:`INTERRUPT_GRACE_S`)."""
    escalated = False
    while _running is process:
        stopped = _stopped
        if stopped is not None:
            waited = time.monotonic() - stopped[1]
            if waited > INTERRUPT_GRACE_S:
                _signal_group(process.pid, signal.SIGKILL)
                return
            if waited > INTERRUPT_ESCALATE_S and not escalated:
                _signal_group(process.pid, signal.SIGTERM)
                escalated = True
        time.sleep(0.1)


def dvc_executable() -> str:
    """The ``dvc`` of this environment (beside the running Python), else the one on ``PATH``."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def _repo(root: str | Path) -> contextlib.AbstractContextManager:
    """The ``Repo`` this run holds DVC's lock through (:mod:`.repo_lock`), else a new one."""
    from dvc.repo import Repo

    from fkp.orchestration.repo_lock import held_repo

    held = held_repo()
    if held is not None:
        return contextlib.nullcontext(held)
    return Repo(str(root), _wait_for_lock=True)


def stages(root: str | Path = ".") -> list[Stage]:
    """Every stage of the repository's pipelines, upstream first (the order ``dvc repro`` runs them)."""
    from dvc.repo.reproduce import plan_repro

    with _repo(root) as repo:
        ordered = plan_repro(repo.index.graph)
        found = []
        for stage in ordered:
            if not getattr(stage, "cmd", None):  # .dvc files of `dvc add`ed data: no command to run
                continue
            meta: dict[str, Any] = stage.meta or {}
            found.append(
                Stage(
                    name=stage.addressing,
                    cmd=stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd),
                    retries=int(meta.get("retries", 0)),
                    retry_delay_seconds=float(meta.get("retry_delay_seconds", 5.0)),
                    mlflow=bool(meta.get("mlflow", False)),
                )
            )
    return found


def stale(root: str | Path = ".", targets: Sequence[str] | None = None) -> dict[str, Any]:
    """DVC's answer to "what changed": ``dvc status`` of ``targets`` (all stages when ``None``).

    Empty when everything is up to date.
    """
    with _repo(root) as repo:
        return dict(repo.status(targets=list(targets) if targets else None))


def is_stale(name: str, root: str | Path = ".") -> bool:
    """Whether DVC would run stage ``name`` now (its deps, params, command or outputs changed)."""
    return bool(stale(root, [name]))


def reproduce(
    repo: Any,
    name: str,
    *,
    force: bool = False,
    on_line: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Run stage ``name`` through ``repo`` in this process, streaming its output line by line.

    ``repo`` is the one :func:`fkp.orchestration.repo_lock.hold` holds, so DVC's lock stays held
    from stage to stage. DVC runs the stage's command with its private ``dvc.stage.run._run``, which
    inherits our stdout and leaves the command running when the caller is interrupted; for this call
    it is replaced by :func:`_stream` (output to ``on_line``, so to the flow run's log; the command in a
    process group of its own that gets Ctrl-C's SIGINT when the flow is stopped; and a kernel
    parent-death signal, so the command dies with a killed flow instead of training on unowned).
    Returns the output lines; raises :class:`StageFailed` with the end of the output when it fails.
    """
    import logging

    import dvc.stage.run as dvc_run
    from dvc.exceptions import DvcException

    lines: list[str] = []
    returncodes: list[int] = []

    def take(line: str) -> None:
        lines.append(line)
        on_line(line)

    def run_command(executable: str | None, cmd: str, **kwargs: Any) -> None:
        argv = _plain_argv(cmd) or dvc_run._make_cmd(executable, cmd)
        code, _ = _stream(
            argv,
            root=kwargs.get("cwd") or repo.root_dir,
            env={**kwargs["env"], **(env or {})},
            on_line=take,
            die_with_parent=True,
        )
        returncodes.append(code)
        if code != 0:
            raise dvc_run.StageCmdFailedError(cmd, code)

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for line in record.getMessage().splitlines():
                if line.strip() and not _noise(line):
                    take(line)

    # DVC's messages go to the run's log, and only there: a handler that DVC's own CLI set up in this
    # process earlier (an in-process `dvc add`) may write to a stream that is gone since, and DVC's
    # handler raises then, failing the stage.
    dvc_logger = logging.getLogger("dvc")
    saved = dvc_logger.handlers[:], dvc_logger.level, dvc_logger.propagate
    dvc_logger.handlers = [_Lines(logging.INFO)]
    dvc_logger.setLevel(logging.INFO)
    dvc_logger.propagate = False
    original, dvc_run._run = dvc_run._run, run_command
    try:
        repo.reproduce(name, single_item=True, force=force)
    except DvcException as exc:
        code = returncodes[-1] if returncodes and returncodes[-1] else 1
        causes = [str(exc)]
        cause = exc.__cause__
        while cause is not None:  # DVC's "failed to reproduce" wraps what went wrong
            causes.append(str(cause))
            cause = cause.__cause__
        raise StageFailed(name, code, _failure_tail([*lines, *causes])) from exc
    finally:
        dvc_run._run = original
        dvc_logger.handlers, level, dvc_logger.propagate = saved[0], saved[1], saved[2]
        dvc_logger.setLevel(level)
    return lines


def _noise(line: str) -> bool:
    """DVC's hints for a person at a terminal, repeated after every stage of a run."""
    return line.startswith(("To track the changes with git", "To enable auto staging", "Use `dvc push`")) or (
        line.lstrip().startswith(("git add ", "dvc config core.autostage"))
    )


def _failure_tail(lines: Sequence[str]) -> list[str]:
    """The stage's own output at the end, without DVC's boilerplate around it."""
    own = [
        line
        for line in lines
        if line.strip()
        and not line.startswith(("Running stage", "> ", "ERROR: failed to reproduce"))
        and "dvc.org/doc" not in line
    ]
    return own[-FAILURE_TAIL:]


def run(
    argv: Sequence[str],
    *,
    root: str | Path = ".",
    on_line: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Run a ``dvc``/``git`` command for the flows (pull, update, push, exp run), streaming its output."""
    returncode, lines = _stream(argv, root=root, env=env, on_line=on_line)
    if returncode != 0:
        tail = "\n".join(lines[-FAILURE_TAIL:])
        raise RuntimeError(f"`{' '.join(argv)}` failed ({_failure_cause(lines, returncode)}):\n{tail}")
    return lines


#: DVC's last word on a stage whose command failed (dvc/stage/exceptions.py: StageCmdFailedError)
_STAGE_CMD_FAILED = re.compile(
    r"failed to reproduce '(?P<stage>[^']+)': failed to run: .*, exited with (?P<code>-?\d+)"
)


def _failure_cause(lines: Sequence[str], returncode: int) -> str:
    """Which stage's command failed with which exit code, when DVC says so; else the command's own code.

    DVC exits 255 whatever its stage command returned; the stage's code is the one that means something.
    """
    for line in reversed(lines):
        if found := _STAGE_CMD_FAILED.search(line):
            return f"stage '{found['stage']}' exited with {found['code']}"
    return f"exit code {returncode}"


#: a command made only of these characters means the same with or without a shell
_PLAIN_COMMAND = re.compile(r"[\w@%+=:,./ -]+")


def _plain_argv(cmd: str) -> list[str] | None:
    """``cmd`` split into its words when it is one plain command (no quoting, variables, globs, pipes).

    Such a command is run without DVC's ``$SHELL -c``: a shell that forks its command instead of
    ``exec``-ing it (dash, ``/bin/sh`` on Debian, when ``SHELL`` is unset) would take the parent-death
    signal itself and leave the command orphaned. Anything else still goes through the shell, as DVC
    runs it.
    """
    if "\n" in cmd or not _PLAIN_COMMAND.fullmatch(cmd.strip()):
        return None
    return cmd.split()


def _stream(
    argv: Sequence[str],
    *,
    root: str | Path,
    env: dict[str, str] | None,
    on_line: Callable[[str], None],
    die_with_parent: bool = False,
) -> tuple[int, list[str]]:
    """Run ``argv`` in a process group of its own, streaming its output; stop it as Ctrl-C would.

    The command's group is signalled by this function only. When the caller is interrupted while the
    command runs (``KeyboardInterrupt``, or Prefect's ``TerminationSignal`` when a flow run is
    terminated or cancelled), the whole group gets one SIGINT, as from Ctrl-C in a terminal: DVC lets
    its stage command stop (a training ends its MLflow run) and removes its temporary workspace. The
    rest of the output is still streamed; the group gets SIGTERM if it is not gone after
    :data:`INTERRUPT_ESCALATE_S` seconds and is killed after :data:`INTERRUPT_GRACE_S` seconds (a
    second interruption does not shorten that), and the
    interruption is re-raised only then, so a caller holding the pipeline lock releases it when
    nothing of the command is left.
    The signal of :func:`stop_commands_on` stops the command the same way.
    """
    global _running
    lines: list[str] = []
    handled = _handling is not None and threading.current_thread() is threading.main_thread()
    if handled and _stopped is not None:
        raise Interrupted(f"stopped by {_stopped[0]} before it started")

    def take(raw: str) -> None:
        lines.append(raw.rstrip("\n"))
        on_line(lines[-1])

    with subprocess.Popen(
        list(argv),
        cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
        preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509 (only prctl)
    ) as process:
        assert process.stdout is not None
        if handled:
            _start_running(process)
        try:
            for raw in process.stdout:
                take(raw)
        except BaseException:
            _running = None
            _stop_group(process, take, INTERRUPT_GRACE_S)
            raise
        finally:
            _running = None
        returncode = process.wait()
    if handled and _stopped is not None:
        _signal_group(process.pid, signal.SIGKILL)  # what outlived the command
        if _orphaned():  # the flow was killed: no one to report to, and the pool would never end us
            os._exit(128 + signal.Signals[_stopped[0]].value)
        raise Interrupted(f"stopped by {_stopped[0]}")
    return returncode, lines


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when this process dies (``PR_SET_PDEATHSIG``).

    A flow killed with SIGKILL can run no cleanup of its own; without this its stage command trained
    on, orphaned, with the lock already free. SIGTERM, not SIGKILL: the command still ends its MLflow
    run and removes its temporaries (``fkp``'s signal handling). The setting survives ``exec`` but not
    ``fork``: hence plain commands run without a shell (:func:`_plain_argv`).
    """
    from fkp.orchestration.prefect_local import die_with_parent

    die_with_parent()


def _start_running(process: subprocess.Popen[str]) -> None:
    """Let the handler of :func:`stop_commands_on` stop ``process``, and kill it when it overstays."""
    global _running
    assert _handling is not None
    blocked = {_handling}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # the handler sees the command, or we see its mark
    try:
        _running = process
        if _stopped is not None:  # the signal came while the command was being started
            _signal_group(process.pid, signal.SIGINT)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    grace = threading.Thread(target=_kill_when_overdue, args=(process,), name="fkp-grace", daemon=True)
    grace.start()


def _stop_group(process: subprocess.Popen[str], take: Callable[[str], None], grace: float) -> None:
    """SIGINT to the command's process group; its output until it exits; SIGTERM after
    :data:`INTERRUPT_ESCALATE_S` s and SIGKILL after ``grace`` s if it is still there.

    Further interruptions meanwhile do not cut the command's cleanup short (the grace period bounds
    it): Prefect's runner may signal a cancelled flow once per cancellation path that sees the cancel
    (its event stream and its polling), and a second interruption must not kill a training that is
    ending its MLflow run. Errors (``Exception``) still end the wait.
    """
    _signal_group(process.pid, signal.SIGINT)
    timers = [
        threading.Timer(min(INTERRUPT_ESCALATE_S, grace), _signal_group, (process.pid, signal.SIGTERM)),
        threading.Timer(grace, _signal_group, (process.pid, signal.SIGKILL)),
    ]
    for timer in timers:
        timer.daemon = True
        timer.start()
    assert process.stdout is not None
    try:
        while True:
            try:
                for raw in process.stdout:
                    take(raw)
                process.wait()
                return
            except Exception:
                raise
            except BaseException:  # KeyboardInterrupt, Prefect's TerminationSignal: keep waiting
                continue
    finally:
        for timer in timers:
            timer.cancel()
        _signal_group(process.pid, signal.SIGKILL)  # what outlived the command


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def import_targets(root: str | Path = ".") -> list[str]:
    """The ``.dvc`` files of data brought in with ``dvc import`` / ``dvc import-url`` (``dvc update``)."""
    with _repo(root) as repo:
        return sorted(
            os.path.relpath(stage.path, repo.root_dir) for stage in repo.index.stages if stage.is_import
        )


def data_files(root: str | Path = ".") -> list[str]:
    """The ``.dvc`` files of the repository: data added with ``dvc add`` or brought in with ``dvc import``."""
    with _repo(root) as repo:
        return sorted(
            os.path.relpath(stage.path, repo.root_dir)
            for stage in repo.index.stages
            if not getattr(stage, "cmd", None)
        )


def metric_stages(root: str | Path = ".") -> list[str]:
    """The stages that write a metrics file: where a variant of the pipeline gets its score."""
    with _repo(root) as repo:
        return [stage.addressing for stage in repo.index.stages if getattr(stage, "metrics", None)]
