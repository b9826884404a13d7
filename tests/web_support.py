"""Shared by the web tests and the HTTP benchmark: a quickly trained model, test photos, a live server.

The server is the real ``fkp serve`` in its own process on a free loopback port; photos are
synthetic faces from :mod:`fkp.synthetic.sample` rendered larger into a bigger picture (their true
keypoints known), and plain drawn faces the face detector finds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from conftest import stop_group

from fkp.serving.photos import detect_faces, to_gray

#: Seconds a server may take to load its model and open its port (a bound, not a speed check).
STARTUP_TIMEOUT = 180


def train_tiny_model(path: Path, *, seed: int = 1, epochs: int = 2, model=None) -> Path:
    """The default network (or ``model``) trained a few epochs on a tiny synthetic sample, saved."""
    from fkp.core.fit import fit_model
    from fkp.params import ModelParams, TrainParams
    from fkp.synthetic.sample import generate_sample

    data = generate_sample(96, 1, seed, workers=1)
    x, y = data.train_images, data.train_keypoints
    # no EMA: averaged over a few steps, the weights would still be the initial ones for every seed
    train = TrainParams(epochs=epochs, batch_size=32, patience=epochs, seed=seed, ema=0.0)
    result = fit_model(x[:72], y[:72], x[72:], y[72:], model or ModelParams(), train, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(path)
    return path


# --------------------------------------------------------------------------- photos


@dataclass(frozen=True)
class Photo:
    data: bytes  # encoded JPEG or PNG
    width: int
    height: int
    keypoints: np.ndarray | None  # (15, 2) true keypoints in photo pixels, if known


def synthetic_photos(
    n: int, *, size: tuple[int, int] = (640, 480), zoom: float = 3.0, seed: int = 3, fmt: str = ".jpg"
) -> list[Photo]:
    """``n`` synthetic sample faces, enlarged ``zoom`` times into a gray ``size`` picture.

    Only photos where the face detector finds exactly one face are kept, so each
    has one face the server must find. The true keypoints are mapped the same way as the pixels.
    """
    from fkp.synthetic.sample import generate_sample

    width, height = size
    data = generate_sample(8 * n, 1, seed, workers=1)
    out = []
    for face, coords in zip(data.train_images, data.train_keypoints, strict=True):
        side = round(96 * zoom)
        x0, y0 = (width - side) // 2 + 17, (height - side) // 2 - 9
        canvas = np.full((height, width), 128, np.uint8)
        canvas[y0 : y0 + side, x0 : x0 + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(fmt, cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
        assert ok
        if len(detect_faces(to_gray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)))) != 1:  # as the server sees it
            continue
        truth = coords.reshape(15, 2) * zoom + (x0, y0)  # continuous coordinates scale exactly
        out.append(Photo(encoded.tobytes(), width, height, truth))
        if len(out) == n:
            return out
    raise AssertionError(f"only {len(out)} of {8 * n} synthetic faces were detected")


def group_photo(n: int, *, size: tuple[int, int] = (1000, 420), seed: int = 5) -> Photo:
    """``n`` synthetic sample faces side by side in one colour JPEG, smaller and more turned in turn.

    The first face is upright and largest; the others are turned by +-30 degrees (a frontal-face
    detector misses them). Only a picture where the detector finds all ``n`` is returned;
    ``keypoints`` holds the faces' true keypoints one after the other, (15 n, 2).
    """
    from fkp.synthetic.sample import generate_sample

    width, height = size
    faces = generate_sample(4 * n, 1, seed, workers=1)
    sides = [round(min(width / n - 20, height - 20) * (1 - 0.15 * i)) for i in range(n)]
    angles = [0.0, *[30.0 * (-1) ** i for i in range(1, n)]]
    for start in range(0, 3 * n + 1, n):
        canvas = np.full((height, width, 3), (150, 140, 120), np.uint8)
        truth = []
        for i, (side, angle) in enumerate(zip(sides, angles, strict=True)):
            face, coords = faces.train_images[start + i], faces.train_keypoints[start + i]
            x0, y0 = round(i * width / n + 10), (height - side) // 2 + (-1) ** i * 5
            # turn about the crop's centre, in pixel-index coordinates (keypoints are continuous)
            turn = cv2.getRotationMatrix2D((47.5, 47.5), angle, 1.0)
            face = cv2.warpAffine(
                face, turn, (96, 96), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            points = (coords.reshape(15, 2) - 0.5) @ turn[:, :2].T + turn[:, 2] + 0.5
            pixels = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
            canvas[y0 : y0 + side, x0 : x0 + side] = pixels[..., None]
            truth.append(points * side / 96 + (x0, y0))
        ok, encoded = cv2.imencode(".jpg", canvas)
        assert ok
        if len(detect_faces(cv2.imdecode(encoded, cv2.IMREAD_COLOR))) == n:
            return Photo(encoded.tobytes(), width, height, np.concatenate(truth))
    raise AssertionError(f"no group of {n} synthetic faces was detected whole")


def drawn_face(gray: np.ndarray, centre: tuple[int, int], size: int) -> None:
    """Draw a plain face (oval, brows, eyes, nose, mouth) the face detector finds, in place."""
    s = size / 240

    def p(x: float, y: float) -> tuple[int, int]:
        return round(centre[0] + x * s), round(centre[1] + y * s)

    def r(a: float, b: float) -> tuple[int, int]:
        return round(a * s), round(b * s)

    cv2.ellipse(gray, p(0, 0), r(70, 92), 0, 0, 360, 170, -1)
    for side in (-1, 1):
        cv2.ellipse(gray, p(side * 30, -22), r(14, 7), 0, 0, 360, 40, -1)
        cv2.ellipse(gray, p(side * 30, -40), r(20, 5), 0, 0, 360, 60, -1)
    cv2.ellipse(gray, p(0, 22), r(12, 6), 0, 0, 360, 120, -1)
    cv2.ellipse(gray, p(0, 50), r(26, 7), 0, 0, 360, 70, -1)


def drawn_photo(
    size: tuple[int, int], faces: list[tuple[tuple[int, int], int]], *, fmt: str = ".jpg", seed: int = 0
) -> Photo:
    """A colour photo of drawn faces (``(centre, size)`` each) on a noisy background."""
    width, height = size
    rng = np.random.default_rng(seed)
    gray = np.clip(200 + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)
    for centre, side in faces:
        drawn_face(gray, centre, side)
    gray = cv2.GaussianBlur(gray, (7, 7), 0)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    bgr[..., 2] = np.clip(bgr[..., 2].astype(int) + 25, 0, 255)  # warm it up: a colour photo
    ok, encoded = cv2.imencode(fmt, bgr)
    assert ok
    return Photo(encoded.tobytes(), width, height, None)


# --------------------------------------------------------------------------- a live server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post(url: str, body: bytes, content_type: str = "image/jpeg", timeout: float = 60) -> tuple[int, dict]:
    """POST ``body``; (status, JSON answer) for successes and refusals alike."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_server(
    args: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Server]:
    """``fkp serve ARGS`` on a free loopback port until the block ends; stopped (its group) after."""
    port = free_port()
    command = [sys.executable, "-m", "fkp.cli", "serve", "--port", str(port), *args]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"fkp serve exited ({process.returncode}):\n{server.log_text()}")
            try:
                get_json(f"{server.url}/healthz", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"fkp serve never answered /healthz:\n{server.log_text()}")
            time.sleep(0.3)
        yield server
    finally:
        stop_group(process, timeout=30)
