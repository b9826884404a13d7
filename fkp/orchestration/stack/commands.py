"""``fkp stack up | down | status``: the services in order, their URLs and the shell exports.

Start order is dependency order (PostgreSQL, MLflow, Prefect server, work pool, Prefect worker, Dask
scheduler, Dask workers, the retrain deployment); ``down`` stops in reverse. If any step fails, or the
command is interrupted, everything it started is stopped again before the error is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from fkp.orchestration.stack import dask_cluster, mlflow_server, postgres, prefect_server
from fkp.orchestration.stack.config import StackConfig, export_lines, resolve
from fkp.orchestration.stack.supervisor import (
    StackError,
    process_of,
    read_state,
    records,
    start,
    stop_all,
    write_state,
)

Report = Callable[[str], None]


def _previous(state_dir: Path) -> StackConfig | None:
    saved = read_state(state_dir).get("config")
    return StackConfig.from_dict(saved) if saved else None


def running(state_dir: Path) -> list[str]:
    """Names of the recorded processes that are still alive."""
    return [r.name for r in records(read_state(state_dir)) if process_of(r) is not None]


def up(config: StackConfig, *, deploy: bool = True, report: Report = print) -> StackConfig:
    """Start the whole stack; return the resolved config (absolute folders, the ports picked)."""
    state_dir = config.state_dir.expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if alive := running(state_dir):
        raise StackError(
            f"the stack in {state_dir} is already running ({', '.join(alive)}): run `fkp stack down` first"
        )
    config = resolve(dataclasses.replace(config, state_dir=state_dir), _previous(state_dir))
    write_state(state_dir, {"config": config.to_dict(), "processes": []})
    try:
        postgres.ensure_cluster(config)
        _start(postgres.service(config), config, report)
        postgres.ensure_databases(config)
        _start(mlflow_server.service(config), config, report)
        _start(prefect_server.server_service(config), config, report)
        prefect_server.ensure_pool(config)
        _start(prefect_server.worker_service(config), config, report)
        _start(dask_cluster.scheduler_service(config), config, report)
        for index in range(1, config.dask_workers + 1):
            _start(dask_cluster.worker_service(config, index), config, report)
        if deploy:
            prefect_server.deploy(config)
            report("deployed the retrain flow to work pool " + config.pool)
    except BaseException:
        report("stopping what was started")
        stop_all(state_dir, report=report)
        raise
    report("")
    report(summary(config))
    return config


def _start(service, config: StackConfig, report: Report) -> None:
    record = start(service, config.state_dir)
    report(f"{service.name} ready (pid {record.pid})" + (f" at {service.url}" if service.url else ""))


def summary(config: StackConfig) -> str:
    lines = [
        f"MLflow UI and tracking:  {config.mlflow_url}",
        f"Prefect UI:              {config.prefect_api_url.removesuffix('/api')}",
        f"Dask scheduler:          {config.dask_address} (dashboard {config.dask_dashboard_url})",
        f"PostgreSQL:              {config.client_host}:{config.postgres_port} "
        f"(databases {', '.join(postgres.DATABASES)}; password in {config.state_dir / 'postgres'})",
        f"work pool:               {config.pool} (worker in {config.project_dir})",
        "",
        "# use the stack from a shell:",
        *export_lines(config),
    ]
    return "\n".join(lines)


def down(state_dir: Path, *, timeout: float = 20.0, report: Report = print) -> None:
    """Stop every process the stack started, last first; the data stays for the next ``up``."""
    state_dir = state_dir.expanduser().resolve()
    if not records(read_state(state_dir)):
        report(f"nothing running in {state_dir}")
        return
    stop_all(state_dir, timeout=timeout, report=report)


def status(state_dir: Path, *, report: Report = print) -> bool:
    """Print each recorded process (running or gone) and the exports; True if all are running."""
    state_dir = state_dir.expanduser().resolve()
    state = read_state(state_dir)
    found = records(state)
    if not found:
        report(f"no stack running in {state_dir}")
        return False
    all_up = True
    for record in found:
        alive = process_of(record) is not None
        all_up &= alive
        where = f" {record.url}" if record.url else ""
        report(f"{record.name:<16} {'running' if alive else 'GONE':<8} pid {record.pid}{where}")
    if state.get("config"):
        report("")
        report("\n".join(export_lines(StackConfig.from_dict(state["config"]))))
    return all_up
