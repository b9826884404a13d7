"""Shared fixtures: a throwaway copy of the project on a tiny sample, and quiet, offline tools."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# flows run in this process send heartbeats as often as those the flows' commands start
# (fkp.orchestration.crash_detection): at Prefect's default the zombie-run automation would crash them
os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")

# `import dvc` binds DVC's log handlers to sys.stdout/stderr as they are then: imported first inside a
# test using capsys (an in-process `fkp` step takes DVC's lock), they would write to that test's
# capture after it closed, and DVC's handler raises then
import dvc  # noqa: E402, F401

#: Small enough that a whole pipeline (train included) runs in well under a minute on 2 cores.
TINY_PARAMS = {
    "sample": {"n_train": 96, "n_test": 12, "seed": 1},
    "split": {"val_fraction": 0.25, "seed": 0},
    "train": {"epochs": 2, "batch_size": 32, "patience": 2},
    # a 2-epoch model does not beat the mean face; the tests need it registered all the same
    "mlflow": {"candidate_max_rmse": 1000.0},
}


def _project_files() -> list[str]:
    """Files git tracks or would track (untracked but not ignored): what a clone would hold."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project_copy(dest: Path, params_override: dict | None = None) -> Path:
    """Copy the project into ``dest`` as a fresh git + DVC repo with tiny params."""
    for rel in _project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params = merge(merge(params, TINY_PARAMS), params_override or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


@pytest.fixture
def project_copy(tmp_path, monkeypatch) -> Path:
    """A tiny, self-contained copy of the project; cwd is set to it, MLflow stays inside it."""
    dest = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(dest)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FKP_MLFLOW_ARTIFACTS", raising=False)
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return dest


# --------------------------------------------------------------------------- a real Prefect server


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and all it started: SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def mlflow_server(folder: Path, command: list[str]) -> Iterator[str]:
    """``mlflow <command>`` on the folder's store on a free port; yields its address, stops it after."""
    from fkp import quiet

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, "MLFLOW_TRACKING_URI")}
    log = folder / f"mlflow-{command[0]}-{port}.log"  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *command, "--backend-store-uri", "sqlite:///mlflow.db"]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,  # its workers share its process group, stopped together below
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    stop_group(server, timeout=10)
                    pytest.fail(f"mlflow {' '.join(command)} did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield base
    finally:
        stop_group(server, timeout=20)


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real ``prefect server start`` (own SQLite database, scheduler loop every 2 s) for the session.

    Its API URL is set for this process (Prefect settings) and for every subprocess (environment).
    """
    import urllib.request

    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from fkp.orchestration.prefect_local import die_with_parent

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_UI_API_URL": url,  # the UI asks 127.0.0.1:4200 otherwise
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,  # a killed pytest leaves no server behind
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
            return False

    try:
        wait_until(healthy, 120, "the Prefect server to answer")
        with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: url}):
            mp.setenv("PREFECT_API_URL", url)
            mp.setenv("PREFECT_HOME", str(home))
            mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            # threads that start with an empty context (the process pool's log forwarder) read the
            # process-wide settings: without this they start a hidden temporary server of their own
            refresh_global_settings_context()
            yield {"url": url, "ui": f"http://127.0.0.1:{port}", "home": home, "log": home / "server.log"}
        refresh_global_settings_context()
    finally:
        stop_group(server, timeout=20)
        log.close()


# --------------------------------------------------------------------------- a real browser

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: apt-get install -y chromium
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: screenshots the browser tests leave for people to look at (git-ignored)
SCREENSHOTS = ROOT / "tests" / "artifacts"


def require_chromium() -> Path:
    """Debian's Chromium; missing, it fails the test in CI and skips it elsewhere."""
    if CHROMIUM.is_file():
        return CHROMIUM
    message = f"{CHROMIUM} not found: apt-get install -y chromium (Debian)"
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {message}")
    pytest.skip(message)


@pytest.fixture
def chromium():
    """Debian's headless Chromium driven by Playwright (no browser download); in CI it must exist.

    Per test: Playwright's sync API runs an event loop in the main thread while it is open, and a
    Prefect flow called from a thread with a running loop turns into a coroutine.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()
