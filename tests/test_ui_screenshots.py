"""The MLflow UI as a person sees it: a real ``mlflow server`` on two tiny training runs, in Chromium.

Debian's Chromium is driven by Playwright's Python package (no browser download). The test opens
the runs table (model-training view, key columns added the way a user adds them) and the
classic run comparison, asserts that the run names, key columns and shared pictures are there,
and saves screenshots to ``reports/screenshots/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import CHROMIUM_FLAGS, ROOT, make_project_copy, mlflow_server, require_chromium

SHOTS = ROOT / "reports" / "screenshots"
KEY_COLUMNS = ("val_rmse", "impute.strategy", "model.arch", "data.source")
PICTURES = ("val_faces.png", "learning_curves.png", "keypoint_errors.png", "per_keypoint.csv")
UI_TIMEOUT_MS = 90_000  # two cores shared with a training run elsewhere: the UI can be slow to render

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fkp(project: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FKP_MLFLOW_ARTIFACTS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["fkp", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"fkp {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with two finished, evaluated runs that differ in impute.strategy."""
    project = make_project_copy(tmp_path_factory.mktemp("ui") / "project")
    _fkp(project, "sample", "--out", "data/raw/sample")
    _fkp(project, "validate", "data/raw/sample", "--report-dir", "reports/validation")
    _fkp(project, "prepare", "data/raw/sample", "--out", "data/prepared")
    params = yaml.safe_load((project / "params.yaml").read_text())
    for strategy in ("mask", "ffill"):
        params["impute"]["strategy"] = strategy
        variant = project / f"params-{strategy}.yaml"
        variant.write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in ("impute", "train", "evaluate"):
            _fkp(project, "--params", variant.name, stage)
    return project


@pytest.fixture(scope="module")
def mlflow_ui(two_runs: Path) -> Iterator[str]:
    """``mlflow server`` on the project's SQLite store, on a free local port; stopped afterwards."""
    yield from mlflow_server(two_runs, ["server"])


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


def _runs(project: Path) -> dict[str, str]:
    """Run name -> run id, read from the store the server shows."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fkp")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run.info.run_id for run in found} | {"": experiment.experiment_id}


def _page(browser):
    page = browser.new_page(viewport={"width": 1920, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    return page


def _close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant side panel that hides a third of the table."""
    close = page.locator("button[aria-label='Close']").first
    if close.count() and close.is_visible():
        close.click()


def test_runs_table_shows_names_dataset_and_key_columns(browser, mlflow_ui: str, two_runs: Path) -> None:
    runs = _runs(two_runs)
    names = ["sample·lean·mask·cli", "sample·lean·ffill·cli"]
    assert set(names) <= set(runs)
    page = _page(browser)
    try:
        page.goto(f"{mlflow_ui}/#/experiments/{runs['']}/runs")
        page.get_by_text(names[0]).first.wait_for()
        # the experiment's runs table, not GenAI's overview
        assert page.get_by_text("Training runs").or_(page.get_by_text("Runs", exact=True)).first.is_visible()
        _close_assistant(page)
        page.get_by_role("button", name="Columns").click()
        search = page.get_by_placeholder("Search columns")
        for column in KEY_COLUMNS:
            search.fill(column)
            page.get_by_role("menuitemcheckbox", name=column, exact=True).or_(
                page.get_by_role("checkbox", name=column, exact=True)
            ).or_(page.get_by_text(column, exact=True)).first.click()
        page.keyboard.press("Escape")
        body = page.inner_text("body")
        for text in (*names, *KEY_COLUMNS, "mask", "ffill", "lean"):
            assert text in body, f"{text!r} not on the runs table"
        assert "sample (" in body  # the Dataset column: name and DVC digest
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "mlflow_runs_table.png"))
    finally:
        page.close()


def test_compare_shows_key_params_scores_and_shared_pictures(browser, mlflow_ui: str, two_runs: Path) -> None:
    runs = _runs(two_runs)
    ids = [runs["sample·lean·mask·cli"], runs["sample·lean·ffill·cli"]]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([runs[""]])})
    page = _page(browser)
    try:
        page.goto(f"{mlflow_ui}/#/compare-runs?{query}")
        page.get_by_text("sample·lean·ffill·cli").first.wait_for()
        page.get_by_text("val_faces.png").first.wait_for()  # the artifact list loads after the runs
        _close_assistant(page)
        body = page.inner_text("body")
        for text in (*KEY_COLUMNS, *PICTURES, "val_mae", "mean_face_rmse", "fkp.entrypoint"):
            assert text in body, f"{text!r} not on the compare page"
        assert "No common artifacts" not in body
        # one name per quantity: no best_val_rmse, no per-keypoint metric series
        assert "best_val_rmse" not in body and "val_rmse.nose_tip" not in body
        # the parallel-coordinates plot opens on the param that differs and on THE score
        plot = page.locator(".js-plotly-plot").first
        plot.wait_for()
        assert "impute.strategy" in plot.text_content() and "val_rmse" in plot.text_content()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "mlflow_compare.png"))
        page.get_by_text("val_faces.png").first.click()
        # the UI fetches each run's PNG and shows them side by side (plus hidden zoom copies)
        pictures = page.locator("img[src^='blob:'] >> visible=true")
        pictures.nth(len(ids) - 1).wait_for()
        page.screenshot(path=str(SHOTS / "mlflow_compare_pictures.png"))
    finally:
        page.close()


def test_validation_summary_reads_offline(browser, two_runs: Path) -> None:
    """Our validation page renders with every network request refused (GX's Data Docs need CDNs)."""
    page = _page(browser)
    refused: list[str] = []

    def refuse(route) -> None:
        refused.append(route.request.url)
        route.abort()

    try:
        page.route(lambda url: not url.startswith("file:"), refuse)
        page.goto((two_runs / "reports" / "validation" / "summary.html").as_uri())
        heading = page.locator("h1")
        assert "PASSED" in heading.inner_text() and "data/raw/sample" in heading.inner_text()
        assert heading.locator("span").evaluate("e => getComputedStyle(e).color") == "rgb(19, 115, 51)"
        assert "training.values" in page.inner_text("body")
        assert refused == []
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "validation_summary.png"))
    finally:
        page.close()
