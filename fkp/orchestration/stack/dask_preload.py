"""Dask worker preload: name the worker process in ``FKP_EXECUTOR`` for every run it executes.

``dask worker --preload fkp.orchestration.stack.dask_preload`` calls :func:`dask_setup` once in each
worker process.
Child processes (a ``dvc exp run`` or ``fkp train`` started by a task) inherit the variable, and
:func:`fkp.tracking.provenance_tags` copies it onto the MLflow run as ``fkp.executor``, so a run shows
which worker process trained it.
"""

from __future__ import annotations

import os
import socket

EXECUTOR_ENV = "FKP_EXECUTOR"  # read by fkp.tracking (tag fkp.executor)


def executor_id(name: str, pid: int, host: str) -> str:
    """``dask:<worker name>:<pid>@<host>``."""
    return f"dask:{name}:{pid}@{host}"


def dask_setup(worker) -> None:  # noqa: ANN001 (distributed.Worker, not imported to keep this light)
    os.environ[EXECUTOR_ENV] = executor_id(str(worker.name), os.getpid(), socket.gethostname())
