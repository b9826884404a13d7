"""Declare the retrain deployment on a Prefect server: a work pool's workers run it, on a schedule.

    prefect work-pool create fkp-pool --type process          # once (``fkp stack up`` does both)
    python flows/deploy.py --pool fkp-pool                     # PREFECT_API_URL set to the server
    prefect worker start --pool fkp-pool                       # in the repository, on a worker machine
    prefect deployment run 'retrain/fkp-retrain'               # an extra run now, from anywhere

The deployment's code source is this repository's folder: a worker runs the flow in that folder
(``retrain()`` retrains the project in its working directory), so every worker machine needs the
repository at the same path (a shared folder) with the project installed. Unlike ``flow.serve``,
which runs the flow in the serving process, the deployment is kept by the server and any worker of
the pool can pick up its runs. One run at a time (concurrency limit 1; extra runs wait in the queue),
since every retrain writes the same files and moves the same champion alias.

The parameters are the flow's own defaults, stored explicitly on the deployment so the UI shows them
and a run from the UI can change them.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from flows.retrain import DEFAULT_CRON, DEPLOYMENT_NAME, DESCRIPTION, TAGS  # noqa: E402  (one definition)

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/retrain.py:retrain"
DEFAULT_POOL = "fkp-pool"


def default_parameters(fn: Any) -> dict[str, Any]:
    """The defaults of ``fn``'s keyword parameters, as the deployment's editable parameters."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty and isinstance(p.default, str | int | float | bool | None)
    }


def deploy(pool: str, cron: str, name: str = DEPLOYMENT_NAME, root: Path = ROOT) -> str:
    """Create or update the deployment; return its id."""
    sys.path.insert(0, str(root))
    from prefect import Flow

    from fkp.orchestration import crash_detection

    retrain = Flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    deployment = retrain.to_deployment(
        name=name,
        cron=cron,
        parameters=default_parameters(retrain.fn),
        description=DESCRIPTION,
        tags=TAGS,
        concurrency_limit=1,
        work_pool_name=pool,
        job_variables={"env": crash_detection.heartbeat_env()},  # a killed run is Crashed (heartbeats)
    )
    # ``apply`` rather than ``flow.deploy``: deploy first lists the pool's online workers, a request
    # prefect 3.8.8's client sends with null limit/offset, which its own server rejects (422).
    deployment_id = deployment.apply(work_pool_name=pool)
    crash_detection.ensure_automation()
    return str(deployment_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Declare the retrain deployment on the Prefect server.")
    parser.add_argument("--pool", default=DEFAULT_POOL, help="process work pool (default: %(default)s)")
    parser.add_argument("--cron", default=DEFAULT_CRON, help="schedule (default: %(default)r)")
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name (default: %(default)s)")
    args = parser.parse_args(argv)
    deployment_id = deploy(args.pool, args.cron, args.name)
    print(f"deployment retrain/{args.name} ({deployment_id}) on work pool {args.pool}, cron {args.cron!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
