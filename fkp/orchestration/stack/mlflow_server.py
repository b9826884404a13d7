"""The MLflow tracking server: runs and the registry in PostgreSQL, artifacts proxied by the server.

With ``--serve-artifacts`` clients upload and download pictures and models through the server's
HTTP API (``mlflow-artifacts:/``), so no client needs a path to, or credentials for, the artifact
store. The backend URI (with its password) goes through the environment, not the command line, so it
never shows in ``ps``. ``--app-name fkp`` serves MLflow's UI opening on training runs
(:mod:`fkp.tracking.ui_app`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fkp.orchestration.stack import postgres
from fkp.orchestration.stack.config import StackConfig
from fkp.orchestration.stack.net import http_ok
from fkp.orchestration.stack.supervisor import Service


def artifacts_dir(config: StackConfig) -> Path:
    return config.state_dir / "mlflow-artifacts"


def service(config: StackConfig) -> Service:
    artifacts = artifacts_dir(config)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        config.host,
        "--port",
        str(config.mlflow_port),
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--workers",
        "2",
        # fkp's MLflow app (fkp.tracking.ui_app): a browser new to the UI opens on training runs, not GenAI
        "--app-name",
        "fkp",
    ]
    if config.host not in ("127.0.0.1", "localhost", "0.0.0.0"):
        # requests to a named host carry that name; MLflow only accepts localhost and private IPs by default
        names = (config.host, "localhost", "127.0.0.1")
        argv += ["--allowed-hosts", ",".join(f"{n},{n}:{config.mlflow_port}" for n in names)]
    return Service(
        name="mlflow",
        argv=argv,
        env={"MLFLOW_BACKEND_STORE_URI": postgres.uri(config, "mlflow")},
        cwd=config.state_dir,
        healthy=lambda: http_ok(f"{config.mlflow_url}/health"),
        url=config.mlflow_url,
        start_timeout=180,
    )
