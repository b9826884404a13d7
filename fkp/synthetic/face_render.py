"""Paint a :class:`~fkp.synthetic.face_model.FaceShapes` into a 96x96 grayscale image.

Drawing happens at ``SUPERSAMPLE`` times the output size with sub-pixel (fixed-point)
OpenCV primitives and is then area-averaged down, so features land where the geometry
says to a fraction of a pixel and edges are anti-aliased. Each feature is an alpha mask
composited over the canvas, which lets the iris be clipped by the eye opening.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from fkp.core.keypoints import IMAGE_SIZE
from fkp.synthetic.face_model import FaceShapes, Person, View, face_shapes

SUPERSAMPLE = 2
_SIZE = IMAGE_SIZE * SUPERSAMPLE
_SHIFT = 4  # fixed-point fraction bits for OpenCV's sub-pixel drawing
_ONE = 1 << _SHIFT

Roi = tuple[int, int, int, int]  # y0, y1, x0, x1 on the supersampled canvas


def _hires(points: np.ndarray) -> np.ndarray:
    """Output-pixel coordinates -> supersampled-canvas coordinates (pixel centres line up)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * SUPERSAMPLE - 0.5


def _roi(points: np.ndarray, pad: float) -> Roi | None:
    bx, by, bw, bh = cv2.boundingRect(points.astype(np.float32))
    p = int(pad) + 1
    x0, y0 = max(bx - p, 0), max(by - p, 0)
    x1, y1 = min(bx + bw + p, _SIZE), min(by + bh + p, _SIZE)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _fixed(points: np.ndarray, roi: Roi) -> np.ndarray:
    return np.round((points - (roi[2], roi[0])) * _ONE).astype(np.int32)


def _soften(alpha: np.ndarray, blur: float) -> np.ndarray:
    """Feather a mask; below ~0.4 output px the anti-aliased edge already looks the same."""
    if blur >= 0.4:
        return cv2.GaussianBlur(alpha, (0, 0), blur * SUPERSAMPLE)
    return alpha


