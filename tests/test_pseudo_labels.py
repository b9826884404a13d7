"""Self-training labels: observed labels kept, guesses only where the teacher agrees with its mirror."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fkp.core.pseudo_labels import agreeing_average, fill_missing, pseudo_label, teach
from fkp.params import ImputeParams, Params
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
def test_pseudo_label_fills_only_what_is_missing_and_keeps_the_labels():
    images, keypoints = synthetic(64, 0)
    x_train, observed, x_val, y_val = images[:48], keypoints[:48], images[48:], keypoints[48:]
    impute = ImputeParams(strategy="pseudo", teacher_epochs=1, max_disagreement=1e6)
    labels = pseudo_label(x_train, observed, x_val, y_val, impute, MODEL, TRAIN, verbose=False)
    known = np.isfinite(observed)
    np.testing.assert_array_equal(labels.targets[known], observed[known])
    # accepting every guess fills every missing coordinate
    assert np.isfinite(labels.targets).all() and labels.filled == (~known).sum() and labels.rejected == 0
    strict = dataclasses.replace(impute, max_disagreement=0.0)
    refused = pseudo_label(x_train, observed, x_val, y_val, strict, MODEL, TRAIN, verbose=False)
    assert refused.filled == 0 and np.array_equal(np.isfinite(refused.targets), known)


@pytest.mark.slow
def test_teach_pseudo_labels_only_under_pseudo_and_reports_the_teacher():
    images, keypoints = synthetic(40, 3)
    args = (images[:30], keypoints[:30], images[30:], keypoints[30:])
    same, nothing = teach(*args, Params(impute=ImputeParams(strategy="mask"), model=MODEL, train=TRAIN))
    assert same is args[1] and nothing == {}
    params = Params(impute=ImputeParams(strategy="pseudo", teacher_epochs=1), model=MODEL, train=TRAIN)
    targets, info = teach(*args, params, verbose=False)
    assert set(info) == {
        "impute.teacher_val_rmse",
        "impute.pseudo_filled",
        "impute.pseudo_rejected",
        "impute.teacher_seconds",
    }
    assert info["impute.pseudo_filled"] + info["impute.pseudo_rejected"] == int(
        np.isnan(keypoints[:30]).sum()
    )
    assert np.isfinite(targets).sum() == np.isfinite(keypoints[:30]).sum() + info["impute.pseudo_filled"]
