"""Photos: face framing and the photo <-> model-input mapping, detection, errors, written outputs."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from fkp.core.keypoints import KEYPOINT_NAMES, MEAN_FACE
from fkp.errors import DataError
from fkp.serving import photos
from fkp.serving.align import fit_crop, fit_keypoints
from fkp.serving.detect import DETECT_MAX_PIXELS, DETECT_MAX_SIDE, LANDMARK_TEMPLATE, detection_factor
from fkp.serving.photos import FaceCrop, NoFaceFoundError


def _draw_face(
    width: int, height: int, centre: tuple[int, int], size: int, *, bgr: bool = True
) -> np.ndarray:
    """A plain drawn face (oval, brows, eyes, nose, mouth) that the face detector finds."""
    img = np.full((height, width), 200, np.uint8)
    s = size / 240

    def p(x: float, y: float) -> tuple[int, int]:
        return round(centre[0] + x * s), round(centre[1] + y * s)

    def r(a: float, b: float) -> tuple[int, int]:
        return round(a * s), round(b * s)

    cv2.ellipse(img, p(0, 0), r(70, 92), 0, 0, 360, 170, -1)
    for side in (-1, 1):
        cv2.ellipse(img, p(side * 30, -22), r(14, 7), 0, 0, 360, 40, -1)
        cv2.ellipse(img, p(side * 30, -40), r(20, 5), 0, 0, 360, 60, -1)
    cv2.ellipse(img, p(0, 22), r(12, 6), 0, 0, 360, 120, -1)
    cv2.ellipse(img, p(0, 50), r(26, 7), 0, 0, 360, 70, -1)
    img = cv2.GaussianBlur(img, (7, 7), 0)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if bgr else img


# --------------------------------------------------------------------------- pure mapping


def test_mapping_round_trip_is_exact():
    crop = FaceCrop(x0=-7, y0=13, size=217)
    points = np.random.default_rng(0).uniform(-50, 400, size=(5, 30))
    np.testing.assert_allclose(crop.to_photo(crop.to_crop(points)), points, rtol=0, atol=1e-9)
    np.testing.assert_allclose(crop.to_crop(crop.to_photo(points)), points, rtol=0, atol=1e-9)
    # the crop's corners are the model input's corners
    corners = np.array([-7.0, 13.0, 210.0, 230.0])
    np.testing.assert_allclose(crop.to_crop(corners), [0, 0, 96, 96], atol=1e-12)


def test_turned_crop_round_trips_and_its_corners_are_the_inputs_corners():
    crop = FaceCrop(x0=120.5, y0=-40.25, size=180.0, angle=-33.0)
    points = np.random.default_rng(1).uniform(-50, 400, size=(4, 30))
    np.testing.assert_allclose(crop.to_photo(crop.to_crop(points)), points, rtol=0, atol=1e-9)
    # the crop's top-right corner lies `size` photo pixels from its top-left one, turned by `angle`
    a = np.radians(-33.0)
    corner = [120.5 + 180 * np.cos(a), -40.25 + 180 * np.sin(a)]
    np.testing.assert_allclose(crop.to_crop(np.array(corner)), [96, 0], atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 28.0, -75.0])
def test_alignment_recovers_a_known_transform_and_maps_keypoints_back(angle):
    """Landmarks placed by a known similarity give back that crop; its keypoints map back exactly."""
    truth = FaceCrop(x0=211.3, y0=87.9, size=143.0, angle=angle)
    mean_face = np.array([MEAN_FACE[name] for name in KEYPOINT_NAMES]).ravel()
    in_photo = truth.to_photo(mean_face).reshape(15, 2)
    landmarks = truth.to_photo(LANDMARK_TEMPLATE.ravel()).reshape(5, 2)
    crop = fit_crop(landmarks, LANDMARK_TEMPLATE)
    np.testing.assert_allclose(
        [crop.x0, crop.y0, crop.size, crop.angle], [211.3, 87.9, 143.0, angle], atol=1e-9
    )
    # the model predicting the mean face on that crop puts it on the face in the photo
    np.testing.assert_allclose(crop.to_photo(mean_face).reshape(15, 2), in_photo, atol=1e-9)


def test_predicted_keypoints_frame_the_face_again_and_nonsense_is_refused():
    """All 15 keypoints give back the crop that puts them on the mean face; stray framings are refused."""
    truth = FaceCrop(x0=211.3, y0=87.9, size=143.0, angle=12.0)
    mean_face = np.array([MEAN_FACE[name] for name in KEYPOINT_NAMES]).ravel()
    near = FaceCrop(x0=205.0, y0=95.0, size=150.0, angle=9.0)  # the crop they were predicted on
    crop = fit_keypoints(truth.to_photo(mean_face), near)
    assert crop is not None
    np.testing.assert_allclose(
        [crop.x0, crop.y0, crop.size, crop.angle], [211.3, 87.9, 143.0, 12.0], atol=1e-9
    )
    collapsed = np.tile(truth.to_photo(mean_face)[:2], 15)  # a model answering one point for all
    assert fit_keypoints(collapsed, near) is None
    for far in (
        FaceCrop(x0=211.3 + 60, y0=87.9, size=143.0, angle=12.0),
        FaceCrop(x0=211.3, y0=87.9, size=143.0 * 1.6, angle=12.0),
        FaceCrop(x0=211.3, y0=87.9, size=143.0, angle=12.0 + 35),
    ):
        assert fit_keypoints(far.to_photo(mean_face), truth) is None


def _constant_model(coords: np.ndarray):
    """A real Keras model answering ``coords`` (30 model-input coordinates) for every face."""
    import keras

    inputs = keras.Input((96, 96, 1))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(30, kernel_initializer="zeros", bias_initializer="zeros")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].bias.assign(np.asarray(coords, dtype=np.float32))
    return model


def _faces_photo(faces: list[tuple[np.ndarray, float, tuple[float, float]]], size: tuple[int, int]) -> bytes:
    """A PNG of gray 96x96 faces enlarged ``zoom`` times, top-left corners at (x, y) off the pixel grid."""
    width, height = size
    canvas = np.full((height, width), 128, np.uint8)
    for face, zoom, (x, y) in faces:
        place = np.array([[zoom, 0, x + (zoom - 1) / 2], [0, zoom, y + (zoom - 1) / 2]])  # pixel indices
        cv2.warpAffine(
            face,
            place,
            (width, height),
            dst=canvas,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_TRANSPARENT,
        )
    ok, png = cv2.imencode(".png", canvas)
    assert ok
    return png.tobytes()


def test_faces_are_framed_again_by_their_keypoints_small_faces_once_more(tmp_path):
    """A model whose answer is the mean face moved: each pass reframes by it; the answer is the last crop.

    In a 4000x2000 photo the big face's landmarks come from a copy fine enough: two passes; the
    small face's are whole pixels of a 960 px copy: three. One model call per pass, the faces batched.
    """
    from fkp.core.predictor import predict_keypoints
    from fkp.serving.web.faces import face_keypoints, locate_faces
    from fkp.synthetic.sample import generate_sample

    faces = generate_sample(2, 1, 3, workers=1).train_images
    data = _faces_photo(
        [(faces[0], 4.0, (1400.37, 700.71)), (faces[1], 1.5, (500.29, 1300.83))], (4000, 2000)
    )
    mean_face = np.array([MEAN_FACE[name] for name in KEYPOINT_NAMES])
    moved = ((mean_face - 48.0) * 1.03 + 48.0 + (1.5, -1.0)).ravel()  # a little bigger, right, up
    model = _constant_model(moved)
    batches: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        batches.append(len(x))
        return predict_keypoints(model, x, tta_flip=False)

    decoded = photos.decode_for_detection(data)
    first = photos.find_faces(decoded).faces
    assert [f.passes for f in first] == [2, 3]
    answer = face_keypoints(locate_faces(data, decoded, 4), predict)
    assert batches == [2, 2, 1]
    for face, found in zip(answer, first, strict=True):
        crop = found.crop
        for _ in range(found.passes - 1):
            crop = fit_crop(crop.to_photo(moved).reshape(15, 2), mean_face)
        got = face["crop_box"]
        np.testing.assert_allclose(
            [got["x"], got["y"], got["size"], got["angle"]],
            [crop.x0, crop.y0, crop.size, crop.angle],
            atol=0.01,
        )
        points = np.array(list(face["keypoints"].values())).ravel()
        np.testing.assert_allclose(points, crop.to_photo(moved), atol=0.02)

    # fkp predict photo.jpg frames its (largest) face the same way
    path = tmp_path / "two.png"
    path.write_bytes(data)
    keras_path = tmp_path / "moved.keras"
    model.save(keras_path)
    [record] = photos.predict_photos(keras_path, [path], tmp_path / "out", tta_flip=False)
    assert record["crop_box"] == answer[0]["crop_box"]
    assert record["keypoints"] == answer[0]["keypoints"]


def _blob_photo(width: int, height: int, cx: float, cy: float, sigma: float = 6.0) -> np.ndarray:
    """A bright Gaussian spot centred at continuous photo coordinates (cx, cy) on a dark ground."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return np.round(20 + 220 * spot).astype(np.uint8)


