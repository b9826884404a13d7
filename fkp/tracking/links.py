"""Links into MLflow's UI that open its model-training view.

MLflow 3.17's UI picks its view in the browser: the ``workflowType`` query of the page's URL
(after the ``#``), else the browser's saved choice, else its GenAI view (traces, tokens, cost),
whatever the experiment's tags say. So every link fkp prints names the training view itself, and
works on any MLflow server and in a browser that never opened MLflow before.
"""

from __future__ import annotations

from urllib.parse import quote

#: MLflow's UI query parameter for its view, and its value for the model-training view.
WORKFLOW_PARAM = "workflowType"
TRAINING_WORKFLOW = "machine_learning"
_TRAINING_QUERY = f"?{WORKFLOW_PARAM}={TRAINING_WORKFLOW}"


def ui_base(tracking_uri: str) -> str | None:
    """The UI's address for a tracking server (``http(s)://``); ``None`` for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return tracking_uri.rstrip("/")


def _page(tracking_uri: str, route: str) -> str | None:
    base = ui_base(tracking_uri)
    return None if base is None else f"{base}/#/{route}{_TRAINING_QUERY}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page: params, metric charts, artifacts."""
    return _page(tracking_uri, f"experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}")
