"""The photo benchmark end to end: a real ``fkp serve``, synthetic sample faces pasted into photos.

The photo set is made here in the shared data's format (``images/`` + ``labels.csv``) from the
project's own synthetic faces, so the benchmark keeps working without the shared data.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.photo_data import SETS, match_faces, nme
from fkp.core.keypoints import KEYPOINT_NAMES
from tests.web_support import synthetic_photos, train_tiny_model

ROOT = Path(__file__).resolve().parents[1]
N_PHOTOS = 6


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory) -> Path:
    """Six 640x480 photos of one synthetic face each, two per person (groups 0, 1, 2)."""
    folder = tmp_path_factory.mktemp("photo-set")
    (folder / "images").mkdir()
    columns = [f"{k}_{axis}" for k in KEYPOINT_NAMES for axis in ("x", "y")]
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "person", "group", *columns])
        for i, photo in enumerate(synthetic_photos(N_PHOTOS)):
            (folder / "images" / f"face_{i}.jpg").write_bytes(photo.data)
            writer.writerow([f"images/face_{i}.jpg", f"person_{i // 2}", i // 2, *photo.keypoints.ravel()])
    return folder


@pytest.fixture(scope="module")
def held_out_model(tmp_path_factory) -> Path:
    """The web tests' tiny model, declared to have never seen group 0."""
    shared = tmp_path_factory.getbasetemp() / "web-model" / "tiny.keras"
    if not shared.is_file():
        train_tiny_model(shared)
    model = tmp_path_factory.mktemp("photo-model") / "tiny.keras"
    shutil.copy(shared, model)
    model.with_name("tiny.keras.heldout.json").write_text(json.dumps({"held_out_groups": [0]}))
    return model


def test_match_faces_pairs_each_labelled_face_with_the_nearest_detection_once():
    face = np.zeros((15, 2))
    face[KEYPOINT_NAMES.index("left_eye_outer_corner")] = (60, 40)
    face[KEYPOINT_NAMES.index("right_eye_outer_corner")] = (20, 40)
    face[KEYPOINT_NAMES.index("left_eye_center")] = (50, 40)
    face[KEYPOINT_NAMES.index("right_eye_center")] = (30, 40)
    other = face + (200, 0)  # eye centres at (40, 40) and (240, 40), outer eyes 40 px apart
    centres = [np.array([245.0, 40.0]), np.array([52.0, 40.0]), np.array([41.0, 41.0])]
    assert match_faces(centres, [face, other]) == [2, 0]
    assert match_faces([np.array([61.0, 40.0])], [face]) == [None]  # 21 px > half of 40 px
    assert nme(face + (4, 3), face) == pytest.approx(5 / 40)


def test_photo_benchmark_scores_found_faces_speed_and_memory_of_a_live_server(
    photo_set, held_out_model, tmp_path
):
    out, report_file = tmp_path / "BENCHMARKS.md", tmp_path / "photos.json"
    out.write_text("# Benchmarks\n\nhand-written\n")
    command = [sys.executable, "-m", "benchmarks.photos", "--photos", str(photo_set), "--model"]
    command += [str(held_out_model), "--crowds", "2", "--repeat", "2", "--big", "1600x1200"]
    command += ["--label", "test", "--out", str(out), "--json", str(report_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_file.read_text())

    assert list(report["sets"]) == list(SETS)
    as_is = report["sets"]["as is"]
    # every photo was chosen for a face the detector finds; only group 0 (2 people's photos) is scored
    assert (as_is["photos"], as_is["faces"], as_is["found_pct"], as_is["scored"]) == (6, 6, 100.0, 2)
    assert 0 < as_is["nme_mean"] < 1.0  # a two-epoch model: near the mean face, but on the face
    assert (
        report["sets"]["crowd 1920x1080"]["faces"] == 2 * 6
        and report["sets"]["crowd 3000x2000"]["faces"] == 6
    )
    assert report["held_out"] and report["commit"].startswith(
        subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    assert [(r["what"], r["concurrency"]) for r in report["speed"]] == [
        ("all benchmark photos", 1),
        ("all benchmark photos", 4),
        ("one 640x480 photo", 1),
        ("one 640x480 photo", 4),
    ]
    assert all(r["photos_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in report["speed"])
    big = report["big"]
    # the small synthetic face in a big canvas is beyond the Haar cascade: only that it was answered
    assert big["size"] == "1600x1200" and big["median_s"] > 0 and 0 <= big["found"] <= 3
    assert big["peak_rss_mb"] >= report["peak_rss_mb"] > 100
    text = out.read_text()
    assert "hand-written" in text and text.count("<!-- photos:test:begin -->") == 1
    assert "people the model never trained on" in text


def test_framing_conventions_move_the_face_in_the_frame_as_named():
    from benchmarks.framings import fit_scale_shift, moved
    from fkp.core.keypoints import MEAN_FACE

    mean = np.array([MEAN_FACE[k] for k in KEYPOINT_NAMES])
    photo = mean * 3.0 + (100.0, 50.0)  # a face 3x the model's size somewhere in a photo
    crop = fit_scale_shift(photo, mean)
    assert crop.to_crop(photo.ravel()).reshape(-1, 2) == pytest.approx(mean)
    centre = np.array([48.0, 48.0])
    larger = moved(crop, 1.12).to_crop(photo.ravel()).reshape(-1, 2)
    assert larger - centre == pytest.approx((mean - centre) * 1.12)
    lower = moved(crop, dy=4.0).to_crop(photo.ravel()).reshape(-1, 2)
    assert lower == pytest.approx(mean + (0.0, 4.0))

    def roll(points: np.ndarray) -> float:
        eyes = (
            points[KEYPOINT_NAMES.index("left_eye_center")] - points[KEYPOINT_NAMES.index("right_eye_center")]
        )
        return float(np.degrees(np.arctan2(eyes[1], eyes[0])))

    turned = moved(crop, angle=10.0).to_crop(photo.ravel()).reshape(-1, 2)
    assert roll(turned) - roll(mean) == pytest.approx(-10.0)  # the frame turned 10 deg clockwise


def test_framing_benchmark_scores_each_convention_on_the_unseen_people(photo_set, held_out_model, tmp_path):
    from benchmarks.framings import conventions

    report_file = tmp_path / "framings.json"
    command = [sys.executable, "-m", "benchmarks.framings", "--photos", str(photo_set)]
    command += ["--model", str(held_out_model), "--json", str(report_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 photos of 1 unseen people" in result.stdout  # group 0 only
    report = json.loads(report_file.read_text())
    assert [key.rsplit(" ", 2)[-2:] for key in report] == [["one", "look"], ["second", "look"]]
    for scores in report.values():
        assert list(scores) == list(conventions(0))
        assert all(0 < s < 48 for s in scores.values())
