"""Champion promotion against a real SQLite model registry with real (tiny) pyfunc models."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from fkp import tracking
from fkp.tracking import registry


class ConstantScore(mlflow.pyfunc.PythonModel):
    """A stand-in model whose prediction is the RMSE it would get on the current split."""

    def __init__(self, rmse: float) -> None:
        self.rmse = rmse

    def predict(self, context, model_input: list[float]) -> list[float]:
        return [self.rmse for _ in model_input]


def load_and_score(model_uri: str) -> float:
    """Scorer in the shape the pipeline passes: load the model behind a URI, evaluate it."""
    return float(mlflow.pyfunc.load_model(model_uri).predict([0.0])[0])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    tracking.configure(f"sqlite:///{root / 'mlflow.db'}", "registry-tests", str(root / "artifacts"))
    yield mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def name(store: str) -> str:
    """A registered-model name of its own per test."""
    return f"fkp-test-{uuid.uuid4().hex[:8]}"


def candidate(true_rmse: float) -> tuple[str, str]:
    """Log a tiny real model in its own run; return ``(model_uri, run_id)``."""
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ConstantScore(true_rmse), pip_requirements=["mlflow"]
        )
    return info.model_uri, run.info.run_id


def test_first_becomes_champion_worse_is_kept_better_takes_over(name: str) -> None:
    client = MlflowClient()
    assert registry.champion_info(name) is None

    uri, run1 = candidate(2.0)
    first = registry.promote_if_better(uri, run1, 2.0, "split-a", name=name)
    assert first.promoted and first.version == "1" and first.champion_version_before is None
    assert registry.champion_info(name) == {
        "version": "1",
        "run_id": run1,
        "val_rmse": 2.0,
        "split_id": "split-a",
    }

    uri, run2 = candidate(2.5)
    worse = registry.promote_if_better(uri, run2, 2.5, "split-a", name=name)
    assert not worse.promoted
    assert (worse.candidate_rmse, worse.champion_rmse, worse.champion_version_before) == (2.5, 2.0, "1")
    assert "2.5000" in worse.reason and "2.0000" in worse.reason
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION_ALIAS).version) == "1"

    run2_data = client.get_run(run2).data
    assert run2_data.tags[registry.TAG_PROMOTION] == "kept"
    # the candidate's own score is its val_rmse; only the champion's is new on the run
    assert run2_data.metrics == {"registry.champion_rmse": 2.0}
    recorded = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run2, artifact_path=registry.DECISION_ARTIFACT)
        ).read_text()
    )
    assert recorded == worse.to_dict()
    version2 = client.get_model_version(name, "2")
    assert version2.description == worse.reason
    assert version2.tags == {"val_rmse": "2.5", "split_id": "split-a", "source_run_id": run2}

    uri, run3 = candidate(1.5)
    better = registry.promote_if_better(uri, run3, 1.5, "split-a", name=name)
    assert better.promoted and better.version == "3" and better.champion_version_before == "1"
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION_ALIAS).version) == "3"
    assert client.get_run(run3).data.tags[registry.TAG_PROMOTION] == "promoted"


def test_champion_from_another_split_is_rescored(name: str) -> None:
    uri, run1 = candidate(2.2)  # recorded 2.0 on split-a; on split-b it really scores 2.2
    registry.promote_if_better(uri, run1, 2.0, "split-a", name=name)
    seen: list[str] = []

    def scorer(model_uri: str) -> float:
        seen.append(model_uri)
        return load_and_score(model_uri)

    uri, run2 = candidate(2.1)
    decision = registry.promote_if_better(uri, run2, 2.1, "split-b", name=name, score_champion=scorer)
    assert seen == [f"models:/{name}@champion"]
    assert decision.promoted, decision.reason  # 2.1 beats the re-scored 2.2, though not the stale 2.0
    assert decision.champion_rmse == pytest.approx(2.2)
    assert registry.champion_info(name)["split_id"] == "split-b"


def test_incomparable_champion_is_kept_and_the_reason_given(name: str) -> None:
    uri, run1 = candidate(2.0)
    registry.promote_if_better(uri, run1, 2.0, "split-a", name=name)

    uri, run2 = candidate(1.0)
    no_scorer = registry.promote_if_better(uri, run2, 1.0, "split-b", name=name)
    assert not no_scorer.promoted and no_scorer.champion_rmse is None
    assert "no scorer" in no_scorer.reason

    def broken(model_uri: str) -> float:
        raise OSError("validation images missing")

    uri, run3 = candidate(1.0)
    failed = registry.promote_if_better(uri, run3, 1.0, "split-b", name=name, score_champion=broken)
    assert not failed.promoted and "validation images missing" in failed.reason
    assert registry.champion_info(name)["version"] == "1"
    assert "registry.champion_rmse" not in MlflowClient().get_run(run3).data.metrics


@pytest.mark.parametrize(
    ("candidate_rmse", "champion_rmse", "promoted"),
    [(1.9, 2.0, True), (2.0, 2.0, False), (2.1, 2.0, False), (math.nan, 2.0, False)],
)
def test_only_strict_improvement_promotes(
    candidate_rmse: float, champion_rmse: float, promoted: bool
) -> None:
    champion = {"version": "1", "run_id": "r", "val_rmse": champion_rmse, "split_id": "s"}
    decision = registry.decide("2", candidate_rmse, champion, champion_rmse, "recorded on the same split")
    assert decision.promoted is promoted


def test_registering_the_same_run_twice_keeps_one_version(name: str) -> None:
    client = MlflowClient()
    uri, run1 = candidate(2.0)
    first = registry.promote_if_better(uri, run1, 2.0, "split-a", name=name)
    again = registry.promote_if_better(uri, run1, 2.0, "split-a", name=name)
    assert first.promoted and not again.promoted
    assert again.version == first.version == "1"
    assert "already registered" in again.reason
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]

    uri2, run2 = candidate(2.5)  # a registered run that is not champion: re-registering compares again
    kept = registry.promote_if_better(uri2, run2, 2.5, "split-a", name=name)
    kept_again = registry.promote_if_better(uri2, run2, 2.5, "split-a", name=name)
    assert kept_again.version == kept.version == "2" and not kept_again.promoted
    assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'")) == ["1", "2"]


def fkp_register(folder: Path, store: str, name: str, run_id: str, uri: str, rmse: float):
    """`fkp register` as the register stage runs it: run.json and metrics.json in, one decision out."""
    import os
    import subprocess
    import sys

    (folder / "reports/train").mkdir(parents=True, exist_ok=True)
    handover = {"run_id": run_id, "model_uri": uri, "split_id": "split-a"}
    (folder / "reports/train/run.json").write_text(json.dumps(handover))
    (folder / "metrics.json").write_text(json.dumps({"val_rmse": rmse, "mean_face_rmse": 3.76}))
    (folder / "params.yaml").write_text(
        f"mlflow:\n  experiment: registry-tests\n  registered_model: {name}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "fkp.cli", "register"],
        cwd=folder,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_fkp_register_keeps_a_model_worse_than_the_mean_face_out_of_the_registry(
    name: str, store: str, tmp_path: Path
) -> None:
    """`fkp register` on a 49 px trial: no version (the latest version stays a real model), one line why."""
    uri, run_id = candidate(49.0)
    done = fkp_register(tmp_path, store, name, run_id, uri, 49.0)
    assert done.returncode == 0, done.stderr
    said = [line for line in (done.stdout + done.stderr).splitlines() if "not registered" in line]
    assert len(said) == 1 and "49.0000 px" in said[0] and "mean face (3.7600 px)" in said[0], said
    assert MlflowClient().search_model_versions(f"name = '{name}'") == []
    record = json.loads((tmp_path / "reports/registry.json").read_text())
    assert record["version"] is None and record["promoted"] is False
    assert MlflowClient().get_run(run_id).data.tags[registry.TAG_PROMOTION] == "not registered"


def test_fkp_register_prints_its_decision_not_mlflows_notices(name: str, store: str, tmp_path: Path) -> None:
    for rmse in (2.0, 1.5):  # a new registered model, then a version of an existing one
        uri, run_id = candidate(rmse)
        done = fkp_register(tmp_path, store, name, run_id, uri, rmse)
        assert done.returncode == 0, done.stderr
        out = done.stdout + done.stderr
        for notice in ("Successfully registered model", "already exists", "Created version"):
            assert notice not in out, out
        assert "becomes champion" in out or "< champion v1" in out, out


def test_a_floor_in_params_replaces_the_mean_face_as_the_bar() -> None:
    assert registry.not_a_candidate(2.0, 3.0) is None
    assert "mean face" in registry.not_a_candidate(3.0, 3.0)
    assert registry.not_a_candidate(5.0, 3.0, max_rmse=10.0) is None
    assert "candidate_max_rmse" in registry.not_a_candidate(10.0, 30.0, max_rmse=10.0)