def _centroid(gray: np.ndarray) -> np.ndarray:
    weights = np.clip(gray.astype(np.float64) - 20, 0, None)
    yy, xx = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]] + 0.5
    return np.array([(xx * weights).sum(), (yy * weights).sum()]) / weights.sum()


@pytest.mark.parametrize(
    ("crop", "spot"),
    [
        (FaceCrop(250, 120, 240), (371.3, 247.8)),  # shrink (photo pixels -> fewer model pixels)
        (FaceCrop(-30, -20, 150), (40.6, 52.2)),  # reaches past the photo's top-left edges
        (FaceCrop(300, 200, 64), (331.7, 229.4)),  # enlarge
        (FaceCrop(330, 20, 260, 35.0), (301.4, 203.1)),  # turned, shrunk
        (FaceCrop(60.5, 400.2, 90, -60.0), (92.3, 357.6)),  # turned the other way, past the edge
    ],
)
@pytest.mark.parametrize("reduced", [1, 4])
def test_cut_out_pixels_and_mapped_coordinates_agree(crop, spot, reduced):
    """A spot found in the 96x96 model input maps back to where it is in the photo.

    ``reduced``: the crop is cut from a copy of the photo that many times smaller.
    """
    photo = _blob_photo(640, 480, *spot, sigma=6.0 * crop.size / 240)
    if reduced > 1:
        photo = cv2.resize(photo, (640 // reduced, 480 // reduced), interpolation=cv2.INTER_AREA)
    face = photos.extract_crop(photo, crop, (1 / reduced, 1 / reduced))
    assert face.shape == (96, 96) and face.dtype == np.uint8
    found = crop.to_photo(_centroid(face))
    np.testing.assert_allclose(found, spot, atol=0.15 * max(crop.scale, reduced))


# --------------------------------------------------------------------------- detection and files


def test_detects_a_drawn_face_and_its_eyes_where_they_are():
    gray = _draw_face(640, 480, centre=(400, 220), size=240, bgr=False)
    found = photos.detect_faces(gray)
    assert found, "no face detected in the drawn face"
    box, eyes = found[0].box, found[0].landmarks[:2]
    assert abs(box.x + box.w / 2 - 400) < 24 and abs(box.y + box.h / 2 - 220) < 24
    assert 120 < box.w < 300
    # the subject's right eye on the image's left, as the Kaggle names say
    np.testing.assert_allclose(eyes, [[370, 198], [430, 198]], atol=12)


@pytest.mark.parametrize(
    ("photo", "copy"),
    [
        ((400, 300), (400, 300)),  # small enough: searched as it is
        ((640, 480), (604, 453)),  # a 4:3 frame of 640: fewer pixels, same shape
        ((480, 640), (453, 604)),
        ((800, 600), (800, 600)),  # larger photos: a larger copy, where group photos' faces are small
        ((1920, 1080), (960, 540)),  # wide photos: the longer side decides
        ((3000, 2000), (960, 640)),
        ((8000, 6000), (905, 679)),  # 4:3: the pixel count decides
    ],
)
def test_detection_copy_keeps_the_shape_within_both_limits(photo, copy):
    factor = detection_factor(*photo)
    shrunk = cv2.resize(np.zeros(photo[::-1], np.uint8), None, fx=factor, fy=factor) if factor < 1 else None
    size = photo if shrunk is None else shrunk.shape[::-1]
    assert size == copy
    assert max(size) <= DETECT_MAX_SIDE and size[0] * size[1] <= DETECT_MAX_PIXELS + sum(size)


def test_large_photo_is_detected_on_a_shrunk_copy_in_full_size_coordinates():
    gray = _draw_face(2400, 1600, centre=(1500, 700), size=900, bgr=False)
    found = photos.detect_faces(gray, factor=1 / 3)[0]
    box = found.box
    assert abs(box.x + box.w / 2 - 1500) < 90 and abs(box.y + box.h / 2 - 700) < 90
    assert 450 < box.w < 1100
    np.testing.assert_allclose(found.landmarks[:2], [[1387.5, 617.5], [1612.5, 617.5]], atol=90)


def test_plain_photo_raises_no_face_found_and_writes_nothing(tmp_path):
    path = tmp_path / "wall.png"
    cv2.imwrite(str(path), np.full((300, 400), 128, np.uint8))
    with pytest.raises(NoFaceFoundError) as info:
        # the model is never loaded: faces are looked for first
        photos.predict_photos(tmp_path / "no-such-model.keras", [path], tmp_path / "out")
    assert str(info.value) == f"no face found in {path}"
    assert info.value.path == path
    assert isinstance(info.value, DataError)
    assert not (tmp_path / "out").exists()


def test_unreadable_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    with pytest.raises(DataError, match=r"notes\.jpg.*cannot read as an image"):
        photos.read_photo(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png.*cannot read"):
        photos.read_photo(empty)
    with pytest.raises(DataError, match=r"gone\.png.*file not found"):
        photos.read_photo(tmp_path / "gone.png")


def test_two_photos_with_the_same_stem_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"face\.json"):
        photos.predict_photos("unused.keras", [tmp_path / "a/face.png", tmp_path / "b/face.jpg"], tmp_path)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((96, 96, 1))
    x = keras.layers.Conv2D(2, 8, strides=8)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(30, bias_initializer=keras.initializers.Constant(48.0))(x)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_predict_photos_writes_json_and_overlay(tmp_path, keras_file):
    from fkp.core.predictor import load_model, predict_keypoints

    photo = _draw_face(560, 420, centre=(300, 200), size=220)
    photo[..., 2] = np.clip(photo[..., 2].astype(int) + 30, 0, 255)  # a colour photo, not gray
    path = tmp_path / "portrait.jpg"
    cv2.imwrite(str(path), photo)

    [result] = photos.predict_photos(keras_file, [path], tmp_path / "out", tta_flip=False)
    assert result["json"] == tmp_path / "out" / "portrait.json"
    assert result["overlay"] == tmp_path / "out" / "portrait_keypoints.png"
    record = json.loads(result["json"].read_text())
    assert list(record["keypoints"]) == list(KEYPOINT_NAMES)
    assert record["image_size"] == {"width": 560, "height": 420}
    box = record["face_box"]
    assert abs(box["x"] + box["width"] / 2 - 300) < 24 and abs(box["y"] + box["height"] / 2 - 200) < 24

    # the keypoints are the model's prediction on the cut-out face, mapped into the photo
    gray = photos.to_gray(photos.read_photo(path))
    crop = FaceCrop(**{k if k in ("size", "angle") else f"{k}0": v for k, v in record["crop_box"].items()})
    raw = predict_keypoints(load_model(keras_file), photos.extract_crop(gray, crop)[None], tta_flip=False)[0]
    got = np.array(list(record["keypoints"].values())).ravel()
    np.testing.assert_allclose(got, crop.to_photo(raw), atol=0.02)

    overlay = cv2.imread(str(result["overlay"]))
    assert overlay.shape == photo.shape
    assert np.abs(overlay.astype(int) - cv2.imread(str(path)).astype(int)).sum() > 0  # something drawn


def test_small_faces_in_a_group_photo_are_all_found():
    """Four sample faces ~120 px wide in a 3000x2000 photo: the detector's copy is fine enough for each.

    A 640 px copy (all photos' until the copy grew with the photo) found none of them.
    """
    from fkp.synthetic.sample import generate_sample

    faces = generate_sample(4, 1, 5, workers=1).train_images
    places = [(300.4, 300.2), (2400.7, 400.1), (800.3, 1500.6), (1900.5, 1200.8)]
    data = _faces_photo([(face, 1.25, xy) for face, xy in zip(faces, places, strict=True)], (3000, 2000))
    found = photos.find_faces(photos.decode_for_detection(data)).faces
    centres = np.array([f.detection.landmarks[:2].mean(axis=0) for f in found])  # between the eyes
    assert len(found) == 4, centres
    for x, y in places:
        assert np.min(np.hypot(*(centres - (x + 60, y + 46)).T)) < 15, ((x, y), centres)


def test_big_jpeg_is_found_and_cut_from_reduced_decodes(tmp_path):
    """A 4000x3000 JPEG: found on a 1/4 decode, its big face cut from it as from the full photo."""
    photo = _draw_face(4000, 3000, centre=(2300, 1400), size=1500)
    ok, jpeg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    found = photos.find_faces(photos.decode_for_detection(jpeg.tobytes()))
    assert found.photo_size == (4000, 3000)
    assert found.decoded.pixels.shape == (750, 1000, 3)  # straight from the DCT, no full-size array
    [face] = found.faces
    assert abs(face.detection.box.x + face.detection.box.w / 2 - 2300) < 150
    cut = photos.FaceCutter(jpeg.tobytes(), found.decoded).inputs([face.crop])[0]
    full = photos.extract_crop(photos.to_gray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)), face.crop)
    assert np.abs(cut.astype(int) - full.astype(int)).mean() < 2.0


