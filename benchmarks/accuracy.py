"""Benchmark: accuracy of a config on any Kaggle-format training.csv, on a held-out split.

With ``--groups`` (a ``row,group`` person-id file) the validation persons never appear in
training, which is the only honest way to score faces from videos. Reports RMSE in
pixels on observed labels, overall and per keypoint, next to the mean-face baseline on
the same split, and logs the run to MLflow like any other training run.

    python -m benchmarks.accuracy --csv training.csv[.gz] [--groups groups.csv] \
        [--params params.yaml] [-S train.epochs=20 -S impute.strategy=ffill]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fkp.core.groups import read_groups
from fkp.core.kaggle_csv import read_training
from fkp.core.metrics import mean_face, score
from fkp.core.split import Split, make_split
from fkp.params import Params, from_dict
from fkp.stages.impute import impute_training_rows

BENCHMARK_EXPERIMENT = "fkp-benchmarks"


@dataclass
class AccuracyResult:
    name: str
    rmse: float
    mae: float
    per_keypoint: dict[str, float]
    mean_face_rmse: float
    n_train: int
    n_val: int
    person_disjoint: bool
    epochs_run: int
    best_epoch: int
    train_seconds: float
    seconds_to_best: float
    train_images_per_s: float
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """``dvc exp run -S`` style ``key.sub=value`` overrides (values parsed as YAML)."""
    for item in overrides:
        key, _, raw = item.partition("=")
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return values


def load_config(params_path: str | Path | None, overrides: list[str]) -> Params:
    values = yaml.safe_load(Path(params_path).read_text()) if params_path else {}
    return from_dict(apply_overrides(values or {}, overrides))


class TimeBudget:
    """Keras callback factory: stop after ``seconds`` of training (same budget for every recipe)."""

    def __new__(cls, seconds: float):
        import keras

        class _Budget(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if time.perf_counter() - self.start >= seconds:
                    self.model.stop_training = True

        return _Budget()


def evaluate_config(
    name: str,
    params: Params,
    images: np.ndarray,
    keypoints: np.ndarray,
    split: Split,
    *,
    time_budget_s: float | None = None,
    model_out: Path | None = None,
    log_mlflow: bool = True,
    raw_dir: Path | None = None,
) -> AccuracyResult:
    """Train ``params`` on the split's training rows and score the validation rows."""
    from fkp.core.fit import fit_model
    from fkp.core.predictor import predict_keypoints
    from fkp.core.pseudo_labels import teach

    rows, targets = impute_training_rows(keypoints, split.train, params.impute.strategy)
    # pseudo: a teacher fills the missing labels first; its time counts as training time
    targets, teacher = teach(images[rows], targets, images[split.val], keypoints[split.val], params)
    impute_seconds = teacher.get("impute.teacher_seconds", 0.0)
    callbacks = [TimeBudget(time_budget_s)] if time_budget_s else []
    with contextlib.ExitStack() as stack:
        run_id = None
        if log_mlflow:
            from fkp import tracking
            from fkp.tracking.keras_callback import MlflowEpochLogger

            tracking.configure(experiment=BENCHMARK_EXPERIMENT)
            tags = {"fkp.benchmark": "accuracy", "fkp.split_id": split.split_id}
            run = stack.enter_context(tracking.start_run(f"bench-{name}", params, tags=tags, raw_dir=raw_dir))
            run_id = run.info.run_id
            callbacks.append(MlflowEpochLogger(run_id))
        result = fit_model(
            images[rows],
            targets,
            images[split.val],
            keypoints[split.val],
            params.model,
            params.train,
            callbacks=callbacks,
        )
        predictions = predict_keypoints(result.model, images[split.val], tta_flip=params.train.tta_flip)
        scores = score(predictions, keypoints[split.val])
        mean = np.broadcast_to(mean_face(keypoints[split.train]), (len(split.val), 30))
        seconds = result.history["seconds"]
        out = AccuracyResult(
            name=name,
            rmse=scores["rmse"],
            mae=scores["mae"],
            per_keypoint={k: v["rmse"] for k, v in scores["per_keypoint"].items()},
            mean_face_rmse=score(mean, keypoints[split.val])["rmse"],
            n_train=len(rows),
            n_val=len(split.val),
            person_disjoint=split.by_group,
            epochs_run=result.epochs_run,
            best_epoch=result.best_epoch,
            train_seconds=result.train_seconds + impute_seconds,
            seconds_to_best=float(np.sum(seconds[: result.best_epoch])) + impute_seconds,
            train_images_per_s=float(len(rows) / np.median(seconds)),
            run_id=run_id,
        )
        if model_out is not None:
            model_out.parent.mkdir(parents=True, exist_ok=True)
            result.model.save(model_out)
            out.extra["model_path"] = str(model_out)
        if log_mlflow:
            tracking.log_metrics_dict(
                {
                    "val_rmse": out.rmse,
                    "val_mae": out.mae,
                    "mean_face_rmse": out.mean_face_rmse,
                    "train_seconds": out.train_seconds,
                    "train_images_per_s": out.train_images_per_s,
                    **teacher,
                }
            )
    return out


def load_dataset(csv: Path, groups: Path | None, val_fraction: float, seed: int):
    data = read_training(csv)
    group_ids = read_groups(groups, len(data.images)) if groups else None
    return data, make_split(len(data.images), val_fraction, seed, group_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--groups", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="config")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()
    params = load_config(args.params, args.overrides)
    data, split = load_dataset(args.csv, args.groups, args.val_fraction, args.split_seed)
    result = evaluate_config(args.name, params, data.images, data.keypoints, split, raw_dir=args.csv.parent)
    print(json.dumps(result.__dict__, indent=2))


if __name__ == "__main__":
    main()
