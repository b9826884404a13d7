"""The team stack, run for real: ``fkp stack up`` on free 127.0.0.1 ports, then a deployment run through
the work pool, the CLI and ``mlflow models serve`` against the MLflow server on PostgreSQL, a sweep on
the Dask cluster, a Dask worker killed mid-sweep, and ``fkp stack down`` leaving nothing behind.

The tests share one stack and one tiny project copy (the workers' folder) and run in file order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import make_project_copy, stop_group
from mlflow import MlflowClient

from fkp.orchestration.stack import dask_cluster, postgres
from fkp.orchestration.stack.config import StackConfig, client_env
from fkp.orchestration.stack.net import free_port, port_open
from fkp.orchestration.stack.supervisor import process_of, read_state, records

pytestmark = [pytest.mark.team, pytest.mark.slow]

MODEL_NAME = "facial-keypoints-cnn"
BIN = Path(sys.executable).parent
BOUND = 900  # seconds: a bound on waiting for a step, never an assertion on speed


@dataclass
class Stack:
    config: StackConfig
    project: Path
    env: dict[str, str]  # what a user's shell exports, plus the venv on PATH

    def client(self) -> MlflowClient:
        return MlflowClient(self.config.mlflow_url)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "FKP_"))}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="False")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = BOUND) -> str:
    """Run a command to completion; fail the test with its output if it fails."""
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        )
    return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """``fkp stack up`` on free ports; the state folder lies where the ``postgres`` user can reach it."""
    project = make_project_copy(tmp_path_factory.mktemp("team") / "project")
    state_dir = Path(tempfile.mkdtemp(prefix="fkp-stack-"))
    os.chmod(state_dir, 0o755)  # PostgreSQL runs as the postgres user when the tests run as root
    env = _base_env()
    up = [str(BIN / "fkp"), "stack", "up", "--state-dir", str(state_dir), "--project", str(project)]
    try:
        output = run(up, env=env, cwd=project)
        assert "export MLFLOW_TRACKING_URI=" in output
        config = StackConfig.from_dict(read_state(state_dir)["config"])
        yield Stack(config, project, {**env, **client_env(config), "PREFECT_HOME": str(state_dir / "client")})
    finally:
        subprocess.run(
            [str(BIN / "fkp"), "stack", "down", "--state-dir", str(state_dir)], env=env, timeout=120
        )
        shutil.rmtree(state_dir, ignore_errors=True)


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]


def _family(pid: int) -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    return set()


def _champion(client: MlflowClient):
    try:
        return client.get_model_version_by_alias(MODEL_NAME, "champion")
    except Exception:
        return None


def _runs(client: MlflowClient, filter_string: str = "") -> list:
    experiment = client.get_experiment_by_name("fkp")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string) if experiment else []


def _assert_run_on_server(stack: Stack, run) -> None:
    """The run lives in PostgreSQL and its pictures and model are listed through the server."""
    client = stack.client()
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri  # proxied
    plots = {
        Path(f.path).name for f in client.list_artifacts(run.info.run_id)
    }  # at the root: Compare shows them
    assert {"val_faces.png", "learning_curves.png"} <= plots
    stored = stack.config.state_dir / "mlflow-artifacts"
    assert list(stored.rglob("val_faces.png")), "the server's artifact folder holds the pictures"
    import psycopg2

    with contextlib.closing(psycopg2.connect(postgres.uri(stack.config, "mlflow"))) as db, db.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("FINISHED",)


# --------------------------------------------------------------------------- the stack itself


def test_stack_up_binds_loopback_only_and_reports_status(stack):
    cfg = stack.config
    out = run(
        [str(BIN / "fkp"), "stack", "status", "--state-dir", str(cfg.state_dir)],
        env=stack.env,
        cwd=cfg.state_dir,
    )
    names = [r.name for r in records(read_state(cfg.state_dir))]
    assert names == ["postgres", "mlflow", "prefect-server", "prefect-worker", "dask-scheduler"] + [
        "dask-worker-1",
        "dask-worker-2",
    ]
    assert "GONE" not in out and f"export FKP_SWEEP_ADDRESS={cfg.dask_address}" in out
    pids = set().union(*(_family(r.pid) for r in records(read_state(cfg.state_dir))))
    listening = _listening(pids)
    for port in (
        cfg.postgres_port,
        cfg.mlflow_port,
        cfg.prefect_port,
        cfg.dask_port,
        cfg.dask_dashboard_port,
    ):
        assert ("127.0.0.1", port) in listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    assert dask_cluster.connected_workers(cfg) == ["dask-worker-1", "dask-worker-2"]


def test_second_up_refuses_while_running(stack):
    cfg = stack.config
    done = subprocess.run(
        [str(BIN / "fkp"), "stack", "up", "--state-dir", str(cfg.state_dir)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("fkp stack: ") and "already running" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- Prefect work pool


def test_retrain_deployment_runs_on_the_work_pool_into_the_shared_server(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "retrain/fkp-retrain",
            "--watch",
            "--watch-timeout",
            "800",
        ],
        env=stack.env,
        cwd=stack.config.state_dir,
    )
    assert "Completed" in out, out[-2000:]
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID:" in line)

    with (
        temporary_settings({PREFECT_API_URL: stack.config.prefect_api_url}),
        get_client(sync_client=True) as prefect,
    ):
        flow_run = prefect.read_flow_run(flow_run_id)
        deployment = prefect.read_deployment(flow_run.deployment_id)
    assert flow_run.state.is_completed()
    assert flow_run.work_pool_name == stack.config.pool and flow_run.infrastructure_pid  # a worker ran it
    assert deployment.concurrency_limit == 1 or deployment.global_concurrency_limit.limit == 1
    assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 3 * * 1"
    assert {"fkp", "retrain"} <= set(deployment.tags) and deployment.description

    client = stack.client()
    (run_,) = _runs(client, f"tags.`fkp.flow_run_id` = '{flow_run_id}'")
    _assert_run_on_server(stack, run_)
    assert run_.data.tags["fkp.entrypoint"] == "prefect"
    champion = _champion(client)
    assert champion is not None and champion.run_id == run_.info.run_id
    assert not (stack.project / "mlflow.db").exists() and not (stack.project / "mlartifacts").exists()


# --------------------------------------------------------------------------- CLI, DVC and serving


def test_cli_and_models_serve_work_with_only_the_tracking_uri(stack, tmp_path):
    other = make_project_copy(tmp_path / "laptop")  # a second checkout, sharing only the server
    env = {k: v for k, v in stack.env.items() if not k.startswith(("PREFECT_", "FKP_"))}
    run([str(BIN / "dvc"), "repro", "register"], env=env, cwd=other)
    run_id = json.loads((other / "reports/train/run.json").read_text())["run_id"]
    client = stack.client()
    run_ = client.get_run(run_id)
    _assert_run_on_server(stack, run_)
    assert run_.data.metrics["val_rmse"] > 0
    assert client.search_model_versions(f"name = '{MODEL_NAME}' and run_id = '{run_id}'")
    assert _champion(client) is not None
    run(
        [str(BIN / "fkp"), "predict", "--data", "data/raw/sample", "--out", "reports/champion"],
        env=env,
        cwd=other,
    )
    assert (
        len((other / "reports/champion/submission.csv").read_text().splitlines()) > 1
    )  # champion, via server
    assert not (other / "mlflow.db").exists() and not (other / "mlartifacts").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    serve_env = {**_base_env(), "MLFLOW_TRACKING_URI": stack.config.mlflow_url}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion"]
        + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=serve_env,
        cwd=elsewhere,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not _http_ok(f"http://127.0.0.1:{port}/ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow models serve never answered:\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
                )
            time.sleep(1)
        pixels = (other / "data/raw/sample/test.csv").read_text().splitlines()[1].split(",")[1]
        payload = {"dataframe_split": {"columns": ["Image"], "data": [[pixels]]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (row,) = json.loads(response.read())["predictions"]
        assert len(row) == 30 and all(0 <= v <= 96 for v in row.values())
    finally:
        stop_group(server, timeout=30)
        log.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- Dask sweeps


def _sweep(stack: Stack, grid: dict, **popen) -> subprocess.Popen:
    """``python flows/sweep.py --task-runner dask --address ...`` in the workers' folder."""
    argv = [sys.executable, "flows/sweep.py", "--grid", json.dumps(grid), "--max-parallel", "2"]
    argv += ["--task-runner", "dask", "--address", stack.config.dask_address]
    env = {**stack.env, "PYTHONPATH": str(stack.project)}
    return subprocess.Popen(argv, env=env, cwd=stack.project, text=True, **popen)


