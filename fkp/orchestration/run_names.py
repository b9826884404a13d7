"""Flow run names that say what a run is: the flow, the data it trained on and when it was due (UTC)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


def data_source(params_path: str = "params.yaml") -> str:
    """``data.source`` of the project's params (``unknown`` if unreadable: a name must never fail a run)."""
    try:
        from fkp.params import load_params

        return load_params(params_path).data.source
    except Exception:
        return "unknown"


def run_namer(kind: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<kind>-<data source>-<YYYY-MM-DD-HHMM>``.

    The time is the run's scheduled start, so a scheduled run is named for its slot (Monday 03:00),
    not for the minute a busy worker got to it; a run started by hand is scheduled for "now".
    """

    def name() -> str:
        return f"{kind}-{data_source()}-{_scheduled():%Y-%m-%d-%H%M}"

    return name


def _scheduled() -> datetime:
    try:
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time
    except Exception:
        when = None
    if not isinstance(when, datetime):
        return datetime.now(UTC)
    return when.astimezone(UTC)
