"""Stage: train the CNN on the prepared cache and record the run in MLflow.

Inputs are the cached pixels, the fixed split and the imputed training targets;
validation targets are always the original labels (NaN where nobody labelled), so the
early-stopping score and the reported score are honest whatever the imputation.
Outputs: the ``.keras`` model, the per-epoch history CSV, the logged MLflow model and a
small JSON that hands the run to the evaluate and register stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fkp import atomic
from fkp.core.split import load_split
from fkp.params import Params
from fkp.stages.handover import HISTORY_CSV, RUN_JSON
from fkp.stages.impute import load_targets
from fkp.stages.prepare import SPLIT_JSON, TRAIN_NPZ, load_train


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_uri: str
    best_epoch: int
    best_val_rmse: float
    seconds: float


def write_history(path: str | Path, history: dict[str, list[float]]) -> None:
    """Per-epoch history as CSV (the DVC plots source), epochs counted from 1."""
    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    with atomic.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def run_train(
    params: Params,
    *,
    prepared_dir: str | Path = "data/prepared",
    targets_path: str | Path = "data/prepared/targets.npz",
    model_out: str | Path = "models/model.keras",
    history_out: str | Path = HISTORY_CSV,
    run_file: str | Path = RUN_JSON,
    raw_dir: str | Path | None = None,
) -> TrainOutcome:
    """Fit ``params.model`` with ``params.train`` and log everything to a new MLflow run."""
    from fkp import tracking
    from fkp.core.fit import fit_model
    from fkp.core.pseudo_labels import teach
    from fkp.serving.pyfunc import log_keypoint_model
    from fkp.tracking.keras_callback import MlflowEpochLogger

    prepared_dir = Path(prepared_dir)
    data = load_train(prepared_dir / TRAIN_NPZ)
    split = load_split(prepared_dir / SPLIT_JSON)
    rows, targets, strategy = load_targets(targets_path)
    if strategy != params.impute.strategy:
        raise ValueError(
            f"{targets_path} was imputed with {strategy!r} but params say impute.strategy="
            f"{params.impute.strategy!r}: run the impute stage again"
        )
    x_train, y_train = data.images[rows], targets
    x_val, y_val = data.images[split.val], data.keypoints[split.val]
    tracking.configure(experiment=params.mlflow.experiment)
    tags = {"fkp.split_id": split.split_id, "fkp.split_by_group": split.by_group}
    description = run_description(params, len(x_train), len(x_val), split.split_id, split.by_group)
    start = time.perf_counter()
    with tracking.start_run(
        tracking.new_run_name(params), params, tags=tags, raw_dir=raw_dir, description=description
    ) as run:
        run_id = run.info.run_id
        tracking.log_split(prepared_dir / SPLIT_JSON)
        # pseudo: the teacher trains first and fills the labels it is sure of (its figures: impute.*)
        y_train, teacher = teach(x_train, y_train, x_val, y_val, params)
        tracking.log_metrics_dict(teacher)
        print(
            f"training {params.model.arch} on {len(x_train)} faces ({strategy}), "
            f"validating on {len(x_val)} (split {split.split_id}); MLflow run {run.info.run_name} {run_id}"
        )
        result = fit_model(
            x_train,
            y_train,
            x_val,
            y_val,
            params.model,
            params.train,
            callbacks=[MlflowEpochLogger(run_id)],
        )
        seconds = time.perf_counter() - start
        # the best epoch's val_rmse is already in the epoch series; the evaluate stage logs THE
        # val_rmse (best weights, observed labels) on the run and on the logged model
        tracking.log_values({"best_epoch": result.best_epoch})  # a value, not a one-point chart
        tracking.log_metrics_dict({"train_seconds": round(seconds, 1)})
        # the new model replaces the old one only once it is logged, and the hand-over follows at
        # once: a kill in between leaves the previous model, history and run.json, still matching
        with atomic.atomic_path(model_out) as tmp:
            result.model.save(tmp)
            info = log_keypoint_model(
                tmp,
                tta_flip=params.train.tta_flip,
                input_example_images=data.images[split.val[:2]],
                max_batch=params.limits.serve_max_batch,
            )
        write_history(history_out, result.history)
        tracking.write_run_id(
            run_file, run_id, model_uri=info.model_uri, model_id=info.model_id, split_id=split.split_id
        )
    return TrainOutcome(run_id, info.model_uri, result.best_epoch, float(result.best_val_rmse), seconds)


def run_description(params: Params, n_train: int, n_val: int, split_id: str, by_group: bool) -> str:
    """The run page's Description (Markdown): what was trained on what, in one paragraph."""
    split_kind = "person-disjoint" if by_group else "random"
    return (
        f"**{params.model.arch}** CNN trained on {n_train} `{params.data.source}` faces with "
        f"**{params.impute.strategy}** imputation of missing labels, validated on {n_val} faces "
        f"(split `{split_id}`, {split_kind}). `val_rmse` is the validation RMSE in pixels of the "
        "best epoch's weights over observed labels only; per-keypoint errors are in "
        "`per_keypoint.csv` and `keypoint_errors.png`, predicted vs true faces in `val_faces.png`."
    )
