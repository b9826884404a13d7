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


#: OpenMP threads of one detection: at most this many, and no more than the cores this process may use.
MAX_THREADS = 4


def detection_threads() -> int:
    """How many OpenMP threads one detection uses: every usable core, up to :data:`MAX_THREADS`."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))


@cache
def _library() -> Callable[[np.ndarray], np.ndarray]:
    """The detector, loaded once; a detection runs on :func:`detection_threads` sleeping-when-idle threads.

    Its bundled libgomp reads ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` once, when it is loaded.
    The wheel's ``detect`` holds the GIL, so ``fkp serve``'s request threads detect one photo at a
    time however many clients there are: the only way a detection uses the second core is
    OpenMP. One 604x453 detection took 41 ms on one thread and 32 ms on two; two request
    threads detecting at once got 24 photos/s with one OpenMP thread each and 39 with two
    (in-process, idle 2-core machine). ``PASSIVE`` makes the waiting threads sleep instead of
    spinning: spinning ones fought TensorFlow and the other requests for the cores and made a
    640x480 detection ~10x slower under load (968 ms against 89 ms).
    """
    wanted = {"OMP_NUM_THREADS": str(detection_threads()), "OMP_WAIT_POLICY": "PASSIVE"}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        from yuface.yuface import detect
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
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