def test_a_face_in_a_photo_is_framed_like_the_training_faces():
    """Sample faces (Kaggle framing) enlarged into a photo come back at their own frame's scale.

    The detector marks its eyes closer together and its nose higher than the Kaggle labels do;
    fitting its landmarks onto the Kaggle mean keypoints framed faces ~12 % too tight here.
    """
    from fkp.synthetic.sample import render_people

    images, keypoints, _ = render_people(12, seed=0, stream=0)
    scales, errors = [], []
    for image, truth in zip(images, keypoints, strict=True):
        photo = cv2.copyMakeBorder(
            cv2.resize(image, None, fx=3, fy=3), 150, 150, 150, 150, cv2.BORDER_REPLICATE
        )
        [face] = photos.find_faces(
            photos.decode_for_detection(cv2.imencode(".png", photo)[1].tobytes())
        ).faces
        seen = ~np.isnan(truth)
        in_crop = face.crop.to_crop(np.where(seen, truth * 3 + 150, 0.0))
        scales.append(face.crop.size / (96 * 3))
        errors.append(np.sqrt(np.mean((in_crop - truth)[seen] ** 2)))
    assert 0.93 < np.mean(scales) < 1.07, np.mean(scales)
    assert np.mean(errors) < 5.0, np.mean(errors)


