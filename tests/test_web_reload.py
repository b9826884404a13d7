"""``fkp serve`` follows the ``champion`` alias: a real SQLite MLflow registry, a live server.

Two versions of a quickly trained model are registered (the second with shifted output
biases, so their answers differ); the alias moves from one to the other while a client keeps
sending photos. Every request must succeed, each answer must be exactly the prediction of
the version it names, and the versions must only ever go forward.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.web_support import get_json, post, running_server, train_tiny_model

ROOT = Path(__file__).resolve().parents[1]
NAME = "facial-keypoints-cnn-web"
SWAP_TIMEOUT = 180  # seconds the server may take to notice and load (a bound, not a speed check)


def _shifted_copy(src: Path, dest: Path, delta: float) -> Path:
    """The same model with ``delta`` added to its last biases: a visibly different version."""
    from fkp.core.predictor import load_model

    model = load_model(src)
    layer = next(x for x in reversed(model.layers) if getattr(x, "bias", None) is not None)
    layer.bias.assign(layer.bias.numpy() + delta)
    model.save(dest)
    return dest


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """Versions 1 and 2 of the model in a temporary registry; ``champion`` on version 1."""
    from fkp.serving.pyfunc import log_keypoint_model

    root = tmp_path_factory.mktemp("registry")
    model_dir = tmp_path_factory.getbasetemp() / "web-model"
    # the dense head: a shift of its output bias moves every keypoint (a soft-argmax head ignores one)
    first = model_dir / "tiny-dense.keras"
    if not first.is_file():
        from fkp.params import ModelParams

        train_tiny_model(first, model=ModelParams(head="dense"))
    second = _shifted_copy(first, root / "shifted.keras", 4.0)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment("web", artifact_location=(root / "artifacts").as_uri())
    versions = {}
    for path in (first, second):
        with mlflow.start_run(experiment_id=experiment):
            info = log_keypoint_model(path, tta_flip=False)
        versions[mlflow.register_model(info.model_uri, NAME).version] = path
    client.set_registered_model_alias(NAME, "champion", "1")
    yield {"uri": uri, "client": client, "versions": versions, "root": root}
    mlflow.set_tracking_uri(previous)


def test_moving_the_alias_swaps_the_model_without_a_failed_request(registry):
    from fkp.core.predictor import load_model, predict_keypoints
    from fkp.synthetic.sample import generate_sample

    face = generate_sample(2, 1, 8, workers=1).train_images[0]
    png = cv2.imencode(".png", face)[1].tobytes()
    expected = {
        str(v): predict_keypoints(load_model(p), face[None], tta_flip=False)[0].reshape(15, 2)
        for v, p in registry["versions"].items()
    }
    assert np.abs(expected["1"] - expected["2"]).max() > 1.0

    env = {"MLFLOW_TRACKING_URI": registry["uri"]}
    args = ["--model", f"models:/{NAME}@champion", "--poll", "0.5"]
    with running_server(args, registry["root"] / "serve.log", env=env, cwd=ROOT) as server:
        assert get_json(f"{server.url}/healthz")["model"]["version"] == "1"
        answers: list[tuple[int, dict]] = []
        stop = threading.Event()

        def client() -> None:  # a steady stream of photos across the swap
            while not stop.is_set():
                answers.append(post(f"{server.url}/v1/keypoints", png, "image/png"))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            time.sleep(1.0)
            registry["client"].set_registered_model_alias(NAME, "champion", "2")
            deadline = time.monotonic() + SWAP_TIMEOUT
            while get_json(f"{server.url}/healthz")["model"]["version"] != "2":
                assert time.monotonic() < deadline, (
                    f"the server never moved to version 2:\n{server.log_text()}"
                )
                time.sleep(0.2)
            served_after = len(answers)
            while len(answers) < served_after + 5:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=120)

        statuses = [status for status, _ in answers]
        assert statuses.count(200) == len(answers), [a for a in answers if a[0] != 200][:3]
        versions = [answer["model"]["version"] for _, answer in answers]
        assert versions.count("1") >= 3 and versions.count("2") >= 5 and versions[0] == "1"
        assert versions == sorted(versions), "a request went back to the old version"
        for _, answer in answers:  # each answer is the prediction of the version it names
            got = np.array(list(answer["faces"][0]["keypoints"].values()))
            np.testing.assert_allclose(got, expected[answer["model"]["version"]], atol=0.01)
        assert answer["model"]["uri"] == f"models:/{NAME}/2"

        import urllib.request

        with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
            text = response.read().decode()
        assert "fkp_model_reloads_total 1.0" in text
        assert f'fkp_model_info{{ref="models:/{NAME}@champion",version="2"}} 1.0' in text
        assert 'version="1"' not in text
        assert "now serving version 2 (was 1)" in server.log_text()


def test_a_champion_that_cannot_be_loaded_leaves_the_served_one_in_place(registry, caplog):
    from fkp.serving.web.model import ModelHolder, load

    client = registry["client"]
    client.set_registered_model_alias(NAME, "champion", "1")
    holder = ModelHolder(load(f"models:/{NAME}@champion", tta_flip=False))
    swaps = []
    holder.on_swap = lambda old, new: swaps.append((old.version, new.version))
    assert holder.refresh() is False and holder.current.version == "1"  # alias unchanged: nothing to do

    broken = client.create_model_version(NAME, (registry["root"] / "missing-model").as_uri())
    client.set_registered_model_alias(NAME, "champion", broken.version)
    with caplog.at_level("WARNING", logger="fkp.serving.web.model"):
        assert holder.refresh() is False
    assert holder.current.version == "1" and not swaps
    assert "still serving version 1" in caplog.text

    client.set_registered_model_alias(NAME, "champion", "2")
    assert holder.refresh() is True
    assert holder.current.version == "2" and swaps == [("1", "2")]
