"""The synthetic sample: exact Kaggle layout, Kaggle's label semantics and patterns, determinism."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from fkp.core.groups import read_groups, write_groups
from fkp.core.kaggle_csv import read_id_lookup, read_test, read_training
from fkp.core.keypoints import (
    COORD_COLUMNS,
    CORE_KEYPOINTS,
    ID_LOOKUP_COLUMNS,
    KEYPOINT_NAMES,
    N_PIXELS,
    TEST_COLUMNS,
    TRAINING_COLUMNS,
)
from fkp.errors import DataError
from fkp.synthetic.face_model import sample_person, sample_view
from fkp.synthetic.face_render import render_face
from fkp.synthetic.sample import (
    DEFAULT_SIZE,
    FULL_SIZE,
    generate_sample,
    id_lookup_table,
    kaggle_label_mask,
    kaggle_row_order,
    write_sample,
)

N_TRAIN, N_TEST = 60, 12
CORE = np.array([name in CORE_KEYPOINTS for name in KEYPOINT_NAMES])


@pytest.fixture(scope="module")
def data():
    return generate_sample(N_TRAIN, N_TEST, seed=3)


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample(out, data)


def col(name: str) -> int:
    return COORD_COLUMNS.index(name)


def test_sizes():
    assert FULL_SIZE == (7049, 1783)
    assert DEFAULT_SIZE == (1200, 200)


def test_arrays(data):
    assert data.train_images.shape == (N_TRAIN, 96, 96) and data.train_images.dtype == np.uint8
    assert data.train_keypoints.shape == (N_TRAIN, 30) and data.train_keypoints.dtype == np.float32
    assert data.train_groups.shape == (N_TRAIN,) and data.train_groups.dtype == np.int64
    assert data.test_images.shape == (N_TEST, 96, 96) and data.test_images.dtype == np.uint8
    np.testing.assert_array_equal(data.test_image_ids, np.arange(1, N_TEST + 1))
    assert list(data.id_lookup.columns) == list(ID_LOOKUP_COLUMNS)
    labelled = data.train_keypoints[~np.isnan(data.train_keypoints)]
    assert labelled.min() >= 0 and labelled.max() <= 96
    assert data.train_images.std() > 20  # real pictures, not a flat fill


def test_files_and_columns(written):
    out, paths = written
    names = ["training.csv", "test.csv", "IdLookupTable.csv", "SampleSubmission.csv", "groups.csv"]
    assert [p.name for p in paths] == names
    headers = {}
    for path in paths:
        with path.open(newline="") as f:
            headers[path.name] = next(csv.reader(f))
    assert headers["training.csv"] == list(TRAINING_COLUMNS)
    assert headers["test.csv"] == list(TEST_COLUMNS)
    assert headers["IdLookupTable.csv"] == list(ID_LOOKUP_COLUMNS)
    assert headers["SampleSubmission.csv"] == ["RowId", "Location"]
    assert headers["groups.csv"] == ["row", "group"]
    assert not list(out.glob(".*")), "no temporary files left behind"


def test_training_csv_fields(written, data):
    out, _ = written
    with (out / "training.csv").open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == N_TRAIN
    for row, expected in zip(rows, data.train_keypoints, strict=True):
        assert len(row) == 31
        coords = row[:30]
        assert [c == "" for c in coords] == list(np.isnan(expected)), "missing label = empty field"
        assert all(0 <= float(c) <= 96 for c in coords if c)
        pixels = row[30].split(" ")
        assert len(pixels) == N_PIXELS
        assert all(p.isdigit() and 0 <= int(p) <= 255 for p in pixels)


def test_sample_submission(written, data):
    out, _ = written
    lines = (out / "SampleSubmission.csv").read_text().splitlines()
    assert len(lines) == len(data.id_lookup) + 1
    assert lines[1] == "1,0" and all(line.endswith(",0") for line in lines[1:])


def test_read_back_equals_arrays(written, data):
    out, _ = written
    train = read_training(out / "training.csv")
    np.testing.assert_array_equal(train.images, data.train_images)
    np.testing.assert_allclose(train.keypoints, data.train_keypoints, rtol=0, atol=1e-4)
    test = read_test(out / "test.csv")
    np.testing.assert_array_equal(test.image_ids, data.test_image_ids)
    np.testing.assert_array_equal(test.images, data.test_images)
    lookup = read_id_lookup(out / "IdLookupTable.csv")
    for name in ("RowId", "ImageId", "FeatureName"):
        assert lookup[name].tolist() == data.id_lookup[name].tolist()
    assert lookup["Location"].isna().all()
    np.testing.assert_array_equal(read_groups(out / "groups.csv", N_TRAIN), data.train_groups)


def test_deterministic_bytes(tmp_path):
    a = write_sample(tmp_path / "a", generate_sample(12, 4, seed=1))
    b = write_sample(tmp_path / "b", generate_sample(12, 4, seed=1))
    c = write_sample(tmp_path / "c", generate_sample(12, 4, seed=2))
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    assert a[0].read_bytes() != c[0].read_bytes()
    assert a[1].read_bytes() != c[1].read_bytes()


def test_kaggle_left_is_image_right(data):
    kp = data.train_keypoints
    for left, right in [
        ("left_eye_center_x", "right_eye_center_x"),
        ("left_eye_inner_corner_x", "right_eye_inner_corner_x"),
        ("left_eyebrow_outer_end_x", "right_eyebrow_outer_end_x"),
        ("mouth_left_corner_x", "mouth_right_corner_x"),
    ]:
        both = ~np.isnan(kp[:, col(left)]) & ~np.isnan(kp[:, col(right)])
        assert both.sum() >= 10
        assert np.all(kp[both, col(left)] > kp[both, col(right)]), left
    assert 60 < np.nanmean(kp[:, col("left_eye_center_x")]) < 70
    assert 26 < np.nanmean(kp[:, col("right_eye_center_x")]) < 36
    # outer eye corner further from the face centre than the inner one
    assert np.nanmean(kp[:, col("left_eye_outer_corner_x")]) > np.nanmean(
        kp[:, col("left_eye_inner_corner_x")]
    )
    # top to bottom: brows, eyes, nose, mouth
    ys = [
        np.nanmean(kp[:, col(f"{name}_y")])
        for name in (
            "left_eyebrow_inner_end",
            "left_eye_center",
            "nose_tip",
            "mouth_center_top_lip",
            "mouth_center_bottom_lip",
        )
    ]
    assert ys == sorted(ys)


def test_labels_sit_on_drawn_features():
    """Pupils are dark and the cheek below them is bright: labels follow the drawing, not a template."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        person = dataclasses.replace(
            sample_person(rng), skin=190.0, iris_tone=25.0, glasses=False, hair_style="none"
        )
        view = dataclasses.replace(sample_view(rng, person), noise=0.0, blur=0.0, light=0.0, contrast=1.0)
        image, kp = render_face(person, view, rng)
        for name in ("left_eye_center", "right_eye_center"):
            x, y = kp[col(f"{name}_x")], kp[col(f"{name}_y")]
            pupil = image[round(y), round(x)]
            cheek = image[round(y) + 7, round(x)]
            assert pupil < 30 and cheek > 120, (name, pupil, cheek)


