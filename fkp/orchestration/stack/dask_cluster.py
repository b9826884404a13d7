"""A Dask cluster as separate processes: one ``dask scheduler`` and N ``dask worker`` processes.

Each worker is its own ``dask worker`` command (one process, one thread: Keras trains one model per
process), so a worker can be lost on its own, as a machine would be. Workers import the sweep's tasks
from the repository (``flows/`` on ``PYTHONPATH``), run in its folder (the tasks use relative paths)
and report to the stack's Prefect and MLflow servers. The scheduler unpickles the task graphs it
receives, so it needs the repository on ``PYTHONPATH`` too.
:mod:`fkp.orchestration.stack.dask_preload` records
which worker process ran a task on its MLflow run.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fkp.orchestration.stack.config import StackConfig, client_env
from fkp.orchestration.stack.net import http_ok
from fkp.orchestration.stack.supervisor import Service


def _dask() -> str:
    return str(Path(sys.executable).parent / "dask")


def worker_env(config: StackConfig) -> dict[str, str]:
    """What a process running the project's tasks needs: the servers and the repository on the path."""
    env = client_env(config)
    env["PYTHONPATH"] = str(config.project_dir)
    env["PREFECT_HOME"] = str(config.state_dir / "prefect")
    return env


def scheduler_service(config: StackConfig) -> Service:
    dashboard = f"{config.client_host}:{config.dask_dashboard_port}"
    return Service(
        name="dask-scheduler",
        argv=[
            _dask(),
            "scheduler",
            "--host",
            config.host,
            "--port",
            str(config.dask_port),
            "--dashboard-address",
            f"{config.host}:{config.dask_dashboard_port}",
        ],
        env={"PYTHONPATH": str(config.project_dir)},  # the scheduler unpickles task graphs: flows/ too
        cwd=config.project_dir,
        healthy=lambda: http_ok(f"http://{dashboard}/health"),
        url=config.dask_address,
        start_timeout=60,
    )


def worker_name(index: int) -> str:
    return f"dask-worker-{index}"


def connected_workers(config: StackConfig) -> list[str]:
    """Names of the workers the scheduler knows, from its HTTP identity page."""
    url = f"http://{config.client_host}:{config.dask_dashboard_port}/json/identity.json"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own URL)
            identity = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return sorted(str(w.get("name")) for w in identity.get("workers", {}).values())


def worker_service(config: StackConfig, index: int) -> Service:
    name = worker_name(index)
    return Service(
        name=name,
        argv=[
            _dask(),
            "worker",
            config.dask_address,
            "--name",
            name,
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--host",
            config.host,
            "--no-dashboard",
            "--dashboard-address",  # the worker's HTTP server (health, metrics) still runs: bind it here too
            f"{config.host}:0",
            "--preload",
            "fkp.orchestration.stack.dask_preload",
            "--local-directory",
            str(config.state_dir / "dask" / name),
        ],
        env=worker_env(config),
        cwd=config.project_dir,
        healthy=lambda: name in connected_workers(config),
        start_timeout=90,
    )