def _dask_runs(client: MlflowClient, since_ms: int) -> list:
    return [r for r in _runs(client, "tags.`fkp.executor` LIKE 'dask:%'") if r.info.start_time >= since_ms]


def _executor(run_) -> tuple[str, int]:
    """The Dask worker name and process id recorded on a run (``dask:<name>:<pid>@<host>``)."""
    _, name, rest = run_.data.tags["fkp.executor"].split(":")
    return name, int(rest.split("@")[0])


def _worker_pids(stack: Stack) -> dict[str, set[int]]:
    """Each Dask worker's processes: the ``dask worker`` command the stack started and its children."""
    return {
        r.name: _family(r.pid) for r in records(read_state(stack.config.state_dir)) if "dask-worker" in r.name
    }


def test_sweep_runs_each_variant_in_a_dask_worker_process(stack):
    assert dask_cluster.connected_workers(stack.config) == ["dask-worker-1", "dask-worker-2"]
    workers = _worker_pids(stack)
    client = stack.client()
    since = int(time.time() * 1000)
    sweep = _sweep(stack, {"train.lr": [0.003, 0.004]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = sweep.communicate(timeout=BOUND)
    assert sweep.returncode == 0, output[-6000:]

    runs = _dask_runs(client, since)
    assert len(runs) == 2, [r.data.tags for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run_ in runs:  # trained inside a worker process the stack started
        name, pid = _executor(run_)
        assert pid in workers[name], (name, pid, workers)
    champion = _champion(client)
    assert champion is not None and client.get_run(champion.run_id).info.status == "FINISHED"


def test_worker_lost_mid_sweep_is_retried_or_fails_clearly(stack):
    cfg = stack.config
    client = stack.client()
    before = _champion(client)
    since = int(time.time() * 1000)
    log = cfg.state_dir / "lost-worker-sweep.log"
    with log.open("w") as out:
        sweep = _sweep(stack, {"train.epochs": [8], "train.lr": [0.002, 0.004]}, stdout=out, stderr=out)
        try:
            victim = None
            deadline = time.monotonic() + BOUND
            while victim is None and sweep.poll() is None and time.monotonic() < deadline:
                running = [r for r in _dask_runs(client, since) if r.info.status == "RUNNING"]
                if running:
                    victim = _executor(running[0])[0]
                time.sleep(0.5)
            assert victim is not None, (
                f"no variant started training on a Dask worker:\n{log.read_text()[-4000:]}"
            )
            (record,) = [r for r in records(read_state(cfg.state_dir)) if r.name == victim]
            os.killpg(record.pid, signal.SIGKILL)  # the worker machine is gone: nanny, worker and children
            sweep.wait(timeout=BOUND)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    output = log.read_text()
    assert process_of(record) is None
    finished = [r for r in _dask_runs(client, since) if r.info.status == "FINISHED"]
    if sweep.returncode == 0:  # the lost variant was retried on the other worker
        assert len({r.data.params["train.lr"] for r in finished}) == 2, output[-4000:]
        assert {_executor(r)[0] for r in finished} != {victim}
        champion = _champion(client)
        assert client.get_run(champion.run_id).info.status == "FINISHED"
    else:  # or the flow failed and says why, and the champion did not move
        last = output.strip().splitlines()[-1]
        assert last.startswith("sweep ended Failed") or "failed" in last.lower(), output[-4000:]
        after = _champion(client)
        assert after.version == before.version


def test_stack_down_stops_every_process_and_closes_every_port(stack):
    cfg = stack.config
    recorded = records(read_state(cfg.state_dir))
    families = set().union(*(_family(r.pid) for r in recorded))
    run(
        [str(BIN / "fkp"), "stack", "down", "--state-dir", str(cfg.state_dir)],
        env=stack.env,
        cwd=cfg.state_dir,
    )
    assert all(process_of(r) is None for r in recorded)
    assert not [
        p for p in families if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    for port in (
        cfg.postgres_port,
        cfg.mlflow_port,
        cfg.prefect_port,
        cfg.dask_port,
        cfg.dask_dashboard_port,
    ):
        assert not port_open("127.0.0.1", port)
    assert records(read_state(cfg.state_dir)) == []
    status = subprocess.run(
        [str(BIN / "fkp"), "stack", "status", "--state-dir", str(cfg.state_dir)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1 and "no stack running" in status.stdout
