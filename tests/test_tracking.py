"""Tracking against a real SQLite MLflow store: params, provenance tags, resumed runs, epoch logging."""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from fkp import tracking
from fkp.params import Params, from_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One SQLite store for the module: creating the schema is the slow part."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "artifacts": str(root / "artifacts")}


@pytest.fixture
def experiment(store: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh experiment per test, so run counts and histories do not leak between tests."""
    for name in (
        "MLFLOW_TRACKING_URI",
        tracking.ARTIFACTS_ENV,
        tracking.ENTRYPOINT_ENV,
        tracking.FLOW_RUN_ENV,
        tracking.DVC_STAGE_ENV,
        tracking.DVC_EXP_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    previous = mlflow.get_tracking_uri()
    monkeypatch.setattr(tracking, "_configured_experiment_id", None)
    experiment_id = tracking.configure(store["uri"], f"t-{uuid.uuid4().hex[:8]}", store["artifacts"])
    yield experiment_id
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "training.csv").write_text("a,b\n1,2\n")
    (folder / "test.csv").write_text("c\n3\n")
    return folder


def _git_head(cwd: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def test_default_locations_follow_cwd_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.ARTIFACTS_ENV, raising=False)
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.default_artifact_root() == (tmp_path.resolve() / "mlartifacts").as_uri()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    monkeypatch.setenv(tracking.ARTIFACTS_ENV, str(tmp_path / "art"))
    assert tracking.default_tracking_uri() == "sqlite:////elsewhere/x.db"
    assert tracking.default_artifact_root() == (tmp_path / "art").resolve().as_uri()


def test_configure_sets_artifact_location_and_is_idempotent(
    store: dict[str, str], experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = tracking.configure(store["uri"], "explicit-root", str(tmp_path / "explicit"))
    assert tracking.configure(store["uri"], "explicit-root") == explicit
    client = MlflowClient(store["uri"])
    assert client.get_experiment(explicit).artifact_location == (tmp_path / "explicit").resolve().as_uri()

    monkeypatch.setenv(tracking.ARTIFACTS_ENV, str(tmp_path / "from-env"))
    from_env = tracking.configure(store["uri"], "env-root")
    assert client.get_experiment(from_env).artifact_location == (tmp_path / "from-env").resolve().as_uri()
    assert mlflow.get_tracking_uri() == store["uri"]


def test_new_run_records_params_and_provenance(
    experiment: str, raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(tracking.FLOW_RUN_ENV, "flow-123")
    monkeypatch.setenv(tracking.ENTRYPOINT_ENV, "prefect")
    params = from_dict({"train": {"lr": 0.005, "augment": {"flip": False}}})

    with tracking.start_run("train", params, tags={"stage": "train"}, raw_dir=raw_dir) as run:
        run_id = run.info.run_id

    data = MlflowClient().get_run(run_id).data
    assert data.params["train.lr"] == "0.005"
    assert data.params["train.augment.flip"] == "False"
    assert data.params["mlflow.registered_model"] == "facial-keypoints-cnn"
    assert data.tags["stage"] == "train"
    assert data.tags[tracking.TAG_FLOW_RUN] == "flow-123"
    assert data.tags[tracking.TAG_ENTRYPOINT] == "prefect"
    assert data.tags[tracking.TAG_DATA_HASH] == tracking.data_hash(raw_dir)
    assert data.tags["mlflow.runName"] == "train"
    head = _git_head(REPO)
    if head is None:
        pytest.skip("the project is not a readable git checkout here")
    assert data.tags[tracking.TAG_GIT_COMMIT] == head
    assert data.tags[tracking.TAG_GIT_DIRTY] in {"true", "false"}


def test_entrypoint_and_run_name_say_what_differs(experiment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    params = from_dict(
        {"data": {"source": "kaggle"}, "model": {"arch": "seed"}, "impute": {"strategy": "drop"}}
    )
    assert tracking.entrypoint() == "cli"
    assert tracking.run_name(params) == "kaggle·seed·drop·cli"
    monkeypatch.setenv(tracking.DVC_STAGE_ENV, "train")  # what `dvc repro` / `dvc exp run` set
    assert tracking.run_name(Params()) == "sample·lean·mask·dvc"
    monkeypatch.setenv(tracking.ENTRYPOINT_ENV, "prefect")  # the flows say so explicitly
    assert tracking.entrypoint() == "prefect"


def test_new_run_has_dataset_description_and_training_view(
    store: dict[str, str], experiment: str, raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  sample:\n    outs:\n    - path: {raw_dir.as_posix()}\n"
        "      md5: 0123456789abcdef0123456789abcdef.dir\n"
    )
    monkeypatch.setenv(tracking.DVC_STAGE_ENV, "train")
    monkeypatch.setenv(tracking.DVC_EXP_ENV, "lucky-lamb")
    with tracking.start_run("r", Params(), raw_dir=raw_dir, description="**why** this run") as run:
        run_id = run.info.run_id
    client = MlflowClient()
    logged = client.get_run(run_id)
    assert logged.data.tags["mlflow.note.content"] == "**why** this run"
    assert logged.data.tags[tracking.TAG_ENTRYPOINT] == "dvc"
    assert logged.data.tags[tracking.TAG_DVC_EXP] == "lucky-lamb"
    (dataset_input,) = logged.inputs.dataset_inputs
    assert dataset_input.dataset.name == "sample"
    assert dataset_input.dataset.digest == "0123456789abcdef0123456789abcdef"
    assert raw_dir.as_posix() in dataset_input.dataset.source
    assert [t.value for t in dataset_input.tags if t.key == "mlflow.data.context"] == ["training"]
    kind = client.get_experiment(experiment).tags[tracking.EXPERIMENT_KIND_TAG]
    assert kind == tracking.EXPERIMENT_KIND


def test_run_outside_git_has_no_commit_and_defaults_to_cli(
    experiment: str, raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    monkeypatch.chdir(outside)
    if _git_head(outside) is not None:
        pytest.skip("temporary folder lies inside a git repository")
    with tracking.start_run("train", Params(), raw_dir=raw_dir) as run:
        run_id = run.info.run_id
    tags = MlflowClient().get_run(run_id).data.tags
    assert tracking.TAG_GIT_COMMIT not in tags
    assert tags[tracking.TAG_ENTRYPOINT] == "cli"


def test_resumed_run_gains_metrics_and_keeps_training_params(
    experiment: str, raw_dir: Path, tmp_path: Path
) -> None:
    trained = from_dict({"train": {"tta_flip": True}})
    with tracking.start_run("train", trained, raw_dir=raw_dir) as run:
        tracking.log_metrics_dict({"train_loss": 1.5})
    handoff = tmp_path / "run.json"
    tracking.write_run_id(handoff, run.info.run_id)

    changed = from_dict({"train": {"tta_flip": False}})
    with tracking.start_run("evaluate", changed, run_id=tracking.read_run_id(handoff), tags={"evaluated": 1}):
        tracking.log_metrics_dict({"val_rmse": 2.25})

    client = MlflowClient()
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    resumed = runs[0]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics == {"train_loss": 1.5, "val_rmse": 2.25}
    assert resumed.data.params["train.tta_flip"] == "True"
    assert json.loads(resumed.data.tags[tracking.TAG_RESUME_CONFLICTS]) == {
        "train.tta_flip": ["True", "False"]
    }
    assert resumed.data.tags["evaluated"] == "1"


def test_run_is_marked_failed_when_the_body_raises(experiment: str, raw_dir: Path) -> None:
    with pytest.raises(RuntimeError), tracking.start_run("train", Params(), raw_dir=raw_dir) as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_artifact_and_metric_helpers(experiment: str, raw_dir: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text('{"val": [1, 2]}')
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG")
    with tracking.start_run("evaluate", Params(), raw_dir=raw_dir) as run:
        tracking.log_split(split)
        tracking.log_pictures([plot])
        logged = tracking.log_metrics_dict(
            {"rmse": 2.0, "per_keypoint": {"nose_tip_x": 1.0}, "note": "text", "bad": math.nan}, step=3
        )
    assert logged == {"rmse": 2.0, "per_keypoint.nose_tip_x": 1.0}
    client = MlflowClient()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "split")] == ["split/split.json"]
    assert "curve.png" in [a.path for a in client.list_artifacts(run.info.run_id)]  # root: Compare finds it
    history = client.get_metric_history(run.info.run_id, "per_keypoint.nose_tip_x")
    assert [(m.step, m.value) for m in history] == [(3, 1.0)]


def test_data_hash_depends_on_content_only(raw_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in raw_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert tracking.data_hash(copy) == tracking.data_hash(raw_dir)

    (copy / "test.csv").write_text("c\n4\n")
    assert tracking.data_hash(copy) != tracking.data_hash(raw_dir)
    assert tracking.data_hash(tmp_path / "missing") is None


def test_dvc_md5_reads_dvc_file_then_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    deps:\n    - path: data/raw/sample\n      md5: abc.dir\n"
    )
    assert tracking.dvc_md5("data/raw/sample") == "abc.dir"
    assert tracking.dvc_md5("data/raw/kaggle") is None
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data/raw/kaggle.dvc").write_text("outs:\n- md5: def.dir\n  path: kaggle\n")
    assert tracking.dvc_md5("data/raw/kaggle") == "def.dir"


def test_read_run_id_names_the_file_on_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    with pytest.raises(FileNotFoundError, match="run.json"):
        tracking.read_run_id(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="run.json: not valid JSON"):
        tracking.read_run_id(path)
    path.write_text('{"id": "x"}')
    with pytest.raises(ValueError, match="run.json: field 'run_id'"):
        tracking.read_run_id(path)


def test_epoch_logger_writes_history_to_a_run_that_is_not_active(experiment: str, raw_dir: Path) -> None:
    keras = pytest.importorskip("keras")
    import numpy as np

    from fkp.tracking.keras_callback import MlflowEpochLogger

    with tracking.start_run("train", Params(), raw_dir=raw_dir) as target:
        pass
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=[keras.metrics.MeanAbsoluteError("mae")]
    )

    with tracking.start_run("other", Params(), raw_dir=raw_dir) as other:
        model.fit(
            x, y, validation_data=(x, y), epochs=3, batch_size=8, verbose=0,
            callbacks=[MlflowEpochLogger(target.info.run_id)],
        )  # fmt: skip

    client = MlflowClient()
    for key in ("loss", "val_loss", "val_mae", "train_mae", "lr"):
        assert [m.step for m in client.get_metric_history(target.info.run_id, key)] == [1, 2, 3], key
    assert "mae" not in client.get_run(target.info.run_id).data.metrics  # logged as train_mae
    assert client.get_metric_history(target.info.run_id, "lr")[0].value == pytest.approx(0.01)
    assert client.get_run(other.info.run_id).data.metrics == {}


def test_epoch_metrics_put_the_score_first_and_name_training_scores(experiment: str) -> None:
    pytest.importorskip("keras")
    from fkp.tracking.keras_callback import MlflowEpochLogger

    logger = MlflowEpochLogger("unused-run-id")
    metrics = logger.epoch_metrics(
        4, {"loss": 3.0, "rmse": 2.5, "mae": 2.0, "val_rmse": 2.75, "seconds": 1.5}
    )
    assert [m.key for m in metrics][:1] == ["val_rmse"]  # MLflow's Compare plots the first one logged
    assert {m.key for m in metrics} == {"val_rmse", "loss", "train_rmse", "train_mae", "epoch_seconds"}
    assert {m.step for m in metrics} == {5}  # epochs are counted from 1, like history.csv


def test_new_run_names_are_unique_and_name_the_experiment_and_changed_params(
    experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3-epoch trial next to the committed recipe: two names, each saying what it is."""
    import yaml

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 150\n")
    subprocess.run(["git", "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params"],
        cwd=tmp_path,
        check=True,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.DVC_STAGE_ENV, "train")
    committed = from_dict(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    trial = from_dict({"train": {"epochs": 3}, "impute": {"strategy": "drop"}})
    names = []
    for params in (committed, committed, trial):
        with tracking.start_run(tracking.new_run_name(params), params) as run:
            names.append(run.info.run_name)
    monkeypatch.setenv(tracking.DVC_EXP_ENV, "gaunt-leaf")  # `dvc exp run` names its experiment
    with tracking.start_run(tracking.new_run_name(trial), trial) as run:
        names.append(run.info.run_name)
    assert names == [
        "sample·lean·mask·dvc",
        "sample·lean·mask·dvc#2",
        "sample·lean·drop·dvc·train.epochs=3",  # the strategy is in the name once
        "sample·lean·drop·dvc·gaunt-leaf·train.epochs=3",
    ]


def test_run_page_shows_knobs_rounded_scores_and_single_values_as_values(
    experiment: str, raw_dir: Path
) -> None:
    """No input bounds among the params, 5 significant digits, the best epoch as a value (a tag)."""
    with tracking.start_run("page", Params(), raw_dir=raw_dir) as run:
        tracking.log_metrics_dict({"loss": 2.3236687183380127})
        tracking.log_values({"best_epoch": 42})
    data = MlflowClient().get_run(run.info.run_id).data
    assert "train.batch_size" in data.params and not [k for k in data.params if k.startswith("limits.")]
    assert data.metrics == {"loss": 2.3237}
    assert data.tags["best_epoch"] == "42"


def test_logged_scores_read_like_metrics_json() -> None:
    """A run and its DVC experiment show one score: 4 decimals as metrics.json, small numbers in digits."""
    assert tracking.tidy(15.858612) == 15.8586  # metrics.json's round(x, 4); 5 digits would say 15.859
    assert tracking.tidy(2.3236687183380127) == 2.3237
    assert tracking.tidy(0.00182345678) == 0.0018235  # a learning rate keeps its digits


def test_sweep_progress_counts_epochs_not_the_evaluation(experiment: str) -> None:
    """A variant's line says its epoch while it trains, and its evaluated score once evaluated."""
    from flows.sweep import variant_progress

    client = MlflowClient()
    sweep_id = uuid.uuid4().hex
    run = client.create_run(experiment, tags={tracking.TAG_SWEEP: sweep_id, tracking.TAG_VARIANT: "0.002"})
    run_id = run.info.run_id
    assert variant_progress(sweep_id) == ["0.002: starting (running)"]
    client.log_param(run_id, "train.epochs", "2")
    for step, value in ((2, 3.5), (1, 4.0)):  # the store need not return them in order
        client.log_metric(run_id, "val_rmse", value, step=step)
    assert variant_progress(sweep_id) == ["0.002: epoch 2/2, val RMSE 3.5000 px (running)"]
    client.set_terminated(run_id)
    for key, value in (("val_rmse", 3.25), ("mean_face_rmse", 3.9)):  # the evaluate stage, step 3
        client.log_metric(run_id, key, value, step=3)
    assert variant_progress(sweep_id) == ["0.002: 2 epochs, evaluated val RMSE 3.2500 px (finished)"]
