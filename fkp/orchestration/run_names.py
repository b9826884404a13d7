"""Flow run names that say what a run is: the flow, the data it trained on and when (UTC)."""

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
    """A ``flow_run_name`` callable: ``<kind>-<data source>-<YYYY-MM-DD-HHMM>``."""

    def name() -> str:
        return f"{kind}-{data_source()}-{datetime.now(UTC):%Y-%m-%d-%H%M}"

    return name
