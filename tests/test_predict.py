"""Prediction with a real (tiny) Keras model: model loading, flip averaging, the Kaggle submission."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pandas as pd
import pytest

from fkp.core import predictor
from fkp.core.images import to_model_input
from fkp.core.kaggle_csv import write_id_lookup, write_test
from fkp.core.keypoints import COORD_COLUMNS, SUBMISSION_COLUMNS
from fkp.errors import DataError
from fkp.stages import predict

#: output biases near the image centre, except the eye centres, far outside 0..96 (clipping);
#: mirror consistent (right x = 96 - left x), so flip averaging keeps them outside
_BIAS = np.full(30, 48.0, dtype=np.float32)
_BIAS[0:4] = (150.0, -40.0, -54.0, -40.0)


def _tiny_model() -> keras.Model:
    """Strided conv -> dense: cheap, input dependent and not mirror symmetric."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((96, 96, 1))
    x = keras.layers.Conv2D(2, 8, strides=8)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(30, bias_initializer=keras.initializers.Constant(_BIAS))(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    _tiny_model().save(path)
    return path


@pytest.fixture(scope="module")
def model(keras_file):
    return predictor.load_model(keras_file)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 96, 96), dtype=np.uint8)


def test_model_uri_or_path():
    assert predictor.is_model_uri("models:/facial-keypoints-cnn@champion")
    assert predictor.is_model_uri("runs:/0123abcd/model")
    assert not predictor.is_model_uri("models/model.keras")
    assert not predictor.is_model_uri("/abs/model.keras")
    assert not predictor.is_model_uri("C:/models/model.keras")


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        predictor.load_model(tmp_path / "missing.keras")
    weights = tmp_path / "model.h5"
    weights.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"model\.h5.*\.keras"):
        predictor.load_model(weights)
    with pytest.raises(DataError, match="no MLmodel"):
        predictor.load_model(tmp_path)


def test_predict_keypoints_plain_and_flip_averaged(model):
    images = _images(5)
    x = to_model_input(images)
    plain = predictor.predict_keypoints(model, images, tta_flip=False)
    assert plain.shape == (5, 30) and plain.dtype == np.float32
    np.testing.assert_allclose(plain, model.predict(x, verbose=0), rtol=0, atol=1e-5)

    # flip averaging = mean of the plain prediction and the mirrored image's, mapped back
    mirrored = model.predict(x[:, :, ::-1], verbose=0)
    from fkp.core.augment import flip_keypoints

    expected = (plain + flip_keypoints(mirrored)) / 2
    averaged = predictor.predict_keypoints(model, images, tta_flip=True)
    np.testing.assert_allclose(averaged, expected, rtol=0, atol=1e-4)
    assert np.abs(averaged - plain).max() > 0.01  # the tiny model is not mirror symmetric


