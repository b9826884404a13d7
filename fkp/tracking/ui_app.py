"""``mlflow server --app-name fkp``: MLflow's own server, whose UI opens on training runs.

MLflow 3.17's UI chooses between its GenAI view (traces, tokens, cost) and its model-training
view (runs table, metric charts) in the browser alone: the URL's ``workflowType`` query, else the
browser's saved choice (local storage ``mlflow.workflowType_v1``), else GenAI. The server has no
setting for it and the experiment tag ``mlflow.experimentKind`` no longer counts. This app is
MLflow's unchanged, except that its page first saves "model training" as the browser's choice
when the browser has none yet, so Home, the experiments list and every run open on training; the
toggle at the top left still switches, and the browser remembers what its user picked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fkp.tracking.links import TRAINING_WORKFLOW

if TYPE_CHECKING:
    from fastapi import FastAPI

#: Where MLflow's UI keeps the browser's view choice (its ``useLocalStorage`` key and version).
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"

_KEY, _VALUE = json.dumps(WORKFLOW_STORAGE_KEY), json.dumps(json.dumps(TRAINING_WORKFLOW))
#: Saves the training view as the browser's choice unless it has one (the UI stores JSON strings).
_DEFAULT_VIEW_SCRIPT = (
    f"<script>try{{if(localStorage.getItem({_KEY})===null)localStorage.setItem({_KEY},{_VALUE})}}"
    "catch(e){}</script>"
)


def with_training_default(index_html: str) -> str:
    """MLflow's page with the default-view script run before its own scripts."""
    if "<head>" not in index_html:
        raise ValueError("MLflow's index.html has no <head>: the training-view default cannot be set")
    return index_html.replace("<head>", "<head>" + _DEFAULT_VIEW_SCRIPT, 1)


def create_app() -> FastAPI:
    """The ASGI app uvicorn serves for ``mlflow server --app-name fkp`` (an MLflow ``mlflow.app`` plugin)."""
    from flask import Response
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app

    index = Path(flask_app.static_folder) / "index.html"
    page = with_training_default(index.read_text(encoding="utf-8"))
    # MLflow's Flask app serves its page from the view "serve" ("/" under any --static-prefix)
    if "serve" not in flask_app.view_functions:
        raise RuntimeError("MLflow's server has no view 'serve' any more: update fkp.tracking.ui_app")
    flask_app.view_functions["serve"] = lambda: Response(page, mimetype="text/html")
    return app
