"""The page of ``fkp serve`` in a real browser: Debian's headless Chromium driven by Playwright.

It opens the page, uploads a photo, waits for the drawing, and checks that 15 keypoints
were painted where the API says they are and that the JSON the page shows is the API's
answer for the same photo. A screenshot is kept in ``tests/artifacts/`` (git-ignored).

Without ``/usr/bin/chromium`` (``apt-get install chromium``) the test is skipped, except in
CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CHROMIUM, require_chromium
from conftest import CHROMIUM_FLAGS as BROWSER_FLAGS

from tests.web_support import group_photo, post, running_server, synthetic_photos, train_tiny_model

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "web_page.png"
CHROMIUM_FLAGS = [
    *BROWSER_FLAGS,
    "--use-fake-device-for-media-stream",  # a synthetic camera (a test pattern, no face)
    "--use-fake-ui-for-media-stream",  # camera permission granted without a prompt
]
TIMEOUT_MS = 60_000  # a bound on waiting for the page, not a speed check


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require_chromium()
    model = tmp_path_factory.getbasetemp() / "web-model" / "tiny.keras"
    if not model.is_file():
        train_tiny_model(model)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_server(["--model", str(model), "--poll", "0"], log, cwd=ROOT) as live:
        yield live


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            tab = context.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            requested: list[str] = []
            tab.on("request", lambda request: requested.append(request.url))
            tab.console_log = []
            tab.on("console", lambda m: tab.console_log.append(m.text))
            tab.on("pageerror", lambda e: tab.console_log.append(str(e)))
            tab.goto(server.url + "/")
            tab.requested = requested
            yield tab
        finally:
            browser.close()


def _drawn_colours(page) -> list[dict]:
    """Each drawn point with the colour found on the canvas at its centre."""
    return page.evaluate(
        """() => {
          const ctx = document.getElementById("view").getContext("2d");
          return window.fkpDrawn.map((p) => {
            const [r, g, b] = ctx.getImageData(Math.floor(p.x), Math.floor(p.y), 1, 1).data;
            const hex = "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
            return { name: p.name, x: p.x, y: p.y, radius: p.radius, colour: p.colour, found: hex };
          });
        }"""
    )


def _check_painted(drawn: list[dict]) -> int:
    """Each point's centre shows the fill of the last marker drawn over it; returns how many were checked.

    Markers are a fill of ``radius`` on a dark ring 1.5 px wider; a later marker covers an
    earlier one, so the colour expected at a centre is that of the last marker reaching it.
    A centre on some later marker's ring or edge is ambiguous and skipped.
    """
    checked = 0
    for i, point in enumerate(drawn):
        top = point
        for later in drawn[i + 1 :]:
            if np.hypot(later["x"] - point["x"], later["y"] - point["y"]) <= later["radius"] + 2.5:
                top = later
        distance = np.hypot(top["x"] - point["x"], top["y"] - point["y"])
        if distance <= top["radius"] - 1.5:
            assert point["found"] == top["colour"], (point, top)
            checked += 1
    return checked


def test_a_photo_uploaded_in_the_browser_shows_its_15_keypoints(server, page, tmp_path):
    photo = synthetic_photos(1, seed=4)[0]
    path = tmp_path / "portrait.jpg"
    path.write_bytes(photo.data)

    page.set_input_files("#file", str(path))
    page.wait_for_selector('#view[data-points="15"]')

    shown = json.loads(page.inner_text("#json"))
    status, api = post(f"{server.url}/v1/keypoints?faces=5", photo.data)
    assert status == 200
    assert shown["faces"] == api["faces"] and shown["model"] == api["model"]
    assert page.inner_text("#version") == f"{api['model']['uri']} ({api['model']['version']})"
    assert "ms on the server" in page.inner_text("#latency")

    drawn = _drawn_colours(page)
    assert len(drawn) == 15
    width = page.evaluate("document.getElementById('view').width")
    scale = width / photo.width
    for point, (name, (x, y)) in zip(drawn, api["faces"][0]["keypoints"].items(), strict=True):
        assert point["name"] == name
        assert abs(point["x"] - x * scale) < 1e-6 and abs(point["y"] - y * scale) < 1e-6
    assert _check_painted(drawn) >= 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # everything the page loaded came from the server itself (or from the page's own data)
    foreign = [u for u in page.requested if not u.startswith((server.url, "data:", "blob:"))]
    assert not foreign, foreign


def test_a_group_photo_shows_every_face(server, page, tmp_path):
    photo = group_photo(3)
    path = tmp_path / "group.jpg"
    path.write_bytes(photo.data)

    page.set_input_files("#file", str(path))
    page.wait_for_selector('#view[data-points="45"]')

    status, api = post(f"{server.url}/v1/keypoints?faces=5", photo.data)
    assert status == 200 and len(api["faces"]) == 3
    assert json.loads(page.inner_text("#json"))["faces"] == api["faces"]
    assert page.inner_text("#faces") == "3 shown, 3 found"
    drawn = _drawn_colours(page)
    scale = page.evaluate("document.getElementById('view').width") / photo.width
    shown = [(name, xy) for face in api["faces"] for name, xy in face["keypoints"].items()]
    for point, (name, (x, y)) in zip(drawn, shown, strict=True):
        assert point["name"] == name
        assert abs(point["x"] - x * scale) < 1e-6 and abs(point["y"] - y * scale) < 1e-6
    # largest first, each face's keypoints on the pasted face they belong to
    truth = photo.keypoints.reshape(3, 15, 2)
    for face, true_points in zip(api["faces"], truth, strict=True):
        points = np.array(list(face["keypoints"].values()))
        size = np.ptp(true_points[:, 0])
        assert np.linalg.norm(points.mean(axis=0) - true_points.mean(axis=0)) < 0.25 * size


def test_a_dropped_photo_is_predicted(server, page):
    photo = synthetic_photos(1, seed=6)[0]
    page.evaluate("window.fkpResult = null")
    page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const files = new DataTransfer();
          files.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
          const drop = new DragEvent("drop", { dataTransfer: files, bubbles: true, cancelable: true });
          document.getElementById("drop").dispatchEvent(drop);
        }""",
        base64.b64encode(photo.data).decode("ascii"),
    )
    page.wait_for_function("window.fkpResult !== null")
    shown = page.evaluate("window.fkpResult")
    assert shown.get("faces"), (shown, page.console_log)
    page.wait_for_selector('#view[data-points="15"]')
    assert shown["faces"] == post(f"{server.url}/v1/keypoints?faces=5", photo.data)[1]["faces"]


