"""The arguments of ``fkp stack`` and their handling (kept here so ``fkp/cli.py`` only hooks it in)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from fkp.orchestration.stack.config import (
    DEFAULT_DASK_WORKERS,
    DEFAULT_HOST,
    DEFAULT_POOL,
    DEFAULT_STATE_DIR,
    StackConfig,
)
from fkp.orchestration.stack.supervisor import StackError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status"), help="start, stop or check the stack")
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="pids, logs and data (default: %(default)s)"
    )
    parser.add_argument(
        "--project", type=Path, default=Path("."), help="repository the workers run in (default: cwd)"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address every server binds (default: %(default)s; see the README before changing it)",
    )
    for name in ("postgres", "mlflow", "prefect", "dask"):
        parser.add_argument(f"--{name}-port", type=int, default=0, help="default: a free port, then kept")
    parser.add_argument("--dask-dashboard-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--dask-workers", type=int, default=DEFAULT_DASK_WORKERS, help="default: %(default)s")
    parser.add_argument("--pool", default=DEFAULT_POOL, help="Prefect work pool (default: %(default)s)")
    parser.add_argument("--no-deploy", action="store_true", help="up: do not deploy the retrain flow")
    parser.add_argument("--timeout", type=float, default=20.0, help="down: seconds before SIGKILL")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from fkp.orchestration.stack import commands

    try:
        if args.action == "down":
            commands.down(args.state_dir, timeout=args.timeout)
            return 0
        if args.action == "status":
            return 0 if commands.status(args.state_dir) else 1
    except StackError as error:
        print(f"fkp stack: {error}", file=sys.stderr)
        return 1
    if args.dask_workers < 1:
        print("fkp stack: --dask-workers must be at least 1", file=sys.stderr)
        return 2
    config = StackConfig(
        state_dir=args.state_dir,
        project_dir=args.project,
        host=args.host,
        postgres_port=args.postgres_port,
        mlflow_port=args.mlflow_port,
        prefect_port=args.prefect_port,
        dask_port=args.dask_port,
        dask_dashboard_port=args.dask_dashboard_port,
        dask_workers=args.dask_workers,
        pool=args.pool,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed `up` still stops what it started
    try:
        commands.up(config, deploy=not args.no_deploy)
    except StackError as error:
        print(f"fkp stack: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fkp stack: interrupted; stopped what was started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
