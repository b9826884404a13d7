"""A second look at faces framed far from how the training faces are framed.

Other sources cut their 96x96 faces by other conventions: a detector's box, no correction of head
roll, the face larger or off centre. The model learnt the training framing and the augmentation's
range around it (shift, scale, turn), and is worse on faces far outside it: on unseen people's
photos cut by a detector's box, 2.98 px against 1.45 px for the same faces framed like the training
faces (``python -m benchmarks.framings``). The model's first keypoints say where such a face sits:
when their least-squares similarity onto the mean face is further off than :data:`OFF_LIMITS`
(twice the default augmentation's shift, scale and turn), the face is warped onto the training
framing, predicted again and the keypoints mapped back. Faces framed like the training faces are
left alone (none of the 647 validation faces of the benchmark split is re-framed), so accuracy on
them is unchanged. The photo path frames faces from the photo itself instead
(:mod:`fkp.serving.photos`), with real pixels where this warp repeats the crop's edge.

Similarities are complex numbers: a point ``q`` of the mean face sits at ``a * q + t`` in the crop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from fkp.core.keypoints import IMAGE_SIZE, MEAN_KEYPOINTS, PIXEL_CENTER

#: A face is framed again when the frame centre sits further than this many pixels from where the
#: training framing puts it, its size is off by more than this fraction, or it is turned further than
#: this many degrees: twice the default augmentation (``train.augment`` shift 3 px, scale 0.1,
#: rotation 15 deg), so the faces the model trained around are never touched.
OFF_LIMITS = (6.0, 0.2, 30.0)
#: A first guess further off than this (px, size ratio) is not trusted to frame the face on: points
#: collapsed or scattered by a face the model cannot read; it keeps its first prediction.
TRUST_LIMITS = (30.0, 1.6)
_CENTRE = complex(IMAGE_SIZE / 2, IMAGE_SIZE / 2)


def similarity(points: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarities taking ``reference`` (k, 2) onto each of ``points`` (n, k, 2).

    Returns complex ``a, t`` of shape (n,): point j of row i is about ``a[i] * ref_j + t[i]``
    (``|a|`` the scale, ``angle(a)`` the turn). Unlabelled (NaN) points are left out of the fit.
    """
    p = points[..., 0] + 1j * points[..., 1]
    q = reference[:, 0] + 1j * reference[:, 1]
    seen = ~np.isnan(p)
    weight = seen / np.maximum(seen.sum(axis=1, keepdims=True), 1)
    p = np.where(seen, p, 0)
    p_mean = (p * weight).sum(axis=1, keepdims=True)
    q_mean = (q[None] * weight).sum(axis=1, keepdims=True)
    pc, qc = (p - p_mean) * seen, (q[None] - q_mean) * seen
    a = (np.conj(qc) * pc).sum(axis=1) / np.maximum((np.abs(qc) ** 2).sum(axis=1), 1e-12)
    t = p_mean[:, 0] - a * q_mean[:, 0]
    return a, t


def framed_off(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Which faces (similarities onto the mean face) sit beyond :data:`OFF_LIMITS` but within trust."""
    shift, scale, turn = OFF_LIMITS
    moved = np.abs(a * _CENTRE + t - _CENTRE)
    size = np.abs(np.log(np.maximum(np.abs(a), 1e-9)))
    turned = np.abs(np.degrees(np.angle(a)))
    off = (moved > shift) | (size > math.log1p(scale)) | (turned > turn)
    trusted = (moved < TRUST_LIMITS[0]) & (size < math.log(TRUST_LIMITS[1]))
    return off & trusted


def warp_onto_mean(image: np.ndarray, a: complex, t: complex) -> np.ndarray:
    """``image`` (96, 96) resampled so the face of similarity ``a, t`` sits like the mean face."""
    matrix = np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]])
    # continuous coordinates (pixel i at i + 0.5) -> pixel indices, on both sides of the map
    matrix[:, 2] += matrix[:, :2] @ (PIXEL_CENTER, PIXEL_CENTER) - PIXEL_CENTER
    return cv2.warpAffine(
        image,
        matrix,
        (IMAGE_SIZE, IMAGE_SIZE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def second_look(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``first`` (n, 30), with the faces framed far off predicted again on the training framing.

    ``x`` is the model input (n, 96, 96, 1) that ``predict`` maps to (n, 30) keypoints.
    """
    a, t = similarity(first.reshape(len(first), -1, 2), MEAN_KEYPOINTS)
    rows = np.flatnonzero(framed_off(a, t))
    if len(rows) == 0:
        return first
    framed = np.stack([warp_onto_mean(x[i, ..., 0], a[i], t[i]) for i in rows])[..., None]
    again = predict(framed.astype(x.dtype, copy=False)).reshape(len(rows), -1, 2)
    z = again[..., 0] + 1j * again[..., 1]
    back = a[rows, None] * z + t[rows, None]
    out = first.copy()
    out[rows] = np.stack([back.real, back.imag], axis=-1).reshape(len(rows), -1)
    return out