def _rounding(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Wide blur of a mask (darkens a face towards its rim), computed at quarter size for speed."""
    h, w = alpha.shape
    small = cv2.resize(alpha, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma * SUPERSAMPLE / 4, borderType=cv2.BORDER_CONSTANT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class _Canvas:
    """A float canvas plus alpha-mask helpers; all coordinates in output pixels."""

    def __init__(self, base: np.ndarray) -> None:
        self.img = base

    def poly(
        self, points: np.ndarray, *, width: float = 0.0, closed: bool = True, blur: float = 0.0, roi=None
    ):
        """Alpha mask of a filled polygon (``width`` 0) or of a stroked polyline."""
        pts = _hires(points)
        if roi is None:
            roi = _roi(pts, pad=3 * blur * SUPERSAMPLE + width * SUPERSAMPLE + 2)
            if roi is None:
                return None
        mask = np.zeros((roi[1] - roi[0], roi[3] - roi[2]), np.uint8)
        fixed = [_fixed(pts, roi)]
        if width <= 0:
            cv2.fillPoly(mask, fixed, 255, cv2.LINE_AA, _SHIFT)
        else:
            thickness = max(1, round(width * SUPERSAMPLE))
            cv2.polylines(mask, fixed, closed, 255, thickness, cv2.LINE_AA, _SHIFT)
        return roi, _soften(mask.astype(np.float32) / 255.0, blur)

    def ellipse(
        self, centre: np.ndarray, axes: tuple[float, float], angle: float, *, blur: float = 0.0, roi=None
    ):
        """Alpha mask of a filled ellipse (axes in output pixels, angle in degrees)."""
        c = _hires(centre)
        if roi is None:
            roi = _roi(c[None, :], pad=max(axes) * SUPERSAMPLE + 3 * blur * SUPERSAMPLE + 2)
            if roi is None:
                return None
        mask = np.zeros((roi[1] - roi[0], roi[3] - roi[2]), np.uint8)
        centre_fx = tuple(int(v) for v in _fixed(c, roi))
        axes_fx = tuple(max(1, round(a * SUPERSAMPLE * _ONE)) for a in axes)
        cv2.ellipse(mask, centre_fx, axes_fx, angle, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        return roi, _soften(mask.astype(np.float32) / 255.0, blur)

    def paint(self, masked, value, opacity: float = 1.0) -> None:
        """Composite ``value`` (scalar or full-canvas field) through a mask from :meth:`poly`."""
        if masked is None:
            return
        (y0, y1, x0, x1), alpha = masked
        sub = self.img[y0:y1, x0:x1]
        if isinstance(value, np.ndarray):
            value = value[y0:y1, x0:x1]
        sub += (alpha * opacity) * (value - sub)


_TEXTURE_SEED = 20240
_TEXTURES_PER_SCALE = 4


@functools.cache
def _texture_bank(cells: int, streaks: int = 1) -> np.ndarray:
    """Smooth random fields twice the canvas size, made once from a fixed seed.

    Cutting a random window out of a ready field costs nothing, while upsampling a new
    grid for every texture of every face dominated rendering time.
    """
    rng = np.random.default_rng([_TEXTURE_SEED, cells, streaks])
    shape = (_TEXTURES_PER_SCALE, max(2, 2 * cells // streaks), 2 * cells)
    grids = rng.normal(0.0, 1.0, shape).astype(np.float32)
    size = 2 * _SIZE
    return np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC) for g in grids])


def _smooth_noise(rng: np.random.Generator, cells: int, streaks: int = 1) -> np.ndarray:
    """Zero-mean, unit-ish smooth field with about ``cells`` blobs across the canvas (a view).

    ``streaks`` > 1 stretches the blobs vertically (hair strands).
    """
    bank = _texture_bank(cells, streaks)
    k, y, x = rng.integers(len(bank)), rng.integers(_SIZE), rng.integers(_SIZE)
    return bank[k, y : y + _SIZE, x : x + _SIZE]


def _background(view: View, rng: np.random.Generator) -> np.ndarray:
    img = np.full((_SIZE, _SIZE), view.background, np.float32)
    img += _smooth_noise(rng, int(rng.choice([3, 4, 6]))) * float(rng.uniform(4, 35))
    if rng.random() < 0.5:  # an edge in the scene: door frame, wall, window
        x = int(rng.integers(0, _SIZE))
        step = float(rng.uniform(-70, 70))
        if rng.random() < 0.5:
            img[:, x:] += step
        else:
            img[:, :x] += step
    return img


def _draw_head(c: _Canvas, person: Person, shapes: FaceShapes, rng: np.random.Generator) -> np.ndarray:
    """Shoulders, neck, hair behind, ears and the shaded face; returns the skin field."""
    angle = np.degrees(shapes.roll)
    s = shapes.scale
    p = shapes.polys
    clothes = person.clothes_tone + _smooth_noise(rng, 4) * 12
    c.paint(c.poly(p["shoulders"]), clothes)
    c.paint(c.poly(p["neck"]), person.skin * 0.72)
    hair = person.hair_tone * (1 + 0.15 * _smooth_noise(rng, 40, streaks=8)) + 6 * _smooth_noise(rng, 5)
    if "back_hair" in p:
        c.paint(c.poly(p["back_hair"]), hair)
    for side in (1, -1):
        centre, (ax, ay) = shapes.ellipses[f"ear_{side}"]
        c.paint(c.ellipse(centre, (ax * s, ay * s), angle, blur=0.6), person.skin * 0.82)
    face = c.poly(p["face"], blur=0.5)
    skin = np.full((_SIZE, _SIZE), person.skin, np.float32) * (1 + 0.04 * _smooth_noise(rng, 6))
    if face is not None:
        (y0, y1, x0, x1), alpha = face
        rounded = _rounding(alpha, 6.0)
        skin[y0:y1, x0:x1] *= 0.6 + 0.4 * np.clip(rounded * 1.4, 0, 1)
        c.paint(face, skin)
        if "beard" in p:  # stubble or beard, kept on the face
            beard = min(person.hair_tone, person.skin * 0.6) * (1 + 0.35 * _smooth_noise(rng, 30))
            _, beard_alpha = c.poly(p["beard"], blur=2.0, roi=face[0])
            c.paint((face[0], beard_alpha * alpha), beard, opacity=person.beard)
    return skin


def _draw_eyes(c: _Canvas, person: Person, shapes: FaceShapes) -> None:
    s, angle = shapes.scale, np.degrees(shapes.roll)
    p = shapes.polys
    dark = min(person.iris_tone, person.skin * 0.35)
    white = person.skin + (230 - person.skin) * 0.45
    for prefix in ("left", "right"):
        c.paint(c.poly(p[f"{prefix}_brow"], blur=0.35), min(person.hair_tone, person.skin * 0.5), opacity=0.9)
        c.paint(c.poly(p[f"{prefix}_socket"], blur=1.8), person.skin * 0.55, opacity=0.3)
        c.paint(c.poly(p[f"{prefix}_crease"], width=0.5, closed=False, blur=0.5), dark, opacity=0.35)
        eye = c.poly(p[f"{prefix}_eye"], blur=0.25)
        if eye is None:
            continue
        c.paint(eye, white)
        roi, eye_alpha = eye
        centre, (r, _) = shapes.ellipses[f"{prefix}_iris"]
        for radius, tone in ((r, person.iris_tone), (0.45 * r, person.iris_tone * 0.35)):
            iris = c.ellipse(centre, (radius * s, radius * s), angle, blur=0.2, roi=roi)
            c.paint((roi, iris[1] * eye_alpha), tone)
        glint = c.ellipse(centre + (-0.35 * r * s, -0.4 * r * s), (0.45, 0.45), 0.0, roi=roi)
        c.paint((roi, glint[1] * eye_alpha), 235.0, opacity=0.7)
        c.paint(c.poly(p[f"{prefix}_lid"], width=0.9, closed=False, blur=0.2), dark, opacity=0.9)
        c.paint(c.poly(p[f"{prefix}_lower_lid"], width=0.5, closed=False, blur=0.3), dark, opacity=0.35)


def _draw_nose(c: _Canvas, person: Person, shapes: FaceShapes) -> None:
    s, angle = shapes.scale, np.degrees(shapes.roll)
    p = shapes.polys
    shade = person.skin * 0.5
    for side in (1, -1):
        c.paint(c.poly(p[f"nose_bridge_{side}"], width=1.2, closed=False, blur=1.2), shade, opacity=0.25)
    c.paint(c.poly(p["nose_shadow"], blur=1.0), shade, opacity=0.25)
    c.paint(c.poly(p["nose_tip"], blur=1.0), min(person.skin * 1.2 + 10, 250), opacity=0.35)
    for side in (1, -1):
        c.paint(c.poly(p[f"nose_wing_{side}"], width=0.6, closed=False, blur=0.4), shade, opacity=0.6)
        centre, (ax, ay) = shapes.ellipses[f"nostril_{side}"]
        c.paint(c.ellipse(centre, (ax * s, ay * s), angle, blur=0.3), person.skin * 0.3, opacity=0.8)
    c.paint(c.poly(p["nose_base"], width=0.5, closed=False, blur=0.4), shade, opacity=0.45)


def _draw_mouth(c: _Canvas, person: Person, shapes: FaceShapes) -> None:
    p = shapes.polys
    lip = person.skin * person.lip_tone
    c.paint(c.poly(p["lip_shadow"], blur=1.0), person.skin * 0.5, opacity=0.35)
    c.paint(c.poly(p["upper_lip"], blur=0.35), lip * 0.85)
    c.paint(c.poly(p["lower_lip"], blur=0.35), lip)
    c.paint(c.poly(p["lip_highlight"], blur=0.8), min(lip * 1.25 + 10, 250), opacity=0.4)
    if "mouth_gap" in p:
        c.paint(c.poly(p["mouth_gap"], blur=0.2), 22.0)
    if "teeth" in p:
        c.paint(c.poly(p["teeth"], blur=0.2), 190.0, opacity=0.7)
    c.paint(c.poly(p["mouth_line"], width=0.7, closed=False, blur=0.2), lip * 0.35, opacity=0.85)


def _draw_front(c: _Canvas, person: Person, shapes: FaceShapes, rng: np.random.Generator) -> None:
    p = shapes.polys
    if "hair" in p:
        hair = person.hair_tone * (1 + 0.15 * _smooth_noise(rng, 40, streaks=8)) + 8 * _smooth_noise(rng, 5)
        c.paint(c.poly(p["hair"], blur=0.6), np.clip(hair, 0, 255))
    if person.glasses:
        for name in ("left_lens", "right_lens"):
            c.paint(c.poly(p[name], width=0.8, closed=True, blur=0.2), person.frame_tone, opacity=0.9)
        for name in ("glasses_bridge", "left_temple", "right_temple"):
            c.paint(c.poly(p[name], width=0.8, closed=False, blur=0.2), person.frame_tone, opacity=0.9)


def _camera(img: np.ndarray, view: View, rng: np.random.Generator) -> np.ndarray:
    """Downsample, then lighting gradient, exposure, focus blur and sensor noise."""
    out = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    axis = (np.arange(IMAGE_SIZE, dtype=np.float32) - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2)
    gradient = np.cos(view.light_angle) * axis[None, :] + np.sin(view.light_angle) * axis[:, None]
    out *= view.brightness * (1 + view.light * gradient)
    mean = float(out.mean())
    out = (out - mean) * view.contrast + mean
    if view.blur > 0.2:
        out = cv2.GaussianBlur(out, (0, 0), view.blur)
    out += rng.normal(0.0, view.noise, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_shapes(person: Person, view: View, shapes: FaceShapes, rng: np.random.Generator) -> np.ndarray:
    """Paint already-built ``shapes``; returns a (96, 96) uint8 image."""
    canvas = _Canvas(_background(view, rng))
    _draw_head(canvas, person, shapes, rng)
    _draw_eyes(canvas, person, shapes)
    _draw_nose(canvas, person, shapes)
    _draw_mouth(canvas, person, shapes)
    _draw_front(canvas, person, shapes, rng)
    return _camera(canvas.img, view, rng)


def render_face(person: Person, view: View, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (96, 96) uint8 image and its (30,) float32 keypoints in Kaggle column order."""
    shapes = face_shapes(person, view)
    image = render_shapes(person, view, shapes, rng)
    return image, shapes.keypoints.reshape(-1).astype(np.float32)
