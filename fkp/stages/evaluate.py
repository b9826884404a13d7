"""Stage: score the trained model on the validation split and draw what it does.

Scores are RMSE and MAE in pixels over the ORIGINAL observed labels of the validation
rows (never an imputed value), overall and per keypoint, next to the mean-face baseline
on the same rows. ``metrics.json`` holds only the few numbers people compare across commits
and experiments (``dvc metrics diff``, ``dvc exp show``: one readable row each); the per-keypoint
and per-distortion figures go to their own tables and bar charts under ``reports/eval``. The
PNGs feed ``dvc plots`` and the MLflow run the train stage opened.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fkp import atomic
from fkp.core.metrics import mean_face, score
from fkp.core.split import load_split
from fkp.params import Params
from fkp.stages.handover import HISTORY_CSV, METRICS_JSON, RUN_JSON
from fkp.stages.prepare import SPLIT_JSON, TRAIN_NPZ, load_train

#: the keys of ``metrics.json``, in order: everything else an evaluation finds goes to ``reports/eval``
HEADLINE = ("val_rmse", "val_mae", "mean_face_rmse", "worst_distortion_rmse")


def metrics_summary(predictions: np.ndarray, labels: np.ndarray, train_labels: np.ndarray) -> dict:
    """Model scores, mean-face baseline, counts and per-keypoint RMSE (``headline`` picks metrics.json's)."""
    result = score(predictions, labels)
    baseline = score(np.broadcast_to(mean_face(train_labels), labels.shape), labels)
    return {
        "val_rmse": round(result["rmse"], 4),
        "val_mae": round(result["mae"], 4),
        "mean_face_rmse": round(baseline["rmse"], 4),
        "n_val_faces": result["n_faces"],
        "n_val_coordinates": result["n_coordinates"],
        "per_keypoint_rmse": {k: round(v["rmse"], 4) for k, v in result["per_keypoint"].items()},
    }


def predict_validation(
    model_ref: str | Path, prepared_dir: str | Path, *, tta_flip: bool, robustness: bool = False
) -> dict:
    """Predict the validation rows with a model path or MLflow URI and score them.

    ``robustness`` adds ``robustness_rmse``: the RMSE on the same faces under each distortion
    of :mod:`fkp.core.robustness` (blur, noise, JPEG, gamma, rotation/scale, a tighter or
    off-centre framing, occlusion), and its summary ``worst_distortion_rmse``.
    """
    from fkp.core.predictor import load_model, predict_keypoints

    prepared_dir = Path(prepared_dir)
    data = load_train(prepared_dir / TRAIN_NPZ)
    split = load_split(prepared_dir / SPLIT_JSON)
    model = load_model(model_ref)
    images, labels = data.images[split.val], data.keypoints[split.val]
    predictions = predict_keypoints(model, images, tta_flip=tta_flip)
    metrics = metrics_summary(predictions, labels, data.keypoints[split.train])
    if robustness:
        from fkp.core.robustness import robustness_scores

        scores = robustness_scores(lambda x: predict_keypoints(model, x, tta_flip=tta_flip), images, labels)
        metrics["robustness_rmse"] = {k: round(v, 4) for k, v in scores.items() if k != "clean"}
        metrics["worst_distortion_rmse"] = max(metrics["robustness_rmse"].values())
    return {"images": images, "labels": labels, "predictions": predictions, "metrics": metrics}


def headline(metrics: dict) -> dict:
    """The ``metrics.json`` content: the few numbers compared across runs, in :data:`HEADLINE` order."""
    return {key: metrics[key] for key in HEADLINE if key in metrics}


def rmse_table(values: dict[str, float], name: str) -> pd.DataFrame:
    """``name,rmse`` rows, worst first: the per-keypoint and per-distortion tables."""
    table = pd.DataFrame([{name: k, "rmse": v} for k, v in values.items()])
    return table.sort_values("rmse", ascending=False, kind="stable")


def score_model_uri(model_ref: str, prepared_dir: str | Path, *, tta_flip: bool) -> float:
    """Validation RMSE of any model on the current split (used to re-score an old champion)."""
    return float(predict_validation(model_ref, prepared_dir, tta_flip=tta_flip)["metrics"]["val_rmse"])


def run_evaluate(
    params: Params,
    *,
    model_path: str | Path = "models/model.keras",
    prepared_dir: str | Path = "data/prepared",
    run_file: str | Path = RUN_JSON,
    history_path: str | Path = HISTORY_CSV,
    metrics_out: str | Path = METRICS_JSON,
    plots_dir: str | Path = "reports/eval",
) -> dict:
    """Write metrics.json, the per-keypoint and per-distortion tables and four pictures; log them to the
    training run."""
    from fkp import tracking
    from fkp.core.plots import plot_face_grid, plot_learning_curves, plot_rmse_bars

    plots_dir = Path(plots_dir)
    result = predict_validation(model_path, prepared_dir, tta_flip=params.train.tta_flip, robustness=True)
    metrics = result["metrics"]
    atomic.write_text(metrics_out, json.dumps(headline(metrics), indent=2) + "\n")
    tables = {
        plots_dir / "per_keypoint.csv": rmse_table(metrics["per_keypoint_rmse"], "keypoint"),
        plots_dir / "distortions.csv": rmse_table(metrics["robustness_rmse"], "distortion"),
    }
    for path, table in tables.items():
        with atomic.atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    pictures = [
        plot_learning_curves(history_path, plots_dir / "learning_curves.png"),
        plot_face_grid(
            result["images"],
            result["labels"],
            plots_dir / "val_faces.png",
            predictions=result["predictions"],
            n=9,  # 3 x 3 faces: still legible side by side in MLflow's Compare
            ncols=3,
            title=f"validation faces: true (green) vs predicted (red), RMSE {metrics['val_rmse']:.2f} px",
        ),
        plot_rmse_bars(
            metrics["per_keypoint_rmse"],
            plots_dir / "keypoint_errors.png",
            title="validation error per keypoint",
        ),
        plot_rmse_bars(
            {"clean": metrics["val_rmse"], **metrics["robustness_rmse"]},
            plots_dir / "distortion_errors.png",
            title="validation error per distortion (clean: the faces as they are)",
        ),
    ]
    run = tracking.read_handoff(run_file)
    tracking.configure(experiment=params.mlflow.experiment)
    with tracking.start_run("evaluate", params, run_id=run["run_id"]):
        # one step after the last epoch (epochs are steps 1..n), so the run's latest val_rmse is the
        # evaluated (best-weights) score; the same numbers become the logged model's metrics
        step = len(pd.read_csv(history_path)) + 1
        scores = {k: v for k, v in metrics.items() if k not in ("per_keypoint_rmse", "robustness_rmse")}
        # val_rmse.blur, val_rmse.jpeg, ...: one column per distortion in the runs table
        scores.update({f"val_rmse.{k}": v for k, v in metrics["robustness_rmse"].items()})
        tracking.log_metrics_dict(scores, step=step, model_id=tracking.model_id_of(run))
        # per keypoint: one table and one chart, not 15 one-point metric series
        tracking.log_pictures([*pictures, *tables])
    print(
        f"validation RMSE {metrics['val_rmse']:.4f} px, MAE {metrics['val_mae']:.4f} px "
        f"(mean face {metrics['mean_face_rmse']:.4f} px) on {metrics['n_val_faces']} faces"
    )
    print("distorted:", ", ".join(f"{k} {v:.2f}" for k, v in metrics["robustness_rmse"].items()), "px")
    return metrics
