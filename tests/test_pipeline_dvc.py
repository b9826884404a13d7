"""End to end: `dvc repro` of the whole pipeline in a fresh copy of the project, on a tiny sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml

STAGES = ("sample", "validate", "prepare", "impute", "train", "evaluate", "register", "predict")


def dvc(*args: str, cwd, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def git(cwd, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", *args], cwd=cwd, check=True, env=env)


def fkp_baseline(cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fkp.cli", "baseline"], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_readable_at_120_columns(project) -> None:
    """The README's commands on a fresh clone: a real comparison with HEAD, nothing cut to "…"."""
    narrow = {"COLUMNS": "120"}
    diff = dvc("metrics", "diff", cwd=project, env=narrow)
    assert "failed to load" not in diff, diff  # HEAD carries the committed baseline's metrics.json
    rows = [line.split() for line in diff.splitlines() if "val_rmse" in line.split()[1:2]]
    assert len(rows) == 1 and rows[0][2] != "-", diff  # HEAD's value is a number
    assert len(diff.splitlines()) <= 8, diff
    for args in (
        ("metrics", "show"),
        ("exp", "show", "--only-changed", "--drop", ".*/|metrics.json|Created"),
    ):
        out = dvc(*args, cwd=project, env=narrow)
        assert "…" not in out and max(len(line) for line in out.splitlines()) <= 120, out
        assert "val_rmse" in out and "!" not in out.split(), out


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(project_copy):
    first = dvc("repro", cwd=project_copy)
    assert ran(first) == set(STAGES)

    # metrics.json holds the few numbers people compare; the details have files of their own
    metrics = json.loads((project_copy / "metrics.json").read_text())
    assert list(metrics) == ["val_rmse", "val_mae", "mean_face_rmse", "worst_distortion_rmse"]
    assert metrics["val_rmse"] > 0
    from fkp.core.robustness import DISTORTIONS

    per_keypoint = pd.read_csv(project_copy / "reports/eval/per_keypoint.csv")
    distortions = pd.read_csv(project_copy / "reports/eval/distortions.csv")
    assert len(per_keypoint) == 15 and set(distortions["distortion"]) == set(DISTORTIONS)
    assert metrics["worst_distortion_rmse"] == distortions["rmse"].max() > 0
    assert_readable_at_120_columns(project_copy)
    history = pd.read_csv(project_copy / "reports/train/history.csv")
    assert list(history["epoch"]) == [1, 2] and {"loss", "val_rmse"} <= set(history.columns)
    for png in ("learning_curves", "val_faces", "keypoint_errors", "distortion_errors"):
        assert (project_copy / f"reports/eval/{png}.png").stat().st_size > 1000
    submission = pd.read_csv(project_copy / "reports/predict/submission.csv")
    lookup = pd.read_csv(project_copy / "data/raw/sample/IdLookupTable.csv")
    assert list(submission.columns) == ["RowId", "Location"] and len(submission) == len(lookup)
    registry = json.loads((project_copy / "reports/registry.json").read_text())
    assert registry["promoted"] is True  # first model of a fresh registry

    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")
    champion = mlflow.MlflowClient().get_model_version_by_alias("facial-keypoints-cnn", "champion")
    assert str(champion.version) == str(registry["version"])
    # the latest val_rmse of the run is the evaluated score, not the last epoch's
    run = mlflow.MlflowClient().get_run(champion.run_id)
    assert run.data.metrics["val_rmse"] == pytest.approx(metrics["val_rmse"], abs=1e-3)
    # DVC's stage environment marks the run; the name says what differs between runs
    assert run.data.tags["fkp.entrypoint"] == "dvc" and run.info.run_name == "sample·lean·mask·dvc"

    second = dvc("repro", cwd=project_copy)
    assert ran(second) == set(), second

    # the committed baseline: what `fkp baseline` says once it is committed, and once a param moved
    git(project_copy, "add", "dvc.lock", "metrics.json")
    git(project_copy, "commit", "-qm", "baseline")
    fresh = fkp_baseline(project_copy)
    assert fresh.returncode == 0 and "match" in fresh.stdout, fresh.stdout + fresh.stderr

    # a training knob reruns training and what follows it, never the data stages
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    register = project_copy / "fkp/stages/register.py"
    register.write_text(register.read_text() + "# changed\n")
    stale = fkp_baseline(project_copy)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    lines = stale.stdout.splitlines()
    assert any(
        line.strip().startswith("train:") and "params.yaml train modified" in line for line in lines
    ), lines
    assert any("register:" in line and "fkp/stages/register.py modified" in line for line in lines), lines
    assert not any(line.strip().startswith(("sample:", "validate:", "prepare:")) for line in lines), lines
    assert "dvc repro && git add dvc.lock metrics.json" in lines[-1]
    third = dvc("repro", cwd=project_copy)
    assert ran(third) == {"train", "evaluate", "register", "predict"}
    names = [r.info.run_name for r in mlflow.search_runs(experiment_names=["fkp"], output_format="list")]
    assert len(set(names)) == len(names) == 2 and "sample·lean·mask·dvc·train.lr=0.003" in names, names
    assert "val_rmse" in dvc("metrics", "show", cwd=project_copy)
    assert "train.lr" in dvc("params", "diff", cwd=project_copy)


@pytest.mark.slow
def test_source_switch_and_failed_validation_keeps_outputs(project_copy):
    """data.source=kaggle reads data/raw/kaggle; a bad file there stops the run at validation."""
    kaggle = project_copy / "data/raw/kaggle"
    subprocess.run([sys.executable, "-m", "fkp.cli", "sample", "--out", str(kaggle)], check=True)
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["data"]["source"] = "kaggle"
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", "prepare", cwd=project_copy)
    assert "data/raw/kaggle" in out
    cached = (project_copy / "data/prepared/train.npz").read_bytes()

    csv = kaggle / "training.csv"
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].rsplit(" ", 1)[0] + " 300"  # data row 5: a pixel outside 0..255
    csv.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=project_copy, capture_output=True, text=True
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "training.csv" in out and "row 5" in out and "Image" in out
    assert "Running stage 'prepare'" not in out
    assert (project_copy / "data/prepared/train.npz").read_bytes() == cached


@pytest.mark.slow
def test_pseudo_labels_run_as_a_dvc_experiment_and_log_the_teacher(project_copy):
    """`dvc exp run -S impute.strategy=pseudo`: the train stage trains a teacher first and logs it."""
    out = dvc("exp", "run", "-S", "impute.strategy=pseudo", "-S", "impute.teacher_epochs=2", cwd=project_copy)
    assert "pseudo labels: teacher val_rmse" in out and "Running stage 'train'" in out
    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fkp"], output_format="list")
    pseudo = [r for r in runs if r.data.params.get("impute.strategy") == "pseudo"]
    assert len(pseudo) == 1, [r.data.params.get("impute.strategy") for r in runs]
    metrics = pseudo[0].data.metrics
    assert metrics["impute.teacher_val_rmse"] > 0 and metrics["impute.teacher_seconds"] > 0
    assert metrics["impute.pseudo_filled"] + metrics["impute.pseudo_rejected"] > 0
    assert metrics["train_seconds"] >= metrics["impute.teacher_seconds"]  # the teacher is training time
