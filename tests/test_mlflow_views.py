"""MLflow's UI opens on training runs, wherever a person enters it: real servers, Debian's Chromium.

MLflow 3.17's UI decides between its GenAI view (traces, tokens, cost) and its model-training view
(runs table, metric charts) in the browser. A browser that never opened MLflow lands on GenAI
unless the server is ``mlflow ui --app-name fkp`` (``fkp.tracking.ui_app``) or the link names the
training view (``fkp.tracking.links``). Each test uses a fresh browser context (no saved choice).
The training view is told apart by its sidebar, which lists the *Model registry* only there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, mlflow_server, require_chromium

RUN_NAME = "sample·lean·mask·cli"
UI_TIMEOUT_MS = 90_000  # a bound on a shared 2-core machine, not a speed check
_MAKE_RUN = f"""
import mlflow
from fkp import tracking
from fkp.params import load_params

tracking.configure("sqlite:///mlflow.db", artifact_root="mlartifacts")
params = load_params({str(ROOT / "params.yaml")!r})
with tracking.start_run({RUN_NAME!r}, params, raw_dir="data/raw/sample") as run:
    for epoch in (1, 2, 3):
        mlflow.log_metric("val_rmse", 4.0 - epoch, step=epoch)
print(run.info.experiment_id, run.info.run_id)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A folder whose ``mlflow.db`` holds one run made by fkp's tracking code: (folder, experiment, run)."""
    require_chromium()
    folder = tmp_path_factory.mktemp("mlflow-views")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_RUN], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    experiment_id, run_id = done.stdout.split()[-2:]
    return folder, experiment_id, run_id


@pytest.fixture(scope="module")
def fkp_ui(store) -> Iterator[str]:
    """The README's command: ``mlflow ui --app-name fkp``."""
    yield from mlflow_server(store[0], ["ui", "--app-name", "fkp"])


@pytest.fixture(scope="module")
def plain_server(store) -> Iterator[str]:
    """MLflow's own ``mlflow server``, as a team may already run it."""
    yield from mlflow_server(store[0], ["server"])


@pytest.fixture
def fresh_page(chromium):
    """A page in a new browser context: no MLflow choice saved from an earlier visit."""
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


def _registry_link(page):
    return page.get_by_role("link", name="Model registry")


def _assert_training_view(page) -> None:
    """The sidebar of the training view (Model registry), and nothing of GenAI's (traces, tokens)."""
    _registry_link(page).first.wait_for()
    body = page.inner_text("body")
    for genai in ("Observability", "Token Usage"):
        assert genai not in body, f"{genai!r} on {page.url}: the GenAI view"


def test_home_experiments_and_run_open_on_training(fkp_ui: str, store, fresh_page) -> None:
    _, experiment_id, run_id = store
    page = fresh_page
    page.goto(f"{fkp_ui}/")
    page.get_by_text("Recent Experiments").first.wait_for()
    _assert_training_view(page)

    page.get_by_role("link", name="Experiments").first.click()
    page.get_by_role("link", name="fkp", exact=True).first.click()
    page.get_by_text(RUN_NAME).first.wait_for()  # the runs table
    assert f"/experiments/{experiment_id}/runs" in page.url and "workflowType=machine_learning" in page.url
    _assert_training_view(page)

    page.get_by_text(RUN_NAME).first.click()
    page.get_by_text("Model metrics").first.wait_for()
    assert f"/runs/{run_id}" in page.url
    _assert_training_view(page)
    assert "val_rmse" in page.inner_text("body")

    # a person who switches to GenAI keeps that choice: the page only fills in a missing one.
    # The choice is saved while no MLflow page runs (a running one may write its own back, and a
    # reload then keeps the URL it rewrote to `workflowType=machine_learning`): on the server's
    # health page, then MLflow's page loads afresh and reads it at start.
    page.goto(f"{fkp_ui}/health")
    page.evaluate("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('genai'))")
    page.goto(f"{fkp_ui}/#/experiments/{experiment_id}")
    page.get_by_text("Observability").first.wait_for()  # GenAI's sidebar (its first tab depends on traces)
    assert _registry_link(page).count() == 0


def test_the_run_link_fkp_prints_opens_its_training_view(
    plain_server: str, store, fresh_page, monkeypatch, tmp_path
) -> None:
    """The retrain flow's summary links to the run: on MLflow's plain server, its training view."""
    from fkp.stages.handover import RUN_JSON
    from flows import retrain

    _, experiment_id, run_id = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", plain_server)
    monkeypatch.chdir(tmp_path)  # the summary reads the training's hand-off file, as after `dvc repro`
    RUN_JSON.parent.mkdir(parents=True)
    RUN_JSON.write_text(json.dumps({"run_id": run_id}))
    markdown = retrain._markdown(retrain._summary(["train"], []), "Completed")
    links = re.findall(r"https?://\S+", markdown)
    assert len(links) == 1, markdown

    page = fresh_page
    page.goto(links[0])
    page.get_by_text(RUN_NAME).first.wait_for()
    assert f"/experiments/{experiment_id}/runs/{run_id}" in page.url
    _assert_training_view(page)
    assert page.get_by_text("Model metrics").first.is_visible()
