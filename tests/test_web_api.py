"""The photo API of ``fkp serve``: a real uvicorn server on a free port, real JPEG/PNG photos.

The model is the default architecture trained for two epochs on a tiny synthetic sample;
the tests check that the server's answer is that model's prediction on the face it cut
out, mapped back into the photo, and that every bad upload gets a one-line JSON refusal.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fkp.core.keypoints import KEYPOINT_NAMES
from fkp.serving.photos import FaceCrop, decode_for_detection, extract_crop, to_gray
from tests.web_support import (
    drawn_photo,
    free_port,
    get_json,
    post,
    running_server,
    synthetic_photos,
    train_tiny_model,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_BODY_MB = 2
MAX_MEGAPIXELS = 5
BODY_TIMEOUT_S = 2


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained once per test session (the browser test reuses the file)."""
    path = tmp_path_factory.getbasetemp() / "web-model" / "tiny.keras"
    return path if path.is_file() else train_tiny_model(path)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["--model", str(tiny_model), "--max-body-mb", str(MAX_BODY_MB)]
    args += ["--max-megapixels", str(MAX_MEGAPIXELS), "--max-faces", "4", "--poll", "0"]
    args += ["--body-timeout", str(BODY_TIMEOUT_S)]
    with running_server(args, log, cwd=ROOT) as live:
        yield live


@pytest.fixture(scope="module")
def keras_model(tiny_model):
    from fkp.core.predictor import load_model

    return load_model(tiny_model)


def _expected(keras_model, photo_bytes: bytes, crop_box: dict) -> np.ndarray:
    """What the model says for the square the server cut out, in photo pixels (15, 2)."""
    from fkp.core.predictor import predict_keypoints

    decoded = decode_for_detection(photo_bytes)  # a 640x480 photo: decoded once, at full size
    crop = FaceCrop(crop_box["x"], crop_box["y"], crop_box["size"], crop_box["angle"])
    raw = predict_keypoints(keras_model, extract_crop(to_gray(decoded.pixels), crop)[None], tta_flip=False)[0]
    return crop.to_photo(raw).reshape(15, 2)


def _points(face: dict) -> np.ndarray:
    assert list(face["keypoints"]) == list(KEYPOINT_NAMES)
    return np.array(list(face["keypoints"].values()), dtype=np.float64)


