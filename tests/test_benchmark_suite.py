"""The suite's plumbing: presets are valid params overrides; it rewrites only its part of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.accuracy import load_config
from benchmarks.suite import BEGIN, END, PRESETS_DIR, preset_overrides, splice

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.args")))
def test_every_preset_is_a_valid_set_of_params_overrides(name):
    overrides = preset_overrides(name)
    assert overrides and all("=" in o for o in overrides)
    load_config(PARAMS, overrides)  # an unknown or misspelt key raises


def test_a_preset_changes_what_it_names():
    params = load_config(PARAMS, preset_overrides("v1"))
    assert params.train.loss == "mse" and params.train.ema == 0.0 and params.impute.strategy == "mask"


def test_splice_replaces_the_generated_part_and_keeps_the_rest():
    existing = f"{BEGIN}\nold numbers\n{END}\n\n## Hand-written\nkept\n"
    out = splice(existing, f"{BEGIN}\nnew numbers\n{END}")
    assert "new numbers" in out and "old numbers" not in out and "## Hand-written\nkept" in out
    assert splice("", f"{BEGIN}\nx\n{END}").count(BEGIN) == 1


def test_sweep_table_reads_the_variants_back_from_mlflow(tmp_path, monkeypatch):
    import mlflow

    from benchmarks.sweep_table import render, sweep_rows
    from fkp import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.configure(experiment="sweeps", artifact_root=str(tmp_path / "artifacts"))
    for name, rmse in (("v1", 1.6), ("better", 1.2)):
        with mlflow.start_run(tags={tracking.TAG_SWEEP: "s1", tracking.TAG_VARIANT: name}):
            mlflow.log_metrics({"val_rmse": rmse, "val_rmse.blur": rmse + 1, "train_seconds": 120})
    with mlflow.start_run():  # not a sweep variant: not in the table
        mlflow.log_metric("val_rmse", 9.9)
    table = render(sweep_rows("sweeps"), reference="v1")
    assert "| better | 1.2000 | -25.0 % | 2.200 (blur) | 2.0 |" in table
    assert "9.9" not in table
