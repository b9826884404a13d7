"""Self-training labels: observed labels kept, guesses only where the teacher agrees with its mirror."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fkp.impute import load_target_info, load_targets, run_impute
from fkp.params import ImputeParams, Params
from fkp.pseudo_labels import agreeing_average, fill_missing, pseudo_label
from tests.test_fit import MODEL, TRAIN, synthetic


def test_agreeing_average_keeps_keypoints_whose_two_guesses_are_close():
    plain = np.full((1, 30), 50.0, dtype=np.float32)
    mirrored = plain.copy()
    mirrored[0, 0] += 0.6  # keypoint 0: 0.6 px apart -> accepted, averaged
    mirrored[0, 2:4] += 3.0  # keypoint 1: 4.2 px apart -> refused
    out = agreeing_average(plain, mirrored, max_disagreement=1.0)
    assert out[0, 0] == pytest.approx(50.3) and out[0, 1] == 50.0
    assert np.isnan(out[0, 2:4]).all()
    assert np.isfinite(out[0, 4:]).all()


def test_fill_missing_never_replaces_an_observed_label():
    observed = np.array([[1.0, np.nan, 3.0, np.nan]], dtype=np.float32)
    guesses = np.array([[9.0, 9.0, np.nan, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(fill_missing(observed, guesses), [[1.0, 9.0, 3.0, np.nan]])


@pytest.mark.slow
def test_pseudo_label_fills_training_rows_only_and_keeps_their_labels():
    images, keypoints = synthetic(64, 0)
    train_rows, val_rows = np.arange(48), np.arange(48, 64)
    impute = ImputeParams(strategy="pseudo", teacher_epochs=1, max_disagreement=1e6)
    labels = pseudo_label(images, keypoints, train_rows, val_rows, impute, MODEL, TRAIN, verbose=False)
    assert set(labels.rows) <= set(train_rows)
    observed = keypoints[labels.rows]
    known = np.isfinite(observed)
    np.testing.assert_array_equal(labels.targets[known], observed[known])
    # accepting every guess fills every missing coordinate
    assert np.isfinite(labels.targets).all() and labels.filled == (~known).sum() and labels.rejected == 0
    strict = pseudo_label(
        images,
        keypoints,
        train_rows,
        val_rows,
        dataclasses.replace(impute, max_disagreement=0.0),
        MODEL,
        TRAIN,
        verbose=False,
    )
    assert strict.filled == 0 and np.array_equal(np.isfinite(strict.targets), known)


@pytest.mark.slow
def test_impute_stage_records_what_the_teacher_did(tmp_path):
    from fkp.kaggle_csv import TrainingSet
    from fkp.prepare import SPLIT_JSON, TRAIN_NPZ, save_train
    from fkp.split import make_split, save_split

    images, keypoints = synthetic(40, 3)
    save_train(tmp_path / TRAIN_NPZ, TrainingSet(images, keypoints))
    save_split(make_split(len(images), 0.25, 0, None), tmp_path / SPLIT_JSON)
    params = Params(impute=ImputeParams(strategy="pseudo", teacher_epochs=1), model=MODEL, train=TRAIN)
    out = run_impute(tmp_path, tmp_path / "targets.npz", params)
    rows, targets, strategy = load_targets(out)
    info = load_target_info(out)
    assert strategy == "pseudo" and len(rows) == len(targets)
    assert set(info) == {"teacher_val_rmse", "pseudo_filled", "pseudo_rejected", "teacher_seconds"}
    assert info["pseudo_filled"] + info["pseudo_rejected"] == int(np.isnan(keypoints[rows]).sum())