def _multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_photo_answer_is_the_models_prediction_mapped_into_the_photo(server, keras_model, tiny_model):
    for photo in synthetic_photos(3):
        status, answer = post(f"{server.url}/v1/keypoints", photo.data)
        assert status == 200, answer
        assert answer["input"] == "photo"
        assert answer["image"] == {"format": "JPEG", "width": 640, "height": 480}
        assert answer["model"]["uri"] == tiny_model.name and answer["model"]["version"].startswith("file:")
        assert set(answer["timing_ms"]) == {"decode", "detect", "predict", "total"}
        [face] = answer["faces"]
        got = _points(face)
        # crop_box and keypoints are rounded to 0.01 (px and deg): 0.005 deg turns a point ~200 px
        # from the corner by 0.017 px, plus 0.005 px for the corner and for the answer's rounding
        np.testing.assert_allclose(got, _expected(keras_model, photo.data, face["crop_box"]), atol=0.03)
        # the face the server framed holds the true keypoints of the rendered face
        box, crop = face["face_box"], face["crop_box"]
        truth = photo.keypoints
        in_crop = FaceCrop(crop["x"], crop["y"], crop["size"], crop["angle"]).to_crop(truth)
        assert (in_crop > 0).all() and (in_crop < 96).all()
        centre = np.array([box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
        assert np.linalg.norm(centre - truth.mean(axis=0)) < 0.15 * box["width"]


def test_multipart_png_and_raw_jpeg_bodies_agree(server):
    photo = drawn_photo((560, 420), [((300, 200), 220)], fmt=".png")
    status, raw = post(f"{server.url}/v1/keypoints", photo.data, "image/png")
    assert status == 200, raw
    body, content_type = _multipart("photo", "face.png", photo.data, "image/png")
    status, form = post(f"{server.url}/v1/keypoints", body, content_type)
    assert status == 200, form
    assert form["faces"] == raw["faces"] and form["image"]["format"] == "PNG"
    # any content type: the format is read from the bytes
    status, octet = post(f"{server.url}/v1/keypoints", photo.data, "application/octet-stream")
    assert status == 200 and octet["faces"] == raw["faces"]


def test_a_96x96_crop_goes_to_the_model_as_it_is(server, keras_model):
    from fkp.core.predictor import predict_keypoints
    from fkp.synthetic.sample import generate_sample

    face = generate_sample(2, 1, 5, workers=1).train_images[0]
    ok, png = cv2.imencode(".png", face)
    assert ok
    status, answer = post(f"{server.url}/v1/keypoints", png.tobytes(), "image/png")
    assert status == 200, answer
    assert answer["input"] == "crop" and answer["faces_detected"] == 1
    [found] = answer["faces"]
    assert found["face_box"] == {"x": 0.0, "y": 0.0, "width": 96.0, "height": 96.0}
    expected = predict_keypoints(keras_model, face[None], tta_flip=False)[0].reshape(15, 2)
    np.testing.assert_allclose(_points(found), expected, atol=0.01)


def test_several_faces_largest_first(server):
    photo = drawn_photo((1000, 480), [((260, 240), 200), ((700, 230), 300)])
    status, one = post(f"{server.url}/v1/keypoints", photo.data)
    assert status == 200 and len(one["faces"]) == 1 and one["faces_detected"] == 2
    status, both = post(f"{server.url}/v1/keypoints?faces=3", photo.data)
    assert status == 200 and len(both["faces"]) == 2
    centres = [f["face_box"]["x"] + f["face_box"]["width"] / 2 for f in both["faces"]]
    assert abs(centres[0] - 700) < 40 and abs(centres[1] - 260) < 40  # the bigger face first
    assert both["faces"][0] == one["faces"][0]
    status, refused = post(f"{server.url}/v1/keypoints?faces=9", photo.data)  # over --max-faces 4
    assert status == 422 and refused["error"]["code"] == "invalid_parameter"


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` gray pixels, with a few kilobytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)  # the first rows; a decoder would want them all
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (120, 90), 128).save(out, format="GIF")
    return out.getvalue()


def test_bad_uploads_get_one_line_json_refusals(server, tiny_model):
    photo = synthetic_photos(1)[0]
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(photo.data, np.uint8), cv2.IMREAD_COLOR))[
        1
    ].tobytes()
    cases = {
        "empty": (b"", "image/jpeg", 400, "empty_body"),
        "text": (b"just some words", "text/plain", 415, "unsupported_image"),
        "gif": (_gif(), "image/gif", 415, "unsupported_image"),
        "truncated": (png[: len(png) // 2], "image/png", 400, "corrupt_image"),
        "wall": (drawn_photo((400, 300), []).data, "image/jpeg", 422, "no_face_found"),
        "bomb": (_png_bomb(50_000, 50_000), "image/png", 413, "too_many_pixels"),
        "just over": (_png_bomb(2300, 2300), "image/png", 413, "too_many_pixels"),  # 5.29 MP
        "big body": (
            b"\xff\xd8" + b"\0" * (MAX_BODY_MB * 1024 * 1024 + 10),
            "image/jpeg",
            413,
            "body_too_large",
        ),
        "form without file": (
            _multipart("x", "", b"", "text/plain")[0].replace(b'; filename=""', b""),
            None,
            400,
            "no_file",
        ),
    }
    for name, (body, content_type, status, code) in cases.items():
        if content_type is None:  # the form case carries its own boundary
            boundary = body.split(b"\r\n", 1)[0][2:].decode()
            content_type = f"multipart/form-data; boundary={boundary}"
        got_status, answer = post(f"{server.url}/v1/keypoints", body, content_type)
        assert (got_status, answer.get("error", {}).get("code")) == (status, code), (name, answer)
        message = answer["error"]["message"]
        assert "\n" not in message and "Traceback" not in message and str(ROOT) not in message, name
        assert str(tiny_model.parent) not in json.dumps(answer), name
    assert (
        "2,500,000,000 pixels; the limit is 5 megapixels"
        in post(f"{server.url}/v1/keypoints", _png_bomb(50_000, 50_000), "image/png")[1]["error"]["message"]
    )
    # the server is unharmed: the next photo is answered
    assert post(f"{server.url}/v1/keypoints", photo.data)[0] == 200


def test_health_metrics_and_access_log(server):
    photo = synthetic_photos(1)[0]
    before = get_json(f"{server.url}/healthz")
    assert before["status"] == "ok" and before["model"]["version"].startswith("file:")
    for _ in range(2):
        assert post(f"{server.url}/v1/keypoints", photo.data)[0] == 200
    assert post(f"{server.url}/v1/keypoints", b"nope", "text/plain")[0] == 415
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    assert samples['fkp_http_requests_total{method="POST",route="/v1/keypoints",status="200"}'] >= 2
    assert samples['fkp_http_requests_total{method="POST",route="/v1/keypoints",status="415"}'] >= 1
    assert samples['fkp_http_request_duration_seconds_count{route="/v1/keypoints"}'] >= 3
    assert samples['fkp_http_request_duration_seconds_bucket{le="+Inf",route="/v1/keypoints"}'] >= 3
    version = before["model"]["version"]
    assert samples[f'fkp_model_info{{ref="{before["model"]["ref"]}",version="{version}"}}'] == 1.0
    assert samples["fkp_faces_predicted_total"] >= 2

    lines = [json.loads(x) for x in server.log_text().splitlines() if x.startswith("{")]
    keypoint_lines = [x for x in lines if x["path"] == "/v1/keypoints"]
    assert {"ts", "method", "status", "ms", "client"} <= set(keypoint_lines[0])
    assert any(
        x["status"] == 200 and x["faces"] == 1 and x["model_version"] == version for x in keypoint_lines
    )
    assert any(x["status"] == 415 and x["error"] == "unsupported_image" for x in keypoint_lines)
    assert "Traceback" not in server.log_text()


def test_page_is_one_offline_file_with_example_faces(server):
    import re
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        html = response.read().decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page loads an external asset"
    assert "@import" not in html and "url(http" not in html
    assert html.count("data:image/png;base64,") == 4
    assert "v1/keypoints" in html


def test_unknown_routes_are_json_404(server):
    status, answer = post(f"{server.url}/v2/keypoints", b"x")
    assert status == 404 and answer["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("model", "store", "message"),
    [
        ("no/such/model.keras", False, "fkp serve: model file not found: no/such/model.keras"),
        ("models:/facial-keypoints-cnn@champion", False, "fkp serve: no MLflow store at "),
        (
            "models:/facial-keypoints-cnn@champion",
            True,
            "fkp serve: no model models:/facial-keypoints-cnn@champion",
        ),
    ],
)
def test_a_model_that_is_not_there_is_one_line(tmp_path, model, store, message):
    db = tmp_path / "mlflow.db"
    if store:  # an empty store: created here, so its creation chatter stays out of the server's output
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{db}").search_experiments()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [sys.executable, "-m", "fkp.cli", "serve", "--model", model, "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert db.is_file() == store  # nothing created


# --------------------------------------------------------------------------- hostile clients


def _mpo(jpeg: bytes) -> bytes:
    """The photo as a phone writes it: an MPO file (a JPEG with a second picture appended)."""
    from PIL import Image

    first = Image.open(io.BytesIO(jpeg))
    out = io.BytesIO()
    first.save(out, format="MPO", save_all=True, append_images=[first.resize((64, 48))])
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    return out.getvalue()


def test_a_phones_mpo_jpeg_is_read_like_any_jpeg(server):
    photo = synthetic_photos(1)[0]
    status, answer = post(f"{server.url}/v1/keypoints", _mpo(photo.data))
    assert status == 200, answer
    assert answer["image"] == {"format": "MPO", "width": photo.width, "height": photo.height}
    assert len(answer["faces"]) == 1 and len(answer["faces"][0]["keypoints"]) == 15, answer


def _half_upload(url: str, declared: int = 200_000) -> socket.socket:
    """A connection that sent the headers of a ``declared``-byte upload and a tenth of the body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST /v1/keypoints HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
    sock.sendall(
        f"{head}Content-Length: {declared}\r\n\r\n".encode() + b"\xff\xd8" + b"\0" * (declared // 10)
    )
    return sock


def _json_lines_after(server, offset: int) -> list[dict]:
    return [json.loads(x) for x in server.log_text()[offset:].splitlines() if x.startswith("{")]


def test_stalled_uploads_are_answered_408_and_let_go(server):
    offset = len(server.log_text())
    start = time.monotonic()
    stalled = [_half_upload(server.url) for _ in range(20)]
    answers = []
    for sock in stalled:
        with sock:  # read to the end: the server closes the connection after its answer
            answers.append(b"".join(iter(lambda s=sock: s.recv(4096), b"")).decode(errors="replace"))
    waited = time.monotonic() - start
    assert all(a.startswith("HTTP/1.1 408") and "upload_stalled" in a for a in answers), answers[0]
    assert all("connection: close" in a.lower() for a in answers), answers[0]
    assert waited < BODY_TIMEOUT_S + 4, waited  # let go after the timeout, not after keep-alive too
    assert get_json(f"{server.url}/healthz")["status"] == "ok"
    assert sum(x["status"] == 408 for x in _json_lines_after(server, offset)) == 20


def test_half_sent_headers_do_not_hold_a_connection(server):
    start = time.monotonic()
    stalled = [
        socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)
        for _ in range(20)
    ]
    for sock in stalled:
        sock.sendall(b"POST /v1/keypoints HTTP/1.1\r\nHost: 127")
    for sock in stalled:
        with sock:
            assert sock.recv(4096) == b""  # closed by the server
    assert time.monotonic() - start < BODY_TIMEOUT_S + 4
    assert get_json(f"{server.url}/healthz")["status"] == "ok"


def test_a_client_that_disconnects_mid_upload_is_one_log_line(server):
    offset = len(server.log_text())
    for _ in range(3):
        _half_upload(server.url).close()
    deadline = time.monotonic() + 30
    while sum(x["status"] == 499 for x in _json_lines_after(server, offset)) < 3:
        assert time.monotonic() < deadline, server.log_text()[offset:]
        time.sleep(0.2)
    new = server.log_text()[offset:]
    assert "Traceback" not in new and "ClientDisconnect" not in new, new
    assert all(line.startswith("{") for line in new.splitlines() if line.strip()), new


def test_a_port_in_use_is_one_line_with_its_own_exit_code(tiny_model):
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run(
            [sys.executable, "-m", "fkp.cli", "serve", "--model", str(tiny_model), "--port", str(port)],
            cwd=ROOT,
            env={"PATH": str(Path(sys.executable).parent), "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 6, done
    assert output == [
        f"fkp serve: address 127.0.0.1:{port} is already in use: stop what listens there "
        "or pick another --port"
    ], output

    usage = subprocess.run([sys.executable, "-m", "fkp.cli", "--help"], capture_output=True, text=True).stdout
    assert "6 fkp serve: port in use" in " ".join(usage.split())  # documented with the other codes
