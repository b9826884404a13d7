"""Where the stack lives and listens, and the environment its clients need."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fkp.orchestration.stack.net import connect_host, free_port

DEFAULT_STATE_DIR = Path(".stack")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_POOL = "fkp-pool"
DEFAULT_DASK_WORKERS = 2
PORT_FIELDS = ("postgres_port", "mlflow_port", "prefect_port", "dask_port", "dask_dashboard_port")


@dataclass(frozen=True)
class StackConfig:
    """Everything ``fkp stack up`` decides once and ``down``/``status`` read back from the state file.

    A port of 0 means "pick a free one"; the picked port is kept in the state file and reused by the
    next ``up``, so the URLs a team has exported stay valid across restarts.
    """

    state_dir: Path = DEFAULT_STATE_DIR
    project_dir: Path = Path(".")
    host: str = DEFAULT_HOST
    postgres_port: int = 0
    mlflow_port: int = 0
    prefect_port: int = 0
    dask_port: int = 0
    dask_dashboard_port: int = 0
    dask_workers: int = DEFAULT_DASK_WORKERS
    pool: str = DEFAULT_POOL

    @property
    def client_host(self) -> str:
        return connect_host(self.host)

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.client_host}:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.client_host}:{self.prefect_port}/api"

    @property
    def dask_address(self) -> str:
        return f"tcp://{self.client_host}:{self.dask_port}"

    @property
    def dask_dashboard_url(self) -> str:
        return f"http://{self.client_host}:{self.dask_dashboard_port}/status"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state_dir"] = str(self.state_dir)
        out["project_dir"] = str(self.project_dir)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StackConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["state_dir"] = Path(values.get("state_dir", DEFAULT_STATE_DIR))
        values["project_dir"] = Path(values.get("project_dir", "."))
        return cls(**values)


def resolve(config: StackConfig, previous: StackConfig | None) -> StackConfig:
    """Absolute folders; every port 0 replaced by the previous run's port, else by a free one."""
    ports: dict[str, int] = {}
    for name in PORT_FIELDS:
        port = getattr(config, name) or (getattr(previous, name) if previous else 0)
        ports[name] = port or free_port(config.host if config.host != "0.0.0.0" else "127.0.0.1")
    return dataclasses.replace(
        config,
        state_dir=config.state_dir.expanduser().resolve(),
        project_dir=config.project_dir.expanduser().resolve(),
        **ports,
    )


def client_env(config: StackConfig) -> dict[str, str]:
    """What a user's shell (or a CI job) exports to use the stack: tracking, orchestration, sweeps."""
    return {
        "MLFLOW_TRACKING_URI": config.mlflow_url,
        "PREFECT_API_URL": config.prefect_api_url,
        "FKP_SWEEP_TASK_RUNNER": "dask",
        "FKP_SWEEP_ADDRESS": config.dask_address,
    }


def export_lines(config: StackConfig) -> list[str]:
    return [f"export {name}={value}" for name, value in client_env(config).items()]
