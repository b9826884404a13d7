"""The Prefect flows, run for real: a real `prefect server start`, real DVC repos, MLflow stores, tiny sample.

The retrain tests share one project copy and run in file order: a first retrain, then what `dvc repro`
and the flow see of each other, a stage added to dvc.yaml, a concurrent `dvc repro`, a sweep. A second
copy consumes its data from a DVC data registry and retrains on a schedule served to the real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import make_project_copy, stop_group, wait_until
from mlflow import MlflowClient

from fkp.orchestration import pipeline, repo_lock, versioning
from fkp.orchestration.prefect_local import healthy
from fkp.params import from_dict
from flows import retrain as retrain_flow
from flows import sweep as sweep_flow

MODEL_NAME = "facial-keypoints-cnn"
STAGES = ["sample", "validate", "prepare", "impute", "train", "evaluate", "register", "predict"]
UP_TO_DATE = "Data and pipelines are up to date."


# --------------------------------------------------------------------------- helpers


def sh(*argv: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    if check:
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return sh(pipeline.dvc_executable(), *args, cwd=cwd, check=check)


def client_for(project: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient()


def experiment_runs(project: Path, filter_string: str = "") -> list:
    client = client_for(project)
    experiment = client.get_experiment_by_name("fkp")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string) if experiment else []


def versions(project: Path) -> list:
    return client_for(project).search_model_versions(f"name = '{MODEL_NAME}'")


def champion_version(project: Path) -> str:
    return str(client_for(project).get_model_version_by_alias(MODEL_NAME, "champion").version)


def flow_logs(flow_run_id, containing: str | None = None) -> str:
    """The run's log lines (its tasks' included); only those with ``containing`` when given."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    logs: list = []
    with get_client(sync_client=True) as client:
        while True:  # pages of 200, the server's most
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(logs)
            )
            logs += page
            if len(page) < 200 or containing is None:
                break
    if containing is not None:
        logs = [log for log in logs if containing in log.message]
    return "\n".join(log.message for log in logs)