def test_an_example_face_and_a_refusal(server, page):
    page.click("img.example >> nth=1")
    page.wait_for_function("window.fkpResult && window.fkpResult.input === 'crop'")
    page.wait_for_selector('#view[data-points="15"]')
    assert page.evaluate("document.getElementById('view').width") == 384  # 96 px shown 4x

    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}]
    )
    page.wait_for_selector("#status.error")
    assert "not a JPEG or PNG" in page.inner_text("#status")
    assert page.get_attribute("#view", "data-points") == "0"


def _canvas_pixels(page, points: list[dict]) -> list[list[int]]:
    """The RGBA value on the canvas at each of ``points`` (canvas pixels)."""
    return page.evaluate(
        """(points) => {
          const ctx = document.getElementById("view").getContext("2d");
          return points.map((p) => Array.from(ctx.getImageData(Math.floor(p.x), Math.floor(p.y), 1, 1).data));
        }""",
        points,
    )


def test_a_new_upload_replaces_the_last_result(server, page, tmp_path):
    """After a face, a photo without one shows itself and nothing of the face; a refusal shows nothing."""
    face = tmp_path / "face.jpg"
    face.write_bytes(synthetic_photos(1, seed=4)[0].data)
    page.set_input_files("#file", str(face))
    page.wait_for_selector('#view[data-points="15"]')
    assert page.inner_text("#faces") == "1 shown, 1 found"
    old_points = page.evaluate("window.fkpDrawn")

    blank = tmp_path / "wall.png"  # one flat grey: no face to find, and every pixel known
    ok, png = cv2.imencode(".png", np.full((480, 640), 200, np.uint8))
    assert ok
    blank.write_bytes(png.tobytes())
    page.set_input_files("#file", str(blank))
    page.wait_for_function("window.fkpResult && window.fkpResult.error")
    assert page.evaluate("window.fkpResult.error.code") == "no_face_found"
    assert page.get_attribute("#status", "class") == "error"
    assert page.inner_text("#faces") == "-"
    assert "on the server" not in page.inner_text("#latency")
    assert "ms in the browser" in page.inner_text("#latency")
    assert page.get_attribute("#view", "data-points") == "0" and page.evaluate("window.fkpDrawn") == []
    # the new photo, not the old one, fills the canvas: where the old keypoints were is flat grey now
    assert page.evaluate("[view.width, view.height]") == [640, 480]
    corners = [{"x": 1, "y": 1}, {"x": 638, "y": 478}]
    for rgba in _canvas_pixels(page, old_points + corners):
        assert all(abs(v - 200) <= 2 for v in rgba[:3]) and rgba[3] == 255, rgba

    page.set_input_files("#file", str(face))
    page.wait_for_selector('#view[data-points="15"]')
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}]
    )
    page.wait_for_function("window.fkpResult && window.fkpResult.error")
    assert "not a JPEG or PNG" in page.inner_text("#status")
    assert page.inner_text("#faces") == "-" and "on the server" not in page.inner_text("#latency")
    # nothing the browser could show: the canvas is empty, not the last face
    drawn_alpha = page.evaluate(
        "Array.from(view.getContext('2d').getImageData(0, 0, view.width, view.height).data)"
        ".filter((v, i) => i % 4 === 3 && v > 0).length"
    )
    assert drawn_alpha == 0


