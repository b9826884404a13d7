"""YuNet (libfacedetection) through the ``yuface`` wheel: boxes and five landmarks per face.

The network's weights are compiled into the wheel's shared library. Its raw answer is one
int16 row per face: confidence x 100, box ``x, y, w, h``, five landmarks ``x, y`` (pixel
indices), then an unused value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import numpy as np

from fkp.serving.detect import Box, Detection

#: Faces below this confidence are dropped (libfacedetection's own default is 0.5; on the sample
#: faces and photos we measured, real faces score 0.75-0.95 and the rest of the picture < 0.4).
MIN_SCORE = 0.5


@cache
def _library() -> Callable[[np.ndarray], np.ndarray]:
    """The detector, loaded once with a single OpenMP thread.

    Its bundled libgomp reads ``OMP_NUM_THREADS`` once, when it is loaded. ``fkp serve`` already
    runs photos in parallel threads; spinning OpenMP threads fighting them and TensorFlow for
    two cores made one 640x480 detection ~10x slower (968 ms against 89 ms, measured under load).
    """
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from yuface.yuface import detect
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return detect


def parse(rows: np.ndarray, min_score: float = MIN_SCORE) -> list[Detection]:
    """Detections from libfacedetection's int16 rows, in continuous pixel coordinates."""
    out = []
    for row in np.asarray(rows, dtype=np.float64).reshape(-1, 16):
        score = row[0] / 100.0
        if score < min_score:
            continue
        x, y, w, h = row[1:5]
        out.append(Detection(Box(x, y, w, h), score, row[5:15].reshape(5, 2) + 0.5))
    return out


def detect(bgr: np.ndarray) -> list[Detection]:
    """Faces in a contiguous 8-bit BGR picture, at its own resolution."""
    return parse(_library()(bgr))
