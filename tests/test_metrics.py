"""Evaluation scores observed labels only: an imputed or missing value never counts."""

from __future__ import annotations

import numpy as np

from fkp.core.metrics import mean_face, rmse, score


def test_missing_labels_are_not_scored():
    labels = np.full((2, 30), 50.0)
    labels[1, 4:] = np.nan  # partial row
    preds = np.full((2, 30), 50.0)
    preds[1, 4:] = 0.0  # wildly wrong where nothing is labelled: must not matter
    preds[0, 0] = 53.0  # 3 px off on one observed coordinate
    result = score(preds, labels)
    assert result["n_coordinates"] == 34
    assert np.isclose(result["rmse"], np.sqrt(9 / 34))
    assert np.isclose(result["mae"], 3 / 34)
    assert result["per_keypoint"]["left_eye_center"]["n_faces"] == 2
    assert result["per_keypoint"]["mouth_left_corner"]["n_faces"] == 1
    assert np.isclose(result["per_keypoint"]["left_eye_center"]["rmse"], np.sqrt(9 / 4))


def test_ffilled_values_would_change_the_score_if_counted():
    labels = np.array([[10.0] * 30, [np.nan] * 30])
    ffilled = np.array([[10.0] * 30, [10.0] * 30])
    preds = np.array([[10.0] * 30, [40.0] * 30])
    assert rmse(preds, labels) == 0.0
    assert rmse(preds, ffilled) > 0.0


def test_mean_face_ignores_missing():
    labels = np.array([[1.0] * 30, [3.0] * 30, [np.nan] * 30])
    assert np.allclose(mean_face(labels), 2.0)
