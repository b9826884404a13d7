"""The Prefect flows, run for real (local Prefect server, MLflow, GX, Keras) on one tiny project copy.

The retrain tests share one copy and run in file order: a first retrain, a second one that must
skip, then a corrupted ``training.csv`` that must stop at validation, then a sweep. One temporary
Prefect server serves the whole session.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import make_project_copy
from mlflow import MlflowClient

from fkp import fingerprint
from fkp.lock import RETRAIN_LOCK, LockBusyError, file_lock
from fkp.params import from_dict
from flows import retrain as retrain_flow
from flows import sweep as sweep_flow

MODEL_NAME = "facial-keypoints-cnn"


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (API + SQLite) for every flow run of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory, prefect_server) -> Iterator[Path]:
    """A tiny project copy shared by this module's flow runs; cwd is set to it."""
    dest = make_project_copy(tmp_path_factory.mktemp("flows") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(dest)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("FKP_MLFLOW_ARTIFACTS", raising=False)
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        yield dest


@pytest.fixture(scope="module")
def first_retrain(flow_project):
    """The first retrain of the shared copy: its final state."""
    return retrain_flow.retrain(return_state=True)


def client_for(project: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()


def experiment_runs(project: Path, filter_string: str = "") -> list:
    client = client_for(project)
    experiment = client.get_experiment_by_name("fkp")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string)


def champion_version(project: Path) -> str:
    return str(client_for(project).get_model_version_by_alias(MODEL_NAME, "champion").version)


def flow_logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=0
        )
    return "\n".join(log.message for log in logs)