def test_a_late_answer_does_not_replace_a_newer_upload(server, page, tmp_path):
    """The answer to an earlier upload that arrives after a newer one's is dropped, not shown over it."""
    blank, face = tmp_path / "wall.png", tmp_path / "face.jpg"
    ok, png = cv2.imencode(".png", np.full((480, 640), 200, np.uint8))
    assert ok
    blank.write_bytes(png.tobytes())
    face.write_bytes(synthetic_photos(1, seed=4)[0].data)
    held = []  # the first request is held back until the second has been answered and drawn

    def hold_first(route) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/v1/keypoints*", hold_first)
    try:
        page.evaluate("window.fkpResult = null")
        page.set_input_files("#file", str(blank))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('finding')")
        page.set_input_files("#file", str(face))
        page.wait_for_selector('#view[data-points="15"]')
        with page.expect_response("**/v1/keypoints*") as late:
            held[0].continue_()
        assert late.value.status == 422  # the wall's answer: no face
        page.wait_for_timeout(1_000)  # time for the page to handle it (it must not)
        assert page.get_attribute("#view", "data-points") == "15"
        assert page.inner_text("#faces") == "1 shown, 1 found"
        assert (
            page.get_attribute("#status", "class") != "error"
            and page.evaluate("window.fkpResult.faces.length") == 1
        )
    finally:
        page.unroute("**/v1/keypoints*")


def test_the_camera_photo_is_sent_to_the_api(server, page):
    page.evaluate("window.fkpResult = null")
    page.click("#camera")
    page.wait_for_function("document.getElementById('video').videoWidth > 0")
    page.click("#snap")
    page.wait_for_function("window.fkpResult !== null")
    # the fake camera shows a test pattern: the frame arrived as a JPEG and no face was in it
    assert page.evaluate("window.fkpResult.error.code") == "no_face_found"
    assert "no face found" in page.inner_text("#status")
    assert not page.is_visible("#video")
