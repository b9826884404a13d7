"""The second look at faces framed far off (fkp.core.reframe), with a model that can be reasoned about.

The faces are two bright eye blobs placed by a known similarity of the mean face. The 'model' finds
them and answers the mean face through a similarity pulled halfway back towards the training
framing: exact on faces framed like the training faces, the more wrong the further off a face is,
the way a real model leans on the framing it learnt.
"""

from __future__ import annotations

import cmath

import numpy as np
import pytest

from fkp.core.keypoints import IMAGE_SIZE, KEYPOINT_NAMES, MEAN_KEYPOINTS, PIXEL_CENTER
from fkp.core.reframe import OFF_LIMITS, framed_off, second_look, similarity

LEFT, RIGHT = KEYPOINT_NAMES.index("left_eye_center"), KEYPOINT_NAMES.index("right_eye_center")
CENTRE = complex(IMAGE_SIZE / 2, IMAGE_SIZE / 2)
MEAN = MEAN_KEYPOINTS[:, 0] + 1j * MEAN_KEYPOINTS[:, 1]


def placed(a: complex, t: complex) -> np.ndarray:
    """The mean face through ``p = a q + t``, as (30,) coordinates."""
    p = a * MEAN + t
    return np.stack([p.real, p.imag], axis=-1).reshape(-1)


def frame(
    scale: float = 1.0, degrees: float = 0.0, dx: float = 0.0, dy: float = 0.0
) -> tuple[complex, complex]:
    """The similarity that scales and turns the mean face about the frame centre, then moves it."""
    a = scale * cmath.exp(1j * np.radians(degrees))
    return a, CENTRE - a * CENTRE + complex(dx, dy)


def eye_image(keypoints: np.ndarray) -> np.ndarray:
    """A dark 96x96 face with a Gaussian blob at each eye centre, as model input (96, 96, 1) in 0..1."""
    cols, rows = np.meshgrid(np.arange(IMAGE_SIZE) + PIXEL_CENTER, np.arange(IMAGE_SIZE) + PIXEL_CENTER)
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for k in (LEFT, RIGHT):
        x, y = keypoints[2 * k], keypoints[2 * k + 1]
        image += np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 1.5**2)).astype(np.float32)
    return image[..., None]


def leaning_model(calls: list[int]):
    """Finds the eye blobs, answers the mean face through a similarity pulled halfway to identity."""
    cols, rows = np.meshgrid(np.arange(IMAGE_SIZE) + PIXEL_CENTER, np.arange(IMAGE_SIZE) + PIXEL_CENTER)

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        out = []
        for image in x[..., 0].astype(np.float64):
            w = np.clip(image - 0.05, 0, None)
            split = (cols * w).sum() / w.sum()
            eyes = []
            for side in (cols >= split, cols < split):  # the subject's left eye is on the image's right
                ws = w * side
                eyes.append(complex((cols * ws).sum() / ws.sum(), (rows * ws).sum() / ws.sum()))
            a = (eyes[0] - eyes[1]) / (MEAN[LEFT] - MEAN[RIGHT])
            t = eyes[1] - a * MEAN[RIGHT]
            pulled = cmath.exp(cmath.log(a) / 2)  # halfway back in scale and turn
            centre = CENTRE + ((a * CENTRE + t) - CENTRE) / 2
            out.append(placed(pulled, centre - pulled * CENTRE))
        return np.array(out, dtype=np.float32)

    return predict


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_similarity_recovers_a_known_framing_and_skips_unlabelled_points():
    a, t = frame(1.3, 20.0, 5.0, -3.0)
    points = placed(a, t).reshape(1, 15, 2)
    points[0, 4:9] = np.nan  # unlabelled
    (fa,), (ft,) = similarity(points, MEAN_KEYPOINTS)
    assert fa == pytest.approx(a) and ft == pytest.approx(t)


def test_only_faces_beyond_the_limits_are_framed_off():
    shift, scale, turn = OFF_LIMITS
    cases = {
        "as trained": (frame(), False),
        "inside every limit": (frame(1 + scale * 0.9, turn * 0.9, shift * 0.6, shift * 0.6), False),
        "moved": (frame(dx=shift + 1), True),
        "larger": (frame(1 + scale + 0.05), True),
        "smaller": (frame(1 / (1 + scale + 0.05)), True),
        "turned": (frame(degrees=-(turn + 2)), True),
        "collapsed points (not trusted)": (frame(0.3), False),
    }
    a = np.array([c[0][0] for c in cases.values()])
    t = np.array([c[0][1] for c in cases.values()])
    assert dict(zip(cases, framed_off(a, t).tolist(), strict=True)) == {k: c[1] for k, c in cases.items()}


def test_a_second_look_frames_far_off_faces_again_and_leaves_the_others_alone():
    framings = [
        frame(),
        frame(1.05, 8.0, 2.0, -1.0),
        frame(1.6, 0, 0, 3),
        frame(1.0, 0, 16, 0),
        frame(0.85, 64, -3, 2),
    ]
    truth = np.stack([placed(*f) for f in framings]).astype(np.float32)
    x = np.stack([eye_image(k) for k in truth])
    calls: list[int] = []
    predict = leaning_model(calls)
    first = predict(x)
    assert rmse(first[0], truth[0]) < 0.05  # a face framed like the training faces: right at once
    assert all(rmse(first[i], truth[i]) > 1.0 for i in (2, 3, 4))  # the model leans on its framing

    final = second_look(predict, x, first)
    assert calls == [5, 3]  # one more call, for the three far-off faces only
    np.testing.assert_array_equal(final[:2], first[:2])
    for i in (2, 3, 4):  # each far-off face ends much nearer the truth (about half its error)
        assert rmse(final[i], truth[i]) < 0.6 * rmse(first[i], truth[i]), i


def test_a_batch_framed_like_the_training_faces_costs_no_second_call():
    truth = np.stack([placed(*frame(1.02, 3.0, 1.0, 0.5)) for _ in range(4)]).astype(np.float32)
    x = np.stack([eye_image(k) for k in truth])
    calls: list[int] = []
    predict = leaning_model(calls)
    first = predict(x)
    assert second_look(predict, x, first) is first and calls == [4]