def test_detection_uses_every_core_with_threads_that_sleep_between_photos():
    """The detector's OpenMP runtime is set up for the cores at hand and passive waiting.

    A fresh process, since the runtime reads its settings once when it is loaded; it prints them
    (OMP_DISPLAY_ENV) and the calling thread's thread count is read back from that same runtime.
    """
    import subprocess
    import sys

    code = """
import ctypes, glob, os
import numpy as np
import yuface
from fkp.serving.detect import yunet
yunet.detect(np.zeros((64, 64, 3), np.uint8))
[path] = glob.glob(os.path.join(os.path.dirname(yuface.__file__), "..", "yuface.libs", "libgomp-*.so*"))
print(ctypes.CDLL(path).omp_get_max_threads(), yunet.detection_threads(), os.environ.get("OMP_NUM_THREADS"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")} | {"OMP_DISPLAY_ENV": "true"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    threads, wanted, left = done.stdout.split()
    assert threads == wanted == str(min(4, len(os.sched_getaffinity(0)))), done.stdout
    assert left == "None"  # the process's own environment is left as it was
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in done.stderr, done.stderr


def test_fkp_predict_says_what_it_wrote_for_each_photo(tmp_path, keras_file, capsys):
    from fkp.cli import main

    one, two = tmp_path / "one.jpg", tmp_path / "two.png"
    cv2.imwrite(str(one), _draw_face(560, 420, centre=(300, 200), size=220))
    pair = np.hstack(
        [_draw_face(480, 420, centre=(240, 200), size=220), _draw_face(480, 420, centre=(240, 200), size=180)]
    )
    cv2.imwrite(str(two), pair)
    assert (
        main(["predict", "--model", str(keras_file), str(one), str(two), "--out", str(tmp_path / "out")]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    out = tmp_path / "out"
    assert lines == [
        f"{one}: 1 face -> {out / 'one.json'}, drawn in {out / 'one_keypoints.png'}",
        f"{two}: 2 faces, the largest -> {out / 'two.json'}, drawn in {out / 'two_keypoints.png'}",
    ]