def task_states(flow_run_id) -> dict[str, str]:
    """Task run name -> final state name, for the tasks of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )
    return {run.name: run.state.name for run in runs}


def dvc_status_is_clean(project: Path) -> None:
    out = dvc("status", cwd=project).stdout
    assert UP_TO_DATE in out, out
    repro = dvc("repro", cwd=project).stdout
    assert "Running stage" not in repro, repro


def tracking_md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def lock_md5(project: Path, stage: str, path: str) -> str:
    entries = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    return next(e["md5"] for e in entries.get("deps", []) + entries.get("outs", []) if e["path"] == path)


# --------------------------------------------------------------------------- fast parts


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
    assert variants[4].set_args() == ["-S", "model.arch=lean", "-S", "impute.strategy=mask"]
    assert variants[4].exp_name("0123456789ab") == "lean-mask-01234567"
    assert sweep_flow.make_variants({"train.lr": [0.5]}, base)[0].set_args() == ["-S", "train.lr=0.5"]
    named = sweep_flow.make_variants([{"name": "slow", "train.lr": 0.1}], base)[0]
    assert named.name == "slow" and named.set_args() == ["-S", "train.lr=0.1"]
    with pytest.raises(ValueError, match="split.seed"):
        sweep_flow.make_variants({"split.seed": [1, 2]}, base)
    with pytest.raises(ValueError, match="train.lrr"):
        sweep_flow.make_variants([{"train.lrr": 1}], base)
    assert from_dict({}).train.lr > 0


def test_distributed_runner_without_its_package_says_what_to_install() -> None:
    with pytest.raises(ValueError, match="unknown task runner"):
        sweep_flow.build_task_runner("spark")
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install prefect-dask"):
            sweep_flow.build_task_runner("dask", "tcp://scheduler:8786")
    else:
        assert type(sweep_flow.build_task_runner("dask", "tcp://127.0.0.1:1")).__name__ == "DaskTaskRunner"


def test_stages_come_from_dvc_yaml_in_dvc_order_with_their_retries(project_copy) -> None:
    stages = pipeline.stages(project_copy)
    assert [s.name for s in stages] == STAGES
    retries = {s.name: s.retries for s in stages}
    assert retries["train"] == 1 and retries["evaluate"] == 2 and retries["register"] == 2
    assert retries["validate"] == 0
    assert pipeline.metric_stages(project_copy) == ["evaluate"]
    assert pipeline.is_stale("sample", project_copy)  # nothing was run yet


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def test_commit_to_branch_records_the_state_without_touching_the_checkout(tmp_path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    (repo / "dvc.lock").write_text("v1\n")
    (repo / "code.py").write_text("a = 1\n")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "start", cwd=repo)
    head = versioning.git(["rev-parse", "HEAD"], repo)
    (repo / "dvc.lock").write_text("v2\n")
    (repo / "metrics.json").write_text('{"val_rmse": 1.5}\n')  # new, untracked: committed too
    first = versioning.commit_to_branch("retrain", "retrain 1", repo)
    assert versioning.git(["show", f"{first}:dvc.lock"], repo) == "v2"
    assert versioning.git(["show", f"{first}:metrics.json"], repo) == '{"val_rmse": 1.5}'
    assert versioning.git(["rev-parse", "HEAD"], repo) == head  # the checkout did not move
    assert versioning.current_branch(repo) == "main"
    assert "metrics.json" in versioning.git(["status", "--porcelain"], repo)  # nor did the index
    (repo / "dvc.lock").write_text("v3\n")
    second = versioning.commit_to_branch("retrain", "retrain 2", repo)
    assert versioning.git(["rev-parse", "retrain"], repo) == second
    assert versioning.git(["rev-list", "--parents", "-n1", second], repo).split()[1:] == [first, head]


def test_prefect_server_serves_its_ui(prefect_api) -> None:
    with urllib.request.urlopen(prefect_api["ui"], timeout=10) as response:
        page = response.read().decode()
    assert response.status == 200 and "<html" in page.lower() and "prefect" in page.lower()


@pytest.mark.slow
def test_a_process_worker_picks_up_a_deployment_run(prefect_api, tmp_path) -> None:
    """The pinned stack runs the team path: a process work pool, a worker, a deployment run."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    source = tmp_path / "worker-flow"
    source.mkdir()
    (source / "hello.py").write_text(
        "import os\nfrom prefect import flow\n\n\n@flow\ndef hello(name: str) -> str:\n"
        "    return f'hello {name} from pid {os.getpid()}'\n"
    )
    pool = f"pool-{os.getpid()}"
    prefect = str(Path(sys.executable).parent / "prefect")
    sh(prefect, "work-pool", "create", pool, "--type", "process", cwd=tmp_path)
    deployment_id = flow.from_source(source=str(source), entrypoint="hello.py:hello").deploy(
        name="hello", work_pool_name=pool, parameters={"name": "fkp"}
    )
    worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", pool, "--limit", "1"],
        cwd=tmp_path,
        stdout=(tmp_path / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        run = run_deployment(deployment_id, timeout=0)
        with get_client(sync_client=True) as client:
            final = wait_until(
                lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, 180, "the worker's run"
            )
        assert final.state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
        assert final.work_pool_name == pool
    finally:
        stop_group(worker, timeout=30)


@pytest.mark.slow
def test_a_killed_retrain_leaves_no_temporary_prefect_server_behind(tmp_path) -> None:
    project = make_project_copy(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no configured server: a temporary one
    proc = subprocess.Popen(
        [sys.executable, "flows/retrain.py", "run"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "starting a temporary one on" in line, line
        url = line.split(" on ", 1)[1].split()[0]
        wait_until(lambda: healthy(url), 120, "the temporary Prefect server")
    finally:
        proc.kill()  # kill -9: no cleanup code of ours runs
        proc.wait()
    wait_until(lambda: not healthy(url), 60, "the orphaned temporary server to stop")


@pytest.mark.slow
def test_a_sweep_without_a_configured_server_reports_to_one_temporary_server(tmp_path) -> None:
    # The process pool forwards its workers' logs and events from a thread of its own; that thread
    # must report to the server the command started, not start a hidden temporary server of its own.
    project = make_project_copy(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "flows/sweep.py", "--grid", '{"train.lr": [0.004]}', "--max-parallel", "1"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("starting a temporary one on") == 1, output[-3000:]
    assert "Starting temporary server" not in output, output[-3000:]
    assert "Task run '0.004' - Reproducing experiment" in output, output[-3000:]


def _start_long_sweep(project: Path) -> subprocess.Popen:
    """A sweep of one variant that would train for ever, its output readable line by line."""
    grid = '{"train.epochs": [5000], "train.patience": [5000]}'
    return subprocess.Popen(
        [sys.executable, "flows/sweep.py", "--grid", grid, "--max-parallel", "1"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen, marker: str, lines: list[str]) -> None:
    """Read ``proc``'s output into ``lines`` until a line has ``marker``; fail with the tail if it ends."""
    while not any(marker in line for line in lines[-3:]):
        line = proc.stdout.readline()
        assert line, "\n".join(lines[-40:])
        lines.append(line.rstrip("\n"))


@pytest.mark.slow
def test_a_terminated_sweep_stops_its_trainings(tmp_path, prefect_api, monkeypatch) -> None:
    # SIGTERM is how Prefect cancels a flow run and how service managers stop a command. The process
    # pool used to wait for its running variants, so a terminated sweep trained on for hours.
    import psutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri of earlier tests
    project = make_project_copy(tmp_path / "project")
    sweep = _start_long_sweep(project)
    lines: list[str] = []
    try:
        _read_until(sweep, "epoch   3/5000", lines)
        sweep.send_signal(signal.SIGTERM)
        out, _ = sweep.communicate(timeout=180)
    finally:
        if sweep.poll() is None:  # failed: kill the sweep and everything it started
            for proc in [*psutil.Process(sweep.pid).children(recursive=True), psutil.Process(sweep.pid)]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
    output = "\n".join(lines) + "\n" + out
    assert sweep.returncode != 0, output[-3000:]
    assert "fkp train: interrupted" in output, output[-3000:]  # the training stopped as on Ctrl-C
    assert "Retry 1/1" not in output, output[-3000:]  # and was not started again
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.cwd().startswith(str(project)):
                left.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    assert left == [], left
    assert list((project / ".dvc/tmp/exps/standalone").glob("tmp*")) == []  # DVC removed its workspace
    (run,) = experiment_runs(project)
    assert run.info.status == "FAILED"
    flow_run_id = run.data.tags["fkp.sweep"]
    assert task_states(flow_run_id) == {"5000-5000": "Failed"}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state.name == "Crashed"


@pytest.mark.slow
def test_a_killed_sweep_takes_its_variants_with_it(tmp_path, prefect_api, monkeypatch) -> None:
    # SIGKILL: the flow can stop nothing itself; its pool workers get SIGINT from the kernel
    import psutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri of earlier tests

    project = make_project_copy(tmp_path / "project")
    sweep = _start_long_sweep(project)
    lines: list[str] = []

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.cwd().startswith(str(project)) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    try:
        _read_until(sweep, "epoch   3/5000", lines)
        sweep.kill()
        sweep.wait()
        _, alive = psutil.wait_procs(ours(), timeout=pipeline.INTERRUPT_GRACE_S + 15)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        for proc in ours():
            with contextlib.suppress(psutil.Error):
                proc.kill()
    (run,) = experiment_runs(project)
    assert run.info.status == "FAILED"  # the training was stopped as on Ctrl-C, not left RUNNING
    assert list((project / ".dvc/tmp/exps/standalone").glob("tmp*")) == []  # DVC removed its workspace


# --------------------------------------------------------------------------- retrain on one project


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory, prefect_api):
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
    return retrain_flow.retrain(return_state=True)


@pytest.mark.slow
def test_retrain_runs_every_dvc_stage_as_a_task_and_leaves_dvc_clean(flow_project, first_retrain) -> None:
    state = first_retrain
    assert state.is_completed() and state.name == "Completed", state.message
    summary = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    assert summary["ran"] == STAGES and summary["skipped"] == []
    assert task_states(flow_run_id) == dict.fromkeys(STAGES, "Completed")
    assert summary["promoted"] is True and champion_version(flow_project) == summary["version"]

    tags = client_for(flow_project).get_run(summary["run_id"]).data.tags
    assert tags["fkp.flow_run_id"] == flow_run_id and tags["fkp.entrypoint"] == "prefect"
    assert tags["git.commit"] == versioning.git(["rev-parse", "HEAD"], flow_project)
    assert tags["fkp.dvc_md5"] == lock_md5(flow_project, "sample", "data/raw/sample")
    assert "Running stage 'train'" in flow_logs(flow_run_id)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert run.name.startswith("retrain-sample-")
    (summary_md,) = [a.data for a in artifacts if a.key == "retrain-summary"]
    assert "# Retrain: trained" in summary_md and "| train | ran |" in summary_md
    assert f"{summary['val_rmse']:.4f} px" in summary_md and summary["run_id"] in summary_md

    dvc_status_is_clean(flow_project)  # after a retrain, DVC has nothing to do


@pytest.mark.slow
def test_prefect_ui_shows_the_run_its_stages_and_its_summary(prefect_api, first_retrain, chromium) -> None:
    from conftest import SCREENSHOTS

    flow_run_id = str(first_retrain.state_details.flow_run_id)
    page = chromium.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(90_000)
    page.goto(f"{prefect_api['ui']}/runs/flow-run/{flow_run_id}")
    page.get_by_text("retrain-sample-").first.wait_for()
    page.get_by_text("Finished in state Completed()").first.wait_for()  # the logs tab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "prefect_flow_run.png"))
    page.get_by_text("Task Runs", exact=True).first.click()
    page.get_by_text("evaluate").first.wait_for()
    body = page.inner_text("body")
    assert all(stage in body for stage in STAGES), body[:2000]
    page.screenshot(path=str(SCREENSHOTS / "prefect_task_runs.png"))
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("retrain-summary").first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "prefect_artifacts.png"))
    page.close()


@pytest.mark.slow
def test_after_dvc_repro_the_retrain_is_skipped(flow_project, first_retrain) -> None:
    params = yaml.safe_load((flow_project / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (flow_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", cwd=flow_project).stdout
    assert "Running stage 'train'" in out and "Running stage 'validate'" not in out
    runs, registered = len(experiment_runs(flow_project)), len(versions(flow_project))

    state = retrain_flow.retrain(return_state=True)
    assert state.is_completed() and state.name == "Skipped", state.name
    assert retrain_flow.SKIP_MESSAGE in state.message
    assert task_states(state.state_details.flow_run_id) == {}
    assert len(experiment_runs(flow_project)) == runs and len(versions(flow_project)) == registered
    assert retrain_flow.SKIP_MESSAGE in flow_logs(state.state_details.flow_run_id)


@pytest.mark.slow
def test_a_registry_without_a_champion_makes_the_retrain_train_and_register(
    flow_project, first_retrain
) -> None:
    # a new tracking server (the team stack's first run): DVC is clean, yet nothing is registered there
    dvc_status_is_clean(flow_project)
    store = flow_project.parent / "new-server"
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "FKP_MLFLOW_ARTIFACTS": str(store / "art"),
    }
    store.mkdir()
    done = sh(sys.executable, "flows/retrain.py", "run", cwd=flow_project, env=env)
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert {"train", "evaluate", "register"} <= set(summary["ran"]), summary
    assert summary["promoted"] is True, summary
    # a client of its own: mlflow.set_tracking_uri would also set MLFLOW_TRACKING_URI for later tests
    champion = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id == summary["run_id"]
    assert "the registry has no champion" in done.stdout + done.stderr
    dvc_status_is_clean(flow_project)


@pytest.mark.slow
def test_a_stage_added_to_dvc_yaml_runs_in_the_flow(flow_project, first_retrain) -> None:
    config = yaml.safe_load((flow_project / "dvc.yaml").read_text())
    config["stages"]["summary"] = {
        "cmd": "python -c \"import json; print('RMSE', json.load(open('metrics.json'))['val_rmse'])\" "
        "> reports/summary.txt",
        "deps": ["metrics.json"],
        "outs": ["reports/summary.txt"],
        "meta": {"retries": 3},
    }
    (flow_project / "dvc.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state = retrain_flow.retrain(return_state=True)
    assert state.is_completed() and state.name == "Completed", state.message
    states = task_states(state.state_details.flow_run_id)
    assert states.pop("summary") == "Completed"
    assert set(states.values()) == {"Skipped"} and set(states) == set(STAGES)
    assert (flow_project / "reports/summary.txt").read_text().startswith("RMSE")
    dvc_status_is_clean(flow_project)


@pytest.mark.slow
def test_a_retrain_waits_for_a_concurrent_dvc_repro_and_each_version_keeps_its_run(
    flow_project, first_retrain
) -> None:
    repro = subprocess.Popen(
        [pipeline.dvc_executable(), "repro", "-f"],
        cwd=flow_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(
        lambda: repo_lock.running_stage_commands(flow_project),
        120,
        "dvc repro -f to run a stage",
        interval=0.2,
    )
    state = retrain_flow.retrain(wait=True, return_state=True)  # waits for dvc repro -f to finish
    output, _ = repro.communicate(timeout=600)
    assert repro.returncode == 0, output
    assert state.is_completed() and state.name == "Skipped", state.message
    logs = flow_logs(state.state_details.flow_run_id)
    assert "the pipeline is busy: held by `dvc repro -f`" in logs and "waiting for it to finish" in logs
    registered = versions(flow_project)
    run_ids = [v.run_id for v in registered]
    assert len(set(run_ids)) == len(run_ids)  # no run registered twice
    assert all(v.tags["source_run_id"] == v.run_id for v in registered)
    assert json.loads((flow_project / "reports/train/run.json").read_text())["run_id"] in run_ids
    dvc_status_is_clean(flow_project)


#: What the running ``train`` stage writes itself (its ``dvc.yaml`` outs and their temporaries): the
#: retrain holding the lock may change these while the refused commands run, on a slow machine.
HOLDER_WRITES = ("models/", "reports/train/")


def _snapshot(project: Path) -> dict[str, bytes]:
    """Every file under data/, models/ and reports/, byte for byte, but what ``train`` is writing."""
    files = {
        path.relative_to(project).as_posix(): path
        for folder in ("data", "models", "reports")
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }
    return {name: path.read_bytes() for name, path in files.items() if not name.startswith(HOLDER_WRITES)}


@pytest.mark.slow
def test_while_a_retrain_runs_other_runs_are_refused_before_they_touch_a_file(
    flow_project, first_retrain
) -> None:
    retrain = subprocess.Popen(
        [sys.executable, "flows/retrain.py", "run", "--force"],
        cwd=flow_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    params = (flow_project / "params.yaml").read_text()
    try:
        while not any("Running stage 'train'" in line for line in lines[-5:]):
            line = retrain.stdout.readline()
            assert line, "\n".join(lines[-40:])
            lines.append(line.rstrip("\n"))
        before = _snapshot(flow_project)
        assert any(name.startswith("data/prepared/") for name in before), sorted(before)

        forced = dvc("repro", "-f", cwd=flow_project, check=False)
        assert forced.returncode != 0 and "Unable to acquire lock" in forced.stderr, forced.stderr
        changed = yaml.safe_load(params)
        changed["train"]["lr"] = changed["train"]["lr"] / 3
        (flow_project / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        after_change = dvc("repro", cwd=flow_project, check=False)
        (flow_project / "params.yaml").write_text(params)
        assert after_change.returncode != 0 and "Unable to acquire lock" in after_change.stderr
        second = sh(sys.executable, "flows/retrain.py", "run", cwd=flow_project, check=False)
        assert second.returncode == 75, second.stderr
        (refusal,) = second.stderr.strip().splitlines()  # one line, no traceback, no server started
        assert refusal.startswith("retrain: the pipeline is busy: held by retrain flow run"), refusal
        assert "--wait" in refusal

        assert _snapshot(flow_project) == before  # nothing the refused commands could have touched
        out, _ = retrain.communicate(timeout=900)
    finally:
        (flow_project / "params.yaml").write_text(params)
        if retrain.poll() is None:
            retrain.kill()
            retrain.wait()
    assert retrain.returncode == 0, "\n".join(lines[-40:]) + out[-3000:]
    dvc_status_is_clean(flow_project)


@pytest.mark.slow
def test_sweep_variants_are_dvc_experiments_and_mlflow_runs_with_the_same_scores(
    flow_project, first_retrain
) -> None:
    before = client_for(flow_project).get_model_version_by_alias(MODEL_NAME, "champion")
    registered_before = len(versions(flow_project))
    with pytest.MonkeyPatch.context() as mp:
        # often enough to see a variant between its epochs: a 2-epoch variant can train within 2 s
        mp.setenv(sweep_flow.PROGRESS_ENV, "0.5")
        state = sweep_flow.sweep(grid={"train.lr": [0.004, 0.002]}, max_parallel=2, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    sweep_id = str(state.state_details.flow_run_id)
    progress = [line for line in flow_logs(sweep_id, "progress").splitlines() if "progress: " in line]
    running = re.compile(r"0\.00[24]: epoch [12]/2, val RMSE [\d.]+ px \(running\)")
    assert any(running.search(line) for line in progress), progress
    assert result["sweep_id"] == sweep_id and set(result["variants"]) == {"0.004", "0.002"}

    shown = json.loads(dvc("exp", "show", "--json", cwd=flow_project).stdout)
    exps = {
        exp["name"]: exp["revs"][0]["data"]["metrics"]["metrics.json"]["data"]["val_rmse"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
    }
    runs = experiment_runs(flow_project, f"tags.`fkp.sweep` = '{sweep_id}'")
    assert len(runs) == 2
    for run in runs:
        variant = result["variants"][run.data.tags["fkp.variant"]]
        assert run.data.tags["fkp.dvc_exp"] == variant["exp"]
        assert run.data.tags["fkp.entrypoint"] == "prefect"
        assert run.data.params["train.lr"] == run.data.tags["fkp.variant"]
        assert exps[variant["exp"]] == pytest.approx(run.data.metrics["val_rmse"], abs=1e-4)
    assert len(versions(flow_project)) == registered_before + 2
    promoted = [v for v in result["variants"].values() if v["promoted"]]
    assert len(promoted) <= 1  # the champion moved at most once
    rmses = [float(before.tags["val_rmse"])] + [v["val_rmse"] for v in result["variants"].values()]
    after = client_for(flow_project).get_model_version_by_alias(MODEL_NAME, "champion")
    assert float(after.tags["val_rmse"]) == pytest.approx(min(rmses), abs=1e-3)

    # the winner applies as DVC experiments do; reproducing it registers nothing new
    best = result["variants"][result["best"]]
    dvc("exp", "apply", best["exp"], cwd=flow_project)
    assert yaml.safe_load((flow_project / "params.yaml").read_text())["train"]["lr"] == float(result["best"])
    dvc("repro", cwd=flow_project)
    assert len(versions(flow_project)) == registered_before + 2
    dvc_status_is_clean(flow_project)


# --------------------------------------------------------------------------- scheduled retraining


def write_data_version(registry: Path, seed: int, corrupt: bool = False) -> str:
    """Write a data version into the data registry, `dvc add` + commit + push it; its DVC md5."""
    sh(
        "fkp",
        "sample",
        "--out",
        "data",
        "--n-train",
        "96",
        "--n-test",
        "12",
        "--seed",
        str(seed),
        cwd=registry,
    )
    if corrupt:
        training = registry / "data/training.csv"
        lines = training.read_text().splitlines(keepends=True)
        labels, pixels = lines[3].rstrip("\n").rsplit(",", 1)
        tokens = pixels.split(" ")
        tokens[5] = "300"
        lines[3] = f"{labels},{' '.join(tokens)}\n"
        training.write_text("".join(lines))
    dvc("add", "data", cwd=registry)
    sh("git", "add", "-A", cwd=registry)
    sh("git", "commit", "-qm", f"data seed {seed}{' (corrupt)' if corrupt else ''}", cwd=registry)
    dvc("push", cwd=registry)
    return yaml.safe_load((registry / "data.dvc").read_text())["outs"][0]["md5"]


def deployment_runs(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=200
        )


@pytest.mark.slow
def test_scheduled_retraining_pulls_new_data_and_refuses_bad_data(prefect_api, tmp_path, monkeypatch) -> None:
    """A served deployment on a schedule: its runs pull new data from the DVC remote and retrain."""
    from prefect.client.orchestration import get_client

    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry = tmp_path / "data-registry"  # where the labelling team publishes data versions
    registry.mkdir()
    sh("git", "init", "-q", cwd=registry)
    dvc("init", "-q", cwd=registry)
    dvc("remote", "add", "-d", "store", str(tmp_path / "registry-store"), cwd=registry)
    sh("git", "add", "-A", cwd=registry)
    sh("git", "commit", "-qm", "data registry", cwd=registry)
    v1 = write_data_version(registry, seed=1)

    project = make_project_copy(tmp_path / "project", {"data": {"source": "kaggle"}})
    dvc("remote", "modify", "local", "url", str(tmp_path / "project-store"), cwd=project)
    (project / "data/raw").mkdir(parents=True, exist_ok=True)
    dvc("import", str(registry), "data", "-o", "data/raw/kaggle", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "consume the data registry", cwd=project)

    name = "fkp-retrain-scheduled"
    serve = subprocess.Popen(
        [sys.executable, "flows/retrain.py", "serve", "--interval", "20", "--name", name]
        + ["--pull", "--push", "--git-branch", "retrain"],
        cwd=project,
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def runs_since(t0: float, kind: str) -> list:
        return [
            r
            for r in deployment_runs(deployment.id)
            if r.state and r.start_time and r.start_time.timestamp() >= t0 and r.state.name == kind
        ]

    def tagged(md5: str) -> list:
        return experiment_runs(project, f"tags.`fkp.dvc_md5` = '{md5}'")

    try:
        with get_client(sync_client=True) as client:
            deployment = wait_until(
                lambda: next((d for d in client.read_deployments() if d.name == name), None),
                120,
                "the served deployment",
            )
            assert deployment.name == name and deployment.schedules and deployment.schedules[0].active
        t0 = time.time() - 60
        wait_until(lambda: runs_since(t0, "Completed"), 600, "a scheduled run that trains on data v1", 5)
        first = tagged(v1)
        assert len(first) == 1 and first[0].data.tags["fkp.entrypoint"] == "prefect"
        champion = champion_version(project)

        v2 = write_data_version(registry, seed=2)  # new labelled data reaches the DVC remote
        (second,) = wait_until(lambda: tagged(v2), 600, "a scheduled run that pulls data v2 and retrains", 5)
        flow_run_id = second.data.tags["fkp.flow_run_id"]
        with get_client(sync_client=True) as client:
            trained = wait_until(
                lambda: (r := client.read_flow_run(flow_run_id)).state.is_final() and r,
                600,
                "the run that trains on data v2 to finish",
                5,
            )
        assert trained.deployment_id == deployment.id and trained.state.name == "Completed"

        # the retrain is a versioned point: its commit and the DVC remote give its model back anywhere
        commit = client_for(project).get_run(second.info.run_id).data.tags["fkp.retrain_commit"]
        assert versioning.git(["rev-parse", "retrain"], project) != ""
        assert commit in versioning.git(["rev-list", "retrain"], project).split()
        elsewhere = tmp_path / "elsewhere"
        sh("git", "clone", "-q", str(project), str(elsewhere), cwd=tmp_path)
        sh("git", "checkout", "-q", commit, cwd=elsewhere)
        dvc("pull", cwd=elsewhere)
        model_md5 = lock_md5(elsewhere, "train", "models/model.keras")
        assert tracking_md5(elsewhere / "models/model.keras") == model_md5
        assert lock_md5(elsewhere, "validate", "data/raw/kaggle") == v2
        assert json.loads((elsewhere / "reports/train/run.json").read_text())["run_id"] == second.info.run_id
        assert second.data.tags["fkp.data_dir"] == "data/raw/kaggle"
        wait_until(
            lambda: runs_since(t0, "Skipped"), 300, "a scheduled run with nothing new to end Skipped", 5
        )
        champion = champion_version(project)

        write_data_version(registry, seed=3, corrupt=True)  # a bad data version
        t2 = time.time()

        # every scheduled run fails at validate, naming the bad row, until good data comes: the reports a
        # failed validate leaves behind must not make the next run's pull fail instead
        def failed_twice() -> list:
            runs = runs_since(t2, "Failed")
            return runs if len(runs) >= 2 else []

        failed = wait_until(failed_twice, 600, "two scheduled runs that fail at validate", 5)
        for run in failed:
            message = run.state.message
            assert "training.csv" in message and "row 3" in message and "'Image'" in message, message
            assert flow_logs(run.id, "Traceback") == ""  # the stage's message, not Prefect's engine around it
            assert task_states(run.id).get("validate") == "Failed"
            assert "train" not in task_states(run.id)
        assert champion_version(project) == champion
        v3 = write_data_version(registry, seed=4)  # good data again: the schedule recovers by itself
        wait_until(lambda: tagged(v3), 600, "a scheduled run that pulls data v3 and retrains", 5)
    finally:
        stop_group(serve, timeout=60)


@pytest.mark.slow
def test_cancelling_a_served_retrain_stops_its_training(prefect_api, tmp_path, monkeypatch) -> None:
    """Cancel in the UI (the API call it makes): the run's training stops, the run ends Cancelled."""
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project_copy(tmp_path / "project", {"train": {"epochs": 5000, "patience": 5000}})
    name = "fkp-retrain-cancel"
    serve = subprocess.Popen(
        [sys.executable, "flows/retrain.py", "serve", "--cron", "0 3 1 1 *", "--name", name],
        cwd=project,
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def training() -> list:
        return [r for r in experiment_runs(project) if r.info.status == "RUNNING"]

    def left_running() -> list[str]:
        left = []
        for proc in psutil.process_iter():
            try:
                command = " ".join(proc.cmdline())
                if proc.pid == serve.pid or "resource_tracker" in command:  # the server and its helper
                    continue
                if proc.cwd().startswith(str(project)):
                    left.append(command)
            except psutil.Error:
                continue
        return left

    try:
        with get_client(sync_client=True) as client:
            wait_until(
                lambda: any(d.name == name for d in client.read_deployments()), 120, "the served deployment"
            )
            run = run_deployment(f"retrain/{name}", timeout=0)
            wait_until(training, 300, "the run's training to start", 2)
            time.sleep(3)  # a few epochs
            assert left_running(), "nothing of the run is running"
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            final = wait_until(
                lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, 120, "the run to end", 2
            )
        assert final.state.name == "Cancelled", final.state
        deadline = time.monotonic() + 30
        while (left := left_running()) and time.monotonic() < deadline:
            time.sleep(1)
        assert left == [], left
        (trained,) = experiment_runs(project)
        assert trained.info.status == "FAILED"  # ended by the training itself, not left RUNNING
        with repo_lock.hold(project, owner="test"):  # the pipeline is free again
            pass
        assert task_states(run.id)["train"] in ("Crashed", "Cancelled", "Failed")
    finally:
        stop_group(serve, timeout=60)


@pytest.mark.slow
def test_a_killed_served_retrain_is_crashed_by_prefect_and_takes_its_commands_with_it(
    prefect_api, tmp_path, monkeypatch
) -> None:
    """SIGKILL of the serving process and its flow run: nothing of ours can report or clean up.

    Prefect's own mechanism must mark the run Crashed (heartbeats + the zombie-run automation), the
    kernel must take the stage commands (parent-death signal), and the next run must start at once.
    """
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from fkp.orchestration import crash_detection

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SHELL", "/bin/sh")  # as in CI: DVC's shell then is dash, which forks its command
    project = make_project_copy(tmp_path / "project", {"train": {"epochs": 5000, "patience": 5000}})
    name = "fkp-retrain-killed"

    def serve() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "flows/retrain.py", "serve", "--cron", "0 3 1 1 *", "--name", name],
            cwd=project,
            stdout=(tmp_path / "serve.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.cwd().startswith(str(project)) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    server = serve()
    try:
        with get_client(sync_client=True) as client:
            wait_until(
                lambda: any(d.name == name for d in client.read_deployments()), 120, "the served deployment"
            )
            assert client.read_automations_by_name(crash_detection.AUTOMATION_NAME)  # created by serve
            run = run_deployment(f"retrain/{name}", timeout=0)
            wait_until(
                lambda: [r for r in experiment_runs(project) if r.info.status == "RUNNING"],
                300,
                "the run's training to start",
                2,
            )
            time.sleep(3)  # a few epochs
            commands = [p for p in ours() if p.pid != server.pid and os.getpgid(p.pid) != server.pid]
            assert any("fkp train" in " ".join(p.cmdline()) for p in commands), [p.cmdline() for p in ours()]
            os.killpg(server.pid, signal.SIGKILL)  # the serving process and the flow run's process
            killed = time.monotonic()
            gone, alive = psutil.wait_procs(commands, timeout=5)
            assert alive == [], [p.cmdline() for p in alive]  # the stage commands died with the run

            crashed = wait_until(
                lambda: (r := client.read_flow_run(run.id)).state.name == "Crashed" and r,
                180,
                "Prefect to mark the killed run Crashed",
                2,
            )
            assert time.monotonic() - killed < 150, "Crashed, but late"
            assert "heartbeat" in (crashed.state.message or ""), crashed.state.message

            params = yaml.safe_load((project / "params.yaml").read_text())
            params["train"].update(epochs=2, patience=2)
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            server.wait()
            server = serve()  # as a service manager would restart it
            wait_until(lambda: client.read_deployments(), 120, "the served deployment again")
            slot = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1, hours=2)
            after = run_deployment(f"retrain/{name}", timeout=0, scheduled_time=slot)  # a slot it missed
            final = wait_until(
                lambda: (r := client.read_flow_run(after.id)).state.is_final() and r, 600, "the next run", 3
            )
        assert final.state.name == "Completed", final.state
        assert final.name == f"retrain-sample-{slot:%Y-%m-%d-%H%M}"  # named for its slot, not its start
        statuses = {r.info.status for r in experiment_runs(project)}
        assert "RUNNING" not in statuses, statuses  # the killed training ended its MLflow run
        dvc_status_is_clean(project)
    finally:
        stop_group(server, timeout=60)
