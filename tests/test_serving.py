"""The servable pyfunc: logged to a real SQLite MLflow store, registered, loaded by alias, served."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import stop_group
from mlflow import MlflowClient

from fkp.core import predictor
from fkp.core.images import format_images, to_model_input
from fkp.core.keypoints import COORD_COLUMNS
from fkp.core.models import predict_with_flip
from fkp.errors import DataError
from fkp.serving import pyfunc as serving

MODEL_NAME = "facial-keypoints-cnn-test"


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((96, 96, 1))
    x = keras.layers.Conv2D(2, 8, strides=8)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(30, bias_initializer=keras.initializers.Constant(48.0))(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A SQLite tracking + registry store with its artifacts, all under a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient().create_experiment(
        "serving", artifact_location=(root / "artifacts").as_uri()
    )
    yield {"uri": uri, "experiment_id": experiment_id}
    mlflow.set_tracking_uri(previous)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 96, 96), dtype=np.uint8)


@pytest.fixture(scope="module")
def champion(store, keras_model):
    """Log the tiny model, register it and point the ``champion`` alias at it."""
    _, path = keras_model
    with mlflow.start_run(experiment_id=store["experiment_id"]):
        info = serving.log_keypoint_model(path, input_example_images=_images(3, seed=9))
    version = mlflow.register_model(info.model_uri, MODEL_NAME)
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version.version)
    return {"info": info, "uri": f"models:/{MODEL_NAME}@champion"}


def test_champion_predicts_like_the_keras_model(champion, keras_model):
    model, _ = keras_model
    images = _images(6)
    request = pd.DataFrame({"Image": format_images(images)})
    pyfunc = mlflow.pyfunc.load_model(champion["uri"])

    out = pyfunc.predict(request)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(COORD_COLUMNS) and out.shape == (6, 30)
    x = to_model_input(images)
    np.testing.assert_allclose(out.to_numpy(), predict_with_flip(model, x), rtol=0, atol=1e-4)

    plain = pyfunc.predict(request, params={"tta_flip": False})
    np.testing.assert_allclose(plain.to_numpy(), model.predict(x, verbose=0), rtol=0, atol=1e-4)
    assert np.abs(plain.to_numpy() - out.to_numpy()).max() > 0.01


def test_logged_model_is_self_describing(champion):
    info = champion["info"]
    # the serving defaults travel with the model's code; as run params they read as training settings
    assert MlflowClient().get_run(info.run_id).data.params == {}
    signature = info.signature
    assert signature.inputs.input_names() == ["Image"]
    assert signature.outputs.input_names() == list(COORD_COLUMNS)
    assert [p.name for p in signature.params] == ["tta_flip"]

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion["uri"]))
    assert (local / "code" / "fkp" / "serving" / "pyfunc.py").is_file()  # the code travels with the model
    assert (local / "pyfunc_model.py").is_file()  # the model is logged as code (models-from-code) ...
    assert not list(local.rglob("*.pkl"))  # ... and nothing is unpickled when it is loaded
    assert not list((local / "code").rglob("__pycache__"))
    assert predictor.keras_file_in_model_dir(local).name == "model.keras"
    requirements = (local / "requirements.txt").read_text().splitlines()
    assert f"keras=={keras.__version__}" in requirements
    assert f"mlflow=={mlflow.__version__}" in requirements
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["Image"]
    assert len(example["dataframe_split"]["data"]) == 2


def test_load_model_by_uri_gives_the_same_weights(champion, keras_model):
    model, _ = keras_model
    loaded = predictor.load_model(champion["uri"])
    x = to_model_input(_images(3, seed=4))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_array_inputs_give_the_same_answer(champion):
    python_model = mlflow.pyfunc.load_model(champion["uri"]).unwrap_python_model()
    images = _images(4, seed=5)
    by_strings = python_model.predict(None, pd.DataFrame({"Image": format_images(images)}))
    by_uint8 = python_model.predict(None, images)
    by_float = python_model.predict(None, images[..., None].astype(np.float32) / 255.0)
    np.testing.assert_allclose(by_uint8.to_numpy(), by_strings.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(by_float.to_numpy(), by_strings.to_numpy(), atol=1e-4)

    with pytest.raises(serving.RequestError, match="0..1"):
        python_model.predict(None, images.astype(np.float32))  # 0..255 floats: ambiguous, refused
    with pytest.raises(serving.RequestError, match=r"\(n, 96, 96\)"):
        python_model.predict(None, np.zeros((2, 64, 64), np.uint8))
    bad = pd.DataFrame({"Image": [format_images(images[:1])[0], "1 2 3"]})
    with pytest.raises(serving.RequestError, match=r"row 2.*'Image'.*3 pixel values") as caught:
        python_model.predict(None, bad)
    assert caught.value.get_http_status_code() == 400


def test_parse_errors_stay_data_errors_outside_serving():
    with pytest.raises(DataError, match=r"row 1.*'Image'.*3 pixel values"):
        serving.images_from_input(pd.DataFrame({"Image": ["1 2 3"]}))


def test_logging_needs_an_active_run(keras_model, store):
    _, path = keras_model
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="active MLflow run"):
        serving.log_keypoint_model(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post_error(url: str, payload: dict) -> tuple[int, dict]:
    """POST a request the server must refuse; its status and JSON body."""
    try:
        _post(url, payload)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    pytest.fail("the server accepted a bad request")


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(champion, store, keras_model, tmp_path):
    """``mlflow models serve --env-manager local`` on the champion, queried over loopback HTTP."""
    model, _ = keras_model
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store["uri"],
        serving.MAX_BATCH_ENV: "4",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    command = [f"{bin_dir}/mlflow", "models", "serve", "-m", champion["uri"], "--env-manager", "local"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server's workers stop with it
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240  # a bound on waiting, not an assertion on speed
        while True:
            if server.poll() is not None:
                pytest.fail(f"server exited ({server.returncode}):\n{(tmp_path / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server never answered /ping:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)

        images = _images(3, seed=7)
        frame = {"columns": ["Image"], "data": [[s] for s in format_images(images)]}
        answer = _post(f"{base}/invocations", {"dataframe_split": frame})
        rows = answer["predictions"]
        assert len(rows) == 3 and list(rows[0]) == list(COORD_COLUMNS)
        got = np.array([[row[c] for c in COORD_COLUMNS] for row in rows])
        np.testing.assert_allclose(got, predict_with_flip(model, to_model_input(images)), atol=1e-4)

        answer = _post(f"{base}/invocations", {"dataframe_split": frame, "params": {"tta_flip": False}})
        got = np.array([[row[c] for c in COORD_COLUMNS] for row in answer["predictions"]])
        np.testing.assert_allclose(got, model.predict(to_model_input(images), verbose=0), atol=1e-4)

        # bad requests: 400, one line naming what is wrong, no stack trace, paths or echo of the data
        short = {"columns": ["Image"], "data": [[s] for s in format_images(images[:1])] + [["1 2 3"]]}
        extra = {"columns": ["Image", "Id"], "data": [[s, 1] for s in format_images(images[:1])]}
        cases = [
            ({"dataframe_split": short}, r"^request, row 2 \(line 3\), column 'Image': .*3 pixel values"),
            ({"dataframe_split": extra}, r"^unknown column\(s\) \['Id'\]"),
            ({"dataframe_split": frame, "params": {"flip": 1}}, r"^unknown param\(s\) \['flip'\]"),
            ({"dataframe_split": {"columns": ["X"], "data": [["a"]]}}, r"^unknown column\(s\) \['X'\]"),
            ({"dataframe_split": {"columns": [], "data": []}}, r"^input needs an 'Image' column"),
            ({"dataframe_records": [{"image": "1 2"}]}, r"^unknown column\(s\) \['image'\]"),
            (
                {"dataframe_split": {**frame, "data": frame["data"] * 2}},
                r"^6 rows in one request, above .* 4",
            ),
        ]
        for payload, expected in cases:
            status, body = _post_error(f"{base}/invocations", payload)
            assert status == 400, (payload.keys(), body)
            assert set(body) >= {"error_code", "message"} and "stack_trace" not in body
            assert body["error_code"] == "INVALID_PARAMETER_VALUE"
            assert re.search(expected, body["message"]), body["message"]
            assert "\n" not in body["message"] and "/" not in body["message"]
    finally:
        stop_group(server, timeout=30)
        log.close()