def test_predict_keypoints_rejects_bad_images(model):
    with pytest.raises(ValueError, match=r"\(n, 96, 96\)"):
        predictor.predict_keypoints(model, np.zeros((2, 48, 48), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict_keypoints(model, np.zeros((2, 96, 96), dtype=np.float32))
    assert predictor.predict_keypoints(model, np.zeros((0, 96, 96), dtype=np.uint8)).shape == (0, 30)


def _kaggle_inputs(folder, n_images: int = 7):
    """A test.csv and an IdLookupTable asking for a few features of each image, Kaggle style."""
    image_ids = np.arange(1, n_images + 1)
    write_test(folder / "test.csv", image_ids, _images(n_images, seed=1))
    rng = np.random.default_rng(2)
    rows = []
    for image_id in image_ids:
        features = rng.choice(COORD_COLUMNS, size=rng.integers(4, 31), replace=False)
        features = sorted(features, key=COORD_COLUMNS.index)
        rows += [(image_id, feature) for feature in features]
    rows.append((1, COORD_COLUMNS[0]))  # coordinate 0 has bias 150: must be clipped to 96
    rows.append((2, COORD_COLUMNS[1]))  # coordinate 1 has bias -40: must be clipped to 0
    lookup = pd.DataFrame(rows, columns=["ImageId", "FeatureName"])
    lookup.insert(0, "RowId", np.arange(1, len(lookup) + 1))
    lookup["Location"] = np.nan
    write_id_lookup(folder / "IdLookupTable.csv", lookup)
    return lookup


def test_predict_test_writes_kaggle_submission(tmp_path, model, keras_file, caplog, monkeypatch):
    lookup = _kaggle_inputs(tmp_path)
    monkeypatch.setattr(predict, "_PROGRESS_CHUNK", 3)
    with caplog.at_level(logging.INFO, logger="fkp.stages.predict"):
        result = predict.predict_test(
            keras_file, tmp_path / "test.csv", tmp_path / "IdLookupTable.csv", tmp_path / "out"
        )
    assert "predicted 3/7 test images" in caplog.text and "predicted 7/7 test images" in caplog.text
    assert result["n_images"] == 7 and result["n_rows"] == len(lookup)

    submission_text = result["submission_csv"].read_text()
    assert submission_text.splitlines()[0] == ",".join(SUBMISSION_COLUMNS)
    submission = pd.read_csv(result["submission_csv"])
    assert list(submission.columns) == ["RowId", "Location"]
    assert len(submission) == len(lookup)
    assert submission["RowId"].tolist() == lookup["RowId"].tolist()
    assert submission["Location"].between(0, 96).all()

    preds = pd.read_csv(result["predictions_csv"])
    assert list(preds.columns) == ["ImageId", *COORD_COLUMNS]
    assert preds["ImageId"].tolist() == list(range(1, 8))
    expected = predictor.predict_keypoints(model, _images(7, seed=1))
    np.testing.assert_allclose(preds[list(COORD_COLUMNS)].to_numpy(), expected, atol=1e-3)

    # each Location is that image's prediction for that feature, clipped to the image
    by_image = preds.set_index("ImageId")
    want = [by_image.at[i, f] for i, f in zip(lookup["ImageId"], lookup["FeatureName"], strict=True)]
    np.testing.assert_allclose(submission["Location"], np.clip(want, 0, 96), atol=1e-3)
    assert submission["Location"].iloc[-2] == 96.0 and submission["Location"].iloc[-1] == 0.0

    assert result["grid_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [predict.PREDICTIONS_CSV, predict.SUBMISSION_CSV, predict.GRID_PNG]
    )


def test_predict_test_accepts_a_loaded_model_without_flip(tmp_path, model):
    _kaggle_inputs(tmp_path, n_images=3)
    result = predict.predict_test(
        model, tmp_path / "test.csv", tmp_path / "IdLookupTable.csv", tmp_path / "out", tta_flip=False
    )
    preds = pd.read_csv(result["predictions_csv"])[list(COORD_COLUMNS)].to_numpy()
    expected = predictor.predict_keypoints(model, _images(3, seed=1), tta_flip=False)
    np.testing.assert_allclose(preds, expected, atol=1e-3)


def test_lookup_asking_for_unknown_image_fails_before_writing(tmp_path, keras_file):
    lookup = _kaggle_inputs(tmp_path, n_images=3)
    lookup.loc[len(lookup)] = [len(lookup) + 1, 99, COORD_COLUMNS[0], np.nan]
    write_id_lookup(tmp_path / "IdLookupTable.csv", lookup)
    with pytest.raises(DataError, match="ImageId 99"):
        predict.predict_test(
            keras_file, tmp_path / "test.csv", tmp_path / "IdLookupTable.csv", tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def _leaning_keras_model() -> keras.Model:
    """A real Keras model that finds a face by its bright pixels' centroid and answers the mean face
    moved only halfway there: right on a face framed like the training faces, wrong off it."""
    from fkp.core.keypoints import IMAGE_SIZE, KEYPOINT_NAMES, MEAN_KEYPOINTS

    left, right = (KEYPOINT_NAMES.index(n) for n in ("left_eye_center", "right_eye_center"))
    eyes_mid = (MEAN_KEYPOINTS[left] + MEAN_KEYPOINTS[right]) / 2
    grid = np.arange(IMAGE_SIZE, dtype="float32") + 0.5

    def lean(x):
        w = x[..., 0]
        total = keras.ops.sum(w, axis=(1, 2))
        cx = keras.ops.sum(w * grid[None, None, :], axis=(1, 2)) / total
        cy = keras.ops.sum(w * grid[None, :, None], axis=(1, 2)) / total
        shift = keras.ops.stack([cx - eyes_mid[0], cy - eyes_mid[1]], axis=-1) / 2
        return keras.ops.reshape(MEAN_KEYPOINTS[None].astype("float32") + shift[:, None, :], (-1, 30))

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    return keras.Model(inputs, keras.layers.Lambda(lean)(inputs))


def test_predict_keypoints_takes_a_second_look_at_a_face_framed_far_off():
    from fkp.core.keypoints import IMAGE_SIZE, KEYPOINT_NAMES, MEAN_KEYPOINTS

    def eyes_at(dx: float) -> np.ndarray:  # two bright eye blobs of the mean face, moved dx px right
        image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        for name in ("left_eye_center", "right_eye_center"):
            x, y = MEAN_KEYPOINTS[KEYPOINT_NAMES.index(name)]
            image[int(y) - 1 : int(y) + 2, int(x + dx) - 1 : int(x + dx) + 2] = 255
        return image

    model = _leaning_keras_model()
    faces = np.stack([eyes_at(4.0), eyes_at(16.0)])  # inside the limits / beyond them (6 px)
    truth_x = MEAN_KEYPOINTS[:, 0][None] + np.array([[4.0], [16.0]])
    one = predictor.predict_keypoints(model, faces, tta_flip=False, second_look=False)
    two = predictor.predict_keypoints(model, faces, tta_flip=False)  # the default
    np.testing.assert_array_equal(two[0], one[0])  # framed within the training range: left alone
    first_error = np.abs(one[1, 0::2] - truth_x[1]).mean()
    assert first_error > 7  # the model moved only halfway (8 of 16 px)
    assert np.abs(two[1, 0::2] - truth_x[1]).mean() < 0.6 * first_error  # framed again: 4 px off
