"""The Prefect server on PostgreSQL, a process work pool, and a worker that runs the pool's flow runs.

The server keeps its state in the ``prefect`` database (``postgresql+asyncpg``) and its home in the
state folder, so it never shares a database with another Prefect on the machine. The worker runs in
the repository folder with the stack's environment, so a deployment run triggered from the UI or by
``prefect deployment run`` trains the project there and logs to the stack's MLflow server.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fkp.orchestration.stack import postgres
from fkp.orchestration.stack.config import StackConfig
from fkp.orchestration.stack.dask_cluster import worker_env
from fkp.orchestration.stack.net import http_ok
from fkp.orchestration.stack.supervisor import Service, run_once

WORKER_NAME = "fkp-worker"
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def _prefect() -> str:
    return str(Path(sys.executable).parent / "prefect")


def home(config: StackConfig) -> Path:
    return config.state_dir / "prefect"


def server_service(config: StackConfig) -> Service:
    home(config).mkdir(parents=True, exist_ok=True)
    return Service(
        name="prefect-server",
        argv=[_prefect(), "server", "start", "--host", config.host, "--port", str(config.prefect_port)],
        env={
            **QUIET,
            "PREFECT_HOME": str(home(config)),
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres.uri(config, "prefect", "postgresql+asyncpg"),
            "PREFECT_UI_API_URL": config.prefect_api_url,
        },
        cwd=config.state_dir,
        healthy=lambda: http_ok(f"{config.prefect_api_url}/health"),
        url=config.prefect_api_url.removesuffix("/api"),
        start_timeout=240,
    )


def client_env(config: StackConfig) -> dict[str, str]:
    return {**QUIET, "PREFECT_HOME": str(home(config)), "PREFECT_API_URL": config.prefect_api_url}


def ensure_pool(config: StackConfig) -> None:
    """Create the process work pool (or leave the existing one as it is)."""
    run_once(
        [_prefect(), "work-pool", "create", config.pool, "--type", "process", "--overwrite"],
        env=client_env(config),
        what=f"creating work pool {config.pool}",
    )


def online_workers(config: StackConfig) -> list[str]:
    """Names of the pool's workers the server sees as online (they send heartbeats)."""
    request = urllib.request.Request(
        f"{config.prefect_api_url}/work_pools/{config.pool}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310 (our own URL)
            workers = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [w["name"] for w in workers if w.get("status") == "ONLINE"]


def worker_service(config: StackConfig) -> Service:
    return Service(
        name="prefect-worker",
        argv=[_prefect(), "worker", "start", "--pool", config.pool, "--type", "process"]
        + ["--name", WORKER_NAME],
        env={**worker_env(config), **client_env(config)},
        cwd=config.project_dir,
        healthy=lambda: WORKER_NAME in online_workers(config),
        start_timeout=120,
    )


def deploy(config: StackConfig) -> str:
    """Declare the retrain deployment (``flows/deploy.py``) on the stack's server; return its output."""
    script = config.project_dir / "flows" / "deploy.py"
    return run_once(
        [sys.executable, str(script), "--pool", config.pool],
        env={**worker_env(config), **client_env(config)},
        what=f"deploying {script}",
        cwd=config.project_dir,
    )