def task_names(flow_run_id) -> set[str]:
    """Names of the tasks that ran in the flow run (task run names without their suffix)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    return {run.name.rsplit("-", 1)[0] for run in runs}


# --------------------------------------------------------------------------- pure parts


def test_fingerprint_parts_follow_data_params_and_code(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "training.csv").write_text("a,b\n1,2\n")
    base = fingerprint.compute(raw, from_dict({}))
    assert base == fingerprint.compute(raw, from_dict({"sample": {"n_train": 5}}))  # only via the data
    assert base.changes_since(fingerprint.compute(raw, from_dict({"train": {"lr": 0.5}}))) == ["params"]
    (raw / "training.csv").write_text("a,b\n1,3\n")
    assert fingerprint.compute(raw, from_dict({})).changes_since(base) == ["data"]
    assert base.changes_since(None) == ["data", "params", "code"]


def test_file_lock_excludes_a_second_holder_and_names_the_first(tmp_path) -> None:
    path = tmp_path / "reports" / ".retrain.lock"
    told: list[str] = []
    with file_lock(path, owner="first run"):
        with pytest.raises(LockBusyError, match="first run"), file_lock(path, timeout=0):
            pass
        with (
            pytest.raises(LockBusyError, match="after waiting 0.2 s"),
            file_lock(path, timeout=0.2, poll_seconds=0.05, on_wait=told.append),
        ):
            pass
    assert told and "first run" in told[0]
    with file_lock(path, timeout=0):  # released on exit
        pass


def test_file_lock_waits_for_the_holder_to_finish(tmp_path) -> None:
    path = tmp_path / "lock"
    order: list[str] = []
    released = threading.Event()

    def hold() -> None:
        with file_lock(path):
            order.append("first in")
            released.wait(10)
            order.append("first out")

    holder = threading.Thread(target=hold)
    holder.start()
    while not order:
        threading.Event().wait(0.01)
    threading.Timer(0.3, released.set).start()
    with file_lock(path, poll_seconds=0.05):
        order.append("second in")
    holder.join()
    assert order == ["first in", "first out", "second in"]


def test_sweep_grid_expands_to_named_variants() -> None:
    base = {"impute": {"strategy": "mask"}, "model": {"arch": "seed"}}
    variants = sweep_flow.make_variants(sweep_flow.DEFAULT_GRID, base)
    assert [v.name for v in variants] == [
        "seed-ffill",
        "seed-mask",
        "seed-drop",
        "lean-ffill",
        "lean-mask",
        "lean-drop",
    ]
    assert variants[4].params.model.arch == "lean" and variants[4].params.impute.strategy == "mask"
    assert variants[4].model == Path("models/sweep/lean-mask.keras")
    with pytest.raises(ValueError, match="split.seed"):
        sweep_flow.make_variants({"split.seed": [1, 2]}, base)
    with pytest.raises(ValueError, match="train.lrr"):
        sweep_flow.make_variants([{"train.lrr": 1}], base)


def test_distributed_runner_without_its_package_says_what_to_install() -> None:
    with pytest.raises(ValueError, match="unknown task runner"):
        sweep_flow.build_task_runner("spark")
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install prefect-dask"):
            sweep_flow.build_task_runner("dask", "tcp://scheduler:8786")
    else:
        pytest.skip("prefect-dask is installed")


# --------------------------------------------------------------------------- flow runs


@pytest.mark.slow
def test_retrain_registers_a_champion_tagged_with_its_flow_run(flow_project, first_retrain) -> None:
    state = first_retrain
    assert state.is_completed(), state.message
    summary = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    assert summary["status"] == "trained" and summary["promoted"] is True
    assert champion_version(flow_project) == summary["version"]
    tags = client_for(flow_project).get_run(summary["run_id"]).data.tags
    assert tags["fkp.flow_run_id"] == flow_run_id
    assert tags["fkp.entrypoint"] == "prefect"
    assert tags[fingerprint.TAG] == summary["fingerprint"]
    assert json.loads((flow_project / "reports/registry.json").read_text())["promoted"] is True
    assert {"sample", "validate", "prepare", "impute", "train", "evaluate", "register"} <= task_names(
        flow_run_id
    )


@pytest.mark.slow
def test_second_retrain_with_nothing_changed_skips_training(flow_project, first_retrain) -> None:
    runs_before = experiment_runs(flow_project)
    state = retrain_flow.retrain(return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["status"] == "skipped"
    assert summary["run_id"] == first_retrain.result()["run_id"]
    flow_run_id = state.state_details.flow_run_id
    assert retrain_flow.SKIP_MESSAGE in flow_logs(flow_run_id)
    assert "train" not in task_names(flow_run_id)
    assert len(experiment_runs(flow_project)) == len(runs_before)


@pytest.mark.slow
def test_retrain_fails_fast_while_another_retrain_holds_the_lock(flow_project, first_retrain) -> None:
    with file_lock(RETRAIN_LOCK, owner="a retrain in another process"):
        state = retrain_flow.retrain(lock_timeout=0, return_state=True)
    assert state.is_failed()
    assert "a retrain in another process" in state.message
    assert task_names(state.state_details.flow_run_id) == set()


@pytest.mark.slow
def test_corrupted_training_csv_fails_at_validation_and_changes_nothing(flow_project, first_retrain) -> None:
    training = flow_project / "data/raw/sample/training.csv"
    original = training.read_text()
    outputs = [flow_project / p for p in ("data/prepared/train.npz", "models/model.keras", "metrics.json")]
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    champion = champion_version(flow_project)
    lines = original.splitlines(keepends=True)
    labels, pixels = lines[3].rstrip("\n").rsplit(",", 1)  # data row 3 (line 4); Image is the last column
    tokens = pixels.split(" ")
    tokens[5] = "300"
    lines[3] = f"{labels},{' '.join(tokens)}\n"
    training.write_text("".join(lines))
    try:
        state = retrain_flow.retrain(return_state=True)
    finally:
        training.write_text(original)
    assert state.is_failed()
    for text in (state.message, flow_logs(state.state_details.flow_run_id)):
        assert "training.csv" in text and "row 3" in text and "'Image'" in text, text
    assert task_names(state.state_details.flow_run_id) == {"sample", "validate"}
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps
    assert champion_version(flow_project) == champion


@pytest.mark.slow
def test_sweep_trains_variants_side_by_side_and_keeps_the_best(flow_project, first_retrain) -> None:
    client = client_for(flow_project)
    before = client.get_model_version_by_alias(MODEL_NAME, "champion")
    grid = {"impute.strategy": ["ffill", "drop"]}
    state = sweep_flow.sweep(grid=grid, max_parallel=2, return_state=True)
    assert state.is_completed(), state.message
    sweep_id = str(state.state_details.flow_run_id)
    result = state.result()
    assert result["sweep_id"] == sweep_id and set(result["variants"]) == {"ffill", "drop"}
    runs = experiment_runs(flow_project, f"tags.`fkp.sweep` = '{sweep_id}'")
    assert sorted(r.info.run_name for r in runs) == ["drop", "ffill"]
    for run in runs:
        assert run.data.tags["fkp.flow_run_id"] == sweep_id
        assert run.data.tags["fkp.entrypoint"] == "prefect"
        assert run.data.params["impute.strategy"] == run.info.run_name
        assert (flow_project / f"models/sweep/{run.info.run_name}.keras").is_file()
    rmses = [float(before.tags["val_rmse"])] + [v["val_rmse"] for v in result["variants"].values()]
    after = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert float(after.tags["val_rmse"]) == pytest.approx(min(rmses), abs=1e-3)
