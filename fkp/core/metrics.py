"""Scores in pixels on observed labels only (NaN = not labelled = not scored).

The Kaggle metric is the RMSE over every submitted coordinate; here it is computed over
the coordinates a human actually labelled, so an imputed value can never count as truth.
"""

from __future__ import annotations

import numpy as np

from fkp.core.keypoints import KEYPOINT_NAMES


def _errors(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    observed = np.isfinite(labels)
    return np.where(observed, predictions - labels, 0.0), observed


def rmse(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Root mean squared error in pixels over observed coordinates."""
    err, observed = _errors(predictions, labels)
    return float(np.sqrt((err**2).sum() / max(observed.sum(), 1)))


def keypoint_scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Per keypoint: RMSE and MAE over its observed x and y, and how many faces had it labelled."""
    err, observed = _errors(predictions, labels)
    out = {}
    for i, name in enumerate(KEYPOINT_NAMES):
        e, o = err[:, 2 * i : 2 * i + 2], observed[:, 2 * i : 2 * i + 2]
        n = max(int(o.sum()), 1)
        out[name] = {
            "rmse": float(np.sqrt((e**2).sum() / n)),
            "mae": float(np.abs(e).sum() / n),
            "n_faces": int(o.all(axis=1).sum()),
        }
    return out


def score(predictions: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Overall RMSE and MAE, the count of scored coordinates, and the per-keypoint table."""
    err, observed = _errors(predictions, labels)
    n = max(int(observed.sum()), 1)
    return {
        "rmse": float(np.sqrt((err**2).sum() / n)),
        "mae": float(np.abs(err).sum() / n),
        "n_faces": int(len(labels)),
        "n_coordinates": int(observed.sum()),
        "per_keypoint": keypoint_scores(predictions, labels),
    }


def mean_face(labels: np.ndarray) -> np.ndarray:
    """The baseline predictor: each coordinate's mean over the faces where it is labelled."""
    return np.nanmean(np.asarray(labels, dtype=np.float64), axis=0)