def test_label_mask_fractions():
    n = 7049
    rng = np.random.default_rng(0)
    _, lead = kaggle_row_order(n, rng)
    present = kaggle_label_mask(n, lead, rng)
    complete = present.all(axis=1)
    assert abs(complete.mean() - 0.30) < 0.01
    assert complete[:lead].mean() > 0.9 and not complete[lead:].any(), "complete rows come first"
    rest = present[lead:]
    assert not rest[:, ~CORE].any(), "later rows carry only the four core keypoints"
    missing_core = ~rest[:, CORE].all(axis=1)
    assert 0.005 < missing_core.mean() < 0.03
    assert (~rest[:, CORE]).sum(axis=1).max() == 1
    assert present[:, KEYPOINT_NAMES.index("nose_tip")].all()


def test_missing_pattern_in_generated_data():
    kp = generate_sample(200, 2, seed=5).train_keypoints
    complete = ~np.isnan(kp).any(axis=1)
    assert abs(complete.mean() - 0.30) < 0.02
    last_complete = int(np.flatnonzero(complete)[-1])
    assert last_complete < 0.33 * len(kp), "complete rows lead, as in Kaggle's training.csv"
    assert complete[:last_complete].mean() > 0.9
    assert np.isnan(kp[:, np.repeat(~CORE, 2)]).mean() > 0.6
    assert (~np.isnan(kp[:, np.repeat(CORE, 2)])).mean() > 0.97


def test_several_frames_per_person(data):
    counts = np.bincount(data.train_groups)
    counts = counts[counts > 0]
    assert len(counts) >= 4
    assert np.median(counts) >= 4


def test_id_lookup_pattern_like_kaggle():
    lookup = id_lookup_table(1783, np.random.default_rng(0))
    per_image = lookup.groupby("ImageId").size()
    np.testing.assert_array_equal(per_image.index, np.arange(1, 1784))
    assert (per_image.loc[:591] > 8).all() and (per_image.loc[592:] <= 8).all()
    assert 540 < (per_image == 30).sum() < 570 and 1150 < (per_image == 8).sum() < 1200
    np.testing.assert_array_equal(lookup["RowId"], np.arange(1, len(lookup) + 1))
    assert set(lookup["FeatureName"]) <= set(COORD_COLUMNS)
    first = lookup[lookup["ImageId"] == 1]["FeatureName"].tolist()
    assert first == list(COORD_COLUMNS)
    assert 26_000 < len(lookup) < 28_500  # Kaggle's has 27,124 rows


def test_groups_roundtrip_and_errors(tmp_path):
    path = tmp_path / "groups.csv"
    write_groups(path, np.array([3, 3, 1]))
    assert path.read_text() == "row,group\n0,3\n1,3\n2,1\n"
    np.testing.assert_array_equal(read_groups(path), [3, 3, 1])
    with pytest.raises(DataError, match="training.csv has 4"):
        read_groups(path, n_rows=4)
    path.write_text("row,group\n0,3\n2,3\n")
    with pytest.raises(DataError, match=r"row 2 .*'row'"):
        read_groups(path)
    path.write_text("row,group\n0,3\n1,x\n")
    with pytest.raises(DataError, match=r"row 2 .*'group'"):
        read_groups(path)
    with pytest.raises(DataError, match="not found"):
        read_groups(tmp_path / "none.csv")


def test_worker_processes_do_not_change_the_result():
    one = generate_sample(10, 3, seed=4, workers=1)
    two = generate_sample(10, 3, seed=4, workers=2)
    np.testing.assert_array_equal(one.train_images, two.train_images)
    np.testing.assert_array_equal(one.train_keypoints, two.train_keypoints)
    np.testing.assert_array_equal(one.test_images, two.test_images)
