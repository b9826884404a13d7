"""Kaggle CSV files: layout, round trips, located errors, atomic writes, submissions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fkp.atomic import atomic_path
from fkp.core.kaggle_csv import (
    read_id_lookup,
    read_test,
    read_training,
    submission_from_predictions,
    write_test,
    write_training,
)
from fkp.core.keypoints import COORD_COLUMNS, TRAINING_COLUMNS, flip_permutation
from fkp.errors import DataError


def _training(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 96, 96), dtype=np.uint8)
    keypoints = rng.uniform(10, 86, size=(n, 30)).astype(np.float32)
    keypoints[2:, 4:20] = np.nan  # partial rows, as in Kaggle
    return images, keypoints


def test_training_round_trip_and_layout(tmp_path):
    images, keypoints = _training()
    path = tmp_path / "training.csv"
    write_training(path, images, keypoints)
    header = path.read_text().splitlines()[0].split(",")
    assert tuple(header) == TRAINING_COLUMNS
    assert path.read_text().splitlines()[3].count(",,") > 0  # missing labels are empty fields
    back = read_training(path)
    assert np.array_equal(back.images, images)
    np.testing.assert_allclose(back.keypoints, keypoints, rtol=0, atol=1e-4)
    assert np.array_equal(np.isnan(back.keypoints), np.isnan(keypoints))


def test_missing_column_is_named(tmp_path):
    images, keypoints = _training()
    path = tmp_path / "training.csv"
    write_training(path, images, keypoints)
    df = pd.read_csv(path).rename(columns={"nose_tip_x": "nose_x"})
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"training.csv: missing column\(s\) \['nose_tip_x'\].*'nose_x'"):
        read_training(path)


def test_non_numeric_keypoint_is_located(tmp_path):
    images, keypoints = _training()
    path = tmp_path / "training.csv"
    write_training(path, images, keypoints)
    df = pd.read_csv(path, dtype=str)
    df.loc[4, "mouth_center_bottom_lip_y"] = "eighty"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 5 \(line 6\), column 'mouth_center_bottom_lip_y'"):
        read_training(path)


def test_bad_pixel_row_is_located_in_the_file(tmp_path):
    images, keypoints = _training()
    path = tmp_path / "training.csv"
    write_training(path, images, keypoints)
    lines = path.read_text().splitlines()
    lines[3] = lines[3] + " 17"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"training.csv, row 3 \(line 4\), column 'Image': 9217"):
        read_training(path)


def test_failed_write_keeps_previous_file(tmp_path):
    images, keypoints = _training()
    path = tmp_path / "training.csv"
    write_training(path, images, keypoints)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("crash while writing")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training.csv"]


def test_submission_maps_lookup_rows_and_clips(tmp_path):
    ids = np.array([1, 2, 3])
    images = np.zeros((3, 96, 96), dtype=np.uint8)
    write_test(tmp_path / "test.csv", ids, images)
    test = read_test(tmp_path / "test.csv")
    assert list(test.image_ids) == [1, 2, 3]
    lookup = pd.DataFrame(
        {
            "RowId": [1, 2, 3],
            "ImageId": [2, 2, 3],
            "FeatureName": ["left_eye_center_x", "nose_tip_y", "mouth_center_bottom_lip_y"],
            "Location": [np.nan] * 3,
        }
    )
    lookup.to_csv(tmp_path / "IdLookupTable.csv", index=False)
    lookup = read_id_lookup(tmp_path / "IdLookupTable.csv")
    preds = np.tile(np.arange(30, dtype=np.float32), (3, 1))
    preds[2, COORD_COLUMNS.index("mouth_center_bottom_lip_y")] = 120.0
    sub = submission_from_predictions(lookup, test.image_ids, preds)
    assert list(sub.columns) == ["RowId", "Location"]
    assert sub["Location"].tolist() == [0.0, COORD_COLUMNS.index("nose_tip_y"), 96.0]


def test_flip_permutation_swaps_left_and_right():
    perm = flip_permutation()
    col = COORD_COLUMNS.index
    assert perm[col("left_eye_center_x")] == col("right_eye_center_x")
    assert perm[col("mouth_left_corner_y")] == col("mouth_right_corner_y")
    assert perm[col("nose_tip_x")] == col("nose_tip_x")
    assert np.array_equal(perm[perm], np.arange(30))
