"""MLflow runs that a killed process left RUNNING are closed at the next start.

Each run records who runs it (tags ``fkp.pid``, ``fkp.host``, ``fkp.pid_start``, refreshed when a
later step resumes the run). A RUNNING run is closed (status KILLED, tag ``fkp.closed``
saying why) only when that process certainly no longer exists on this host; a live run, a run
from another host and a run without the tags are left alone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fkp.safety.owner import Owner, host_id

TAG_PID = "fkp.pid"
TAG_HOST = "fkp.host"
TAG_PID_START = "fkp.pid_start"
TAG_CLOSED = "fkp.closed"

_log = logging.getLogger(__name__)


def owner_tags() -> dict[str, str]:
    """The tags that tell a later start whether the process running this run is still alive."""
    me = Owner.me()
    tags = {TAG_PID: str(me.pid), TAG_HOST: me.host}
    if me.started is not None:
        tags[TAG_PID_START] = me.started
    return tags


def run_owner(tags: dict[str, str]) -> Owner | None:
    """The owner recorded in a run's tags; ``None`` when the run predates them or they are garbled."""
    try:
        return Owner(int(tags[TAG_PID]), tags[TAG_HOST], tags.get(TAG_PID_START))
    except (KeyError, ValueError):
        return None


def close_dead_runs(experiment_ids: list[str], *, client=None) -> list[str]:
    """Mark RUNNING runs of dead processes KILLED, with a note; return their ids."""
    from mlflow import MlflowClient
    from mlflow.entities import RunStatus

    client = client or MlflowClient()
    running = client.search_runs(
        experiment_ids, filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host_id()}'"
    )
    closed = []
    for run in running:
        owner = run_owner(run.data.tags)
        if owner is None or not owner.is_dead():
            continue
        when = datetime.now(UTC).isoformat(timespec="seconds")
        note = f"closed at {when}: its process (pid {owner.pid}) ended without finishing the run (killed)"
        client.set_tag(run.info.run_id, TAG_CLOSED, note)
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        closed.append(run.info.run_id)
        _log.info("MLflow run %s was left RUNNING by a killed process: marked KILLED", run.info.run_id)
    return closed
