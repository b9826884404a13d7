"""Parametric face: who a person is (:class:`Person`), how one frame shows them (:class:`View`),
and the projected outlines the renderer draws.

All shapes are built in a canonical 3-D frame (pixels at scale 1, origin between the eyes,
x towards the image's right, y down, z towards the camera) and pass through one projection
(yaw, pitch, roll, scale, shift). The 15 keypoints are anchor points of those same shapes,
so a label is exactly where its feature is drawn. Kaggle's convention holds: the subject's
*left* eye is at +x, i.e. on the image's right.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from fkp.core.keypoints import KEYPOINT_NAMES

#: Mean position of the point between the eyes in real 96x96 Kaggle-style crops.
MID_EYE = (47.9, 38.9)

HAIR_STYLES = ("none", "short", "long", "fringe")
_KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@dataclass(frozen=True)
class Person:
    """Identity: face shape and appearance shared by all frames of one person."""

    eye_half: float  # half the distance between the eye centres
    eye_w: float  # corner-to-corner eye width
    eye_open: float  # lid opening height
    eye_tilt: float  # outer corner above inner corner
    iris_r: float
    brow_in: tuple[float, float]  # inner end (x, y), for the subject's left brow
    brow_out: tuple[float, float]
    brow_thick: float
    brow_arch: float
    nose_len: float  # eyes to nose tip
    nose_w: float  # half width of the nose wings
    mouth_y: float  # eyes to the line through the mouth corners
    mouth_half: float
    lip_up: float  # upper lip height above the corner line
    lip_low: float  # lower lip height below the lips' parting line
    cupid: float
    face_w: float  # half width of the face outline
    face_top: float
    chin: float
    jaw: float  # 1 = round chin, smaller = narrower jaw
    jitter: np.ndarray = field(compare=False, repr=False)  # (15, 2) per-keypoint asymmetry
    skin: float = 150.0
    lip_tone: float = 0.8  # lip brightness relative to skin
    iris_tone: float = 50.0
    hair_tone: float = 40.0
    hair_style: str = "short"
    hairline: float = -28.0
    hair_len: float = 80.0
    glasses: bool = False
    frame_tone: float = 30.0
    beard: float = 0.0  # beard opacity, 0 = none
    clothes_tone: float = 60.0
    background: float = 120.0


@dataclass(frozen=True)
class View:
    """One frame of a person: pose, expression, lighting and camera."""

    scale: float
    roll: float  # radians, in-plane
    yaw: float  # radians, head turned left/right
    pitch: float  # radians, head tilted up/down
    cx: float  # image position of the point between the eyes
    cy: float
    mouth_open: float
    smile: float  # mouth corners raised by this much
    brow_raise: float
    gaze: tuple[float, float]  # iris offset from the eye's middle
    light_angle: float
    light: float  # strength of the directional lighting gradient
    brightness: float
    contrast: float
    blur: float  # Gaussian sigma in output pixels
    noise: float  # sensor noise sigma in grey levels
    background: float


def _normal(rng: np.random.Generator, mean: float, rel_sd: float, lo: float = 0.6, hi: float = 1.4) -> float:
    """``mean`` times a clipped normal factor: keeps identities plausible."""
    return float(mean * np.clip(rng.normal(1.0, rel_sd), lo, hi))


def sample_person(rng: np.random.Generator) -> Person:
    """Draw one identity; means and spreads follow real 96x96 face crops."""
    style = str(rng.choice(HAIR_STYLES, p=[0.12, 0.43, 0.3, 0.15]))
    skin = float(rng.uniform(70, 215))
    hair = float(rng.choice([rng.uniform(10, 60), rng.uniform(60, 200)], p=[0.7, 0.3]))
    hairline = float(rng.uniform(-19, -15) if style == "fringe" else rng.uniform(-36, -24))
    return Person(
        eye_half=_normal(rng, 17.1, 0.05),
        eye_w=_normal(rng, 12.8, 0.08),
        eye_open=_normal(rng, 5.0, 0.15),
        eye_tilt=float(rng.normal(0.5, 0.6)),
        iris_r=_normal(rng, 2.9, 0.08),
        brow_in=(_normal(rng, 9.9, 0.08), -_normal(rng, 11.0, 0.1)),
        brow_out=(_normal(rng, 31.0, 0.05), -_normal(rng, 9.0, 0.12)),
        brow_thick=_normal(rng, 2.4, 0.25),
        brow_arch=float(np.clip(rng.normal(1.8, 0.7), 0.0, 3.5)),
        nose_len=_normal(rng, 20.2, 0.07),
        nose_w=_normal(rng, 4.8, 0.12),
        mouth_y=_normal(rng, 37.0, 0.05),
        mouth_half=_normal(rng, 13.8, 0.08),
        lip_up=_normal(rng, 4.0, 0.2),
        lip_low=_normal(rng, 5.7, 0.2),
        cupid=float(rng.uniform(0.2, 1.0)),
        face_w=_normal(rng, 39.0, 0.05),
        face_top=-_normal(rng, 44.0, 0.05),
        chin=_normal(rng, 53.0, 0.04),
        jaw=float(rng.uniform(0.5, 0.85)),
        jitter=rng.normal(0.0, 0.35, size=(len(KEYPOINT_NAMES), 2)),
        skin=skin,
        lip_tone=float(rng.uniform(0.55, 0.8)),
        iris_tone=float(rng.uniform(15, 90)),
        hair_tone=hair,
        hair_style=style,
        hairline=hairline,
        hair_len=float(rng.uniform(50, 110)),
        glasses=bool(rng.random() < 0.1),
        frame_tone=float(rng.uniform(10, 120)),
        beard=float(rng.uniform(0.25, 0.6)) if rng.random() < 0.12 else 0.0,
        clothes_tone=float(rng.uniform(15, 230)),
        background=float(rng.uniform(15, 235)),
    )


def sample_view(rng: np.random.Generator, person: Person) -> View:
    """Draw one frame of ``person``: pose, expression, lighting, camera."""
    deg = np.pi / 180.0
    open_ = 0.0 if rng.random() < 0.7 else float(rng.uniform(0.5, 5.0))
    return View(
        scale=float(np.exp(np.clip(rng.normal(0.0, 0.05), -0.15, 0.15))),
        roll=float(np.clip(rng.normal(0.0, 6.0), -20, 20) * deg),
        yaw=float(np.clip(rng.normal(0.0, 13.0), -35, 35) * deg),
        pitch=float(np.clip(rng.normal(0.0, 7.0), -20, 20) * deg),
        cx=MID_EYE[0] + float(np.clip(rng.normal(0.0, 2.3), -7, 7)),
        cy=MID_EYE[1] + float(np.clip(rng.normal(0.0, 2.4), -7, 7)),
        mouth_open=open_,
        smile=float(np.clip(rng.normal(0.0, 0.8), -2.0, 2.5)),
        brow_raise=float(np.clip(rng.normal(0.0, 0.8), -1.5, 2.5)),
        gaze=(float(np.clip(rng.normal(0, 0.6), -1.2, 1.2)), float(np.clip(rng.normal(0, 0.3), -0.6, 0.6))),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light=float(rng.uniform(0.0, 0.45)),
        brightness=float(np.clip(rng.normal(1.0, 0.12), 0.7, 1.3)),
        contrast=float(rng.uniform(0.75, 1.25)),
        blur=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(1.0, 7.0)),
        background=float(np.clip(person.background + rng.normal(0, 12), 5, 250)),
    )


@functools.cache
def _bezier_basis(n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    return np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t**2], axis=1)


def _quad(p0: np.ndarray, c: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    """Quadratic Bezier samples; projection is affine, so projecting samples is exact."""
    return _bezier_basis(n) @ np.stack([p0, c, p2])


def _p(x: float, y: float, z: float) -> np.ndarray:
    return np.array([x, y, z], dtype=np.float64)


def project(points: np.ndarray, view: View) -> np.ndarray:
    """Canonical 3-D points ``(..., 3)`` -> image coordinates ``(..., 2)`` (orthographic)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    cy_, sy_ = np.cos(view.yaw), np.sin(view.yaw)
    x1 = x * cy_ + z * sy_
    z1 = -x * sy_ + z * cy_
    y2 = y * np.cos(view.pitch) - z1 * np.sin(view.pitch)
    cr, sr = np.cos(view.roll), np.sin(view.roll)
    u = view.scale * (x1 * cr - y2 * sr) + view.cx
    v = view.scale * (x1 * sr + y2 * cr) + view.cy
    return np.stack([u, v], axis=-1)


@dataclass(frozen=True)
class FaceShapes:
    """Projected outlines (image pixels) and the keypoints anchored on them."""

    keypoints: np.ndarray  # (15, 2) in KEYPOINT_NAMES order
    polys: dict[str, np.ndarray]  # name -> (k, 2) polygon / polyline
    ellipses: dict[str, tuple[np.ndarray, tuple[float, float]]]  # name -> (centre (2,), canonical half axes)
    scale: float
    roll: float


def _anchor(person: Person, name: str, x: float, y: float, z: float) -> np.ndarray:
    j = person.jitter[_KP[name]]
    return _p(x + j[0], y + j[1], z)


def _stroke(center: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """Closed polygon around a 3-D centreline, ``thickness`` per sample, tapering where it is 0."""
    d = np.gradient(center[:, :2], axis=0)
    normal = d[:, ::-1] * (-1.0, 1.0) / np.sqrt((d**2).sum(axis=1, keepdims=True))
    off = np.zeros_like(center)
    off[:, :2] = normal * (thickness[:, None] / 2)
    return np.concatenate([center + off, (center - off)[::-1]])


def _ellipse3d(cx: float, cy: float, z: float, ax: float, ay: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t), np.full(n, z)], axis=1)


def _face_outline(person: Person, scale: float = 1.0, lift: float = 0.0, n: int = 48) -> np.ndarray:
    """Head outline: squarish dome above the cheekbones, tapering jaw below.

    The sides sit further back (z) than the middle, so yaw swings them like a head.
    """
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    widest = 5.0  # cheekbone line, just below the eyes
    up = (widest - person.face_top) * scale + lift
    down = (person.chin - widest) * scale
    s, c = np.sin(t), np.cos(t)
    power = np.where(s < 0, 2 / 2.8, 2 / 2.2)  # superellipse exponents: rounder dome, softer jaw
    x = person.face_w * scale * np.sign(c) * np.abs(c) ** power
    y = widest + np.where(s < 0, up, down) * np.sign(s) * np.abs(s) ** power
    x *= 1 - (1 - person.jaw) * np.clip((y - widest) / down, 0, 1) ** 2
    z = -10 - 8 * c**2
    return np.stack([x, y, z], axis=1)


def _eye(person: Person, view: View, side: int, kp: dict, polys: dict, ellipses: dict) -> None:
    prefix = "left" if side > 0 else "right"
    w, op = person.eye_w, person.eye_open * (1 - 0.1 * view.smile / 3)
    j = person.jitter[_KP[f"{prefix}_eye_center"]]
    mid = _p(side * person.eye_half + j[0], j[1], 0.0)
    inner = _anchor(person, f"{prefix}_eye_inner_corner", side * (person.eye_half - 0.52 * w), 0.1, 1.0)
    outer = _anchor(
        person, f"{prefix}_eye_outer_corner", side * (person.eye_half + 0.48 * w), -person.eye_tilt, -4
    )
    centre = (inner + outer) / 2
    upper = _quad(inner, centre + _p(-side * 0.04 * w, -1.2 * op, 1.0), outer, 12)
    lower = _quad(inner, centre + _p(side * 0.05 * w, 0.8 * op, 1.0), outer, 12)
    iris = mid + _p(view.gaze[0], view.gaze[1], 1.0)
    kp[f"{prefix}_eye_center"] = iris
    kp[f"{prefix}_eye_inner_corner"] = inner
    kp[f"{prefix}_eye_outer_corner"] = outer
    polys[f"{prefix}_eye"] = np.concatenate([upper, lower[::-1][1:-1]])
    polys[f"{prefix}_lid"] = upper
    polys[f"{prefix}_lower_lid"] = lower
    polys[f"{prefix}_crease"] = _quad(
        inner + _p(0, -1.5, 0), centre + _p(0, -2.0 * op - 3.5, 1), outer + _p(side * 0.5, -1.6, 0), 10
    )
    polys[f"{prefix}_socket"] = _ellipse3d(centre[0], centre[1] - 1.0, -1, 0.8 * w, 1.7 * op)
    ellipses[f"{prefix}_iris"] = (iris, (person.iris_r, person.iris_r))
    if person.glasses:
        cx, cy = centre[0], centre[1] + 0.8
        polys[f"{prefix}_lens"] = _ellipse3d(cx, cy, 3, 0.82 * w, 0.58 * w)
        polys[f"{prefix}_temple"] = np.array(
            [[cx + side * 0.82 * w, cy, 2], [side * person.face_w, cy - 1, -12]]
        )
        if side > 0:
            a, b = _p(cx - 0.82 * w, cy, 4), _p(-(cx - 0.82 * w), cy, 4)
            polys["glasses_bridge"] = _quad(a, (a + b) / 2 + _p(0, -2.5, 2), b, 8)


def _brow(person: Person, view: View, side: int, kp: dict, polys: dict) -> None:
    prefix = "left" if side > 0 else "right"
    raise_ = view.brow_raise
    inner = _anchor(
        person, f"{prefix}_eyebrow_inner_end", side * person.brow_in[0], person.brow_in[1] - raise_, 3
    )
    outer = _anchor(
        person,
        f"{prefix}_eyebrow_outer_end",
        side * person.brow_out[0],
        person.brow_out[1] - 0.7 * raise_,
        -5,
    )
    ctrl = (inner + outer) / 2 + _p(side * 0.12 * abs(outer[0] - inner[0]), -2 * person.brow_arch, 0)
    line = _quad(inner, ctrl, outer, 16)
    u = np.linspace(0, 1, len(line))
    taper = np.sqrt(np.clip(u / 0.12, 0, 1) * np.clip((1 - u) / 0.15, 0, 1))
    kp[f"{prefix}_eyebrow_inner_end"] = inner
    kp[f"{prefix}_eyebrow_outer_end"] = outer
    polys[f"{prefix}_brow"] = _stroke(line, person.brow_thick * (1 - 0.55 * u) * taper)


def _nose(person: Person, kp: dict, polys: dict, ellipses: dict) -> None:
    tip = _anchor(person, "nose_tip", 0.0, person.nose_len, 16)
    kp["nose_tip"] = tip
    x, y, w = tip[0], tip[1], person.nose_w
    for side in (1, -1):
        wing = _quad(
            _p(x + side * w, y - 2.5, 8),
            _p(x + side * w * 1.2, y + 3.2, 8),
            _p(x + side * w * 0.3, y + 2.8, 11),
            8,
        )
        polys[f"nose_wing_{side}"] = wing
        polys[f"nose_bridge_{side}"] = _quad(
            _p(side * 2.8, 2, 3), _p(side * 2.4, y * 0.55, 8), _p(x + side * w * 0.7, y - 3.5, 11), 8
        )
        ellipses[f"nostril_{side}"] = (_p(x + side * w * 0.5, y + 2.1, 10), (1.4, 0.8))
    polys["nose_base"] = _quad(
        _p(x - w * 0.3, y + 2.8, 11), _p(x, y + 3.8, 13), _p(x + w * 0.3, y + 2.8, 11), 6
    )
    polys["nose_tip"] = _ellipse3d(x, y - 0.8, 16, 2.2, 1.7, 12)
    polys["nose_shadow"] = _ellipse3d(x, y + 4.5, 10, w * 0.9, 1.6, 14)


def _mouth(person: Person, view: View, kp: dict, polys: dict) -> None:
    my, h, op = person.mouth_y, person.mouth_half, view.mouth_open
    left = _anchor(person, "mouth_left_corner", h, my - view.smile, -3)
    right = _anchor(person, "mouth_right_corner", -h, my - view.smile, -3)
    top = _anchor(person, "mouth_center_top_lip", 0.0, my - person.lip_up, 6)
    line_mid = _p(top[0], my + 0.4, 5)
    bottom = _anchor(person, "mouth_center_bottom_lip", 0.0, my + 0.4 + op + person.lip_low, 5)
    kp.update(mouth_left_corner=left, mouth_right_corner=right, mouth_center_top_lip=top)
    kp["mouth_center_bottom_lip"] = bottom

    def through(a: np.ndarray, m: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _quad(a, 2 * m - (a + b) / 2, b, 14)  # passes through m at its middle

    bow = person.cupid
    upper_r = _quad(right, _p(0.55 * right[0] + 0.45 * top[0], top[1] - 1.4 * bow, 5), top, 9)
    upper_l = _quad(top, _p(0.55 * left[0] + 0.45 * top[0], top[1] - 1.4 * bow, 5), left, 9)
    parting = through(right, line_mid, left)
    lower_edge = through(right, line_mid + _p(0, op, 0), left)
    lower_outer = through(left, bottom, right)
    polys["upper_lip"] = np.concatenate([upper_r, upper_l[1:], parting[::-1][1:-1]])
    polys["lower_lip"] = np.concatenate([lower_edge, lower_outer[1:-1]])
    polys["mouth_line"] = parting
    low = bottom[1] - (line_mid[1] + op)
    polys["lip_shadow"] = _ellipse3d(bottom[0], bottom[1] + 1.2, 3, 0.45 * h, 1.8, 16)
    polys["lip_highlight"] = _ellipse3d(bottom[0], bottom[1] - 0.55 * low, 6, 0.3 * h, 0.22 * low, 12)
    if op > 0.3:
        polys["mouth_gap"] = np.concatenate([parting, lower_edge[::-1][1:-1]])
        if op > 1.5:
            polys["teeth"] = np.concatenate([parting, (parting + _p(0, min(op, 3.0) * 0.6, 0))[::-1][1:-1]])


def _head(person: Person, polys: dict, ellipses: dict) -> None:
    w = person.face_w
    polys["face"] = _face_outline(person)
    polys["neck"] = np.array(
        [[-0.55 * w, 25, -25], [0.55 * w, 25, -25], [0.62 * w, 140, -25], [-0.62 * w, 140, -25]]
    )
    polys["shoulders"] = _ellipse3d(0, 150, -25, 2.8 * w, 62, 40)
    for side in (1, -1):
        ellipses[f"ear_{side}"] = (_p(side * 0.97 * w, 12, -22), (4.5, 11.0))
    if person.beard:
        outline = _face_outline(person)
        lower = outline[outline[:, 1] > person.nose_len + 2]
        lower = lower[np.argsort(np.arctan2(lower[:, 1], lower[:, 0]))]  # right cheek -> chin -> left
        lower[[0, -1], 1] += 6  # let the beard thin out up the cheeks
        upper = np.array(
            [
                [-person.face_w * 0.6, person.nose_len + 6, 0],
                [-person.nose_w - 1.5, person.nose_len + 3.5, 8],
                [person.nose_w + 1.5, person.nose_len + 3.5, 8],
                [person.face_w * 0.6, person.nose_len + 6, 0],
            ]
        )
        polys["beard"] = np.concatenate([lower, upper])
    if person.hair_style == "none":
        return
    cap = _face_outline(person, scale=1.07, lift=4.0, n=64)
    top = cap[cap[:, 1] < person.hairline + 14]
    top = top[np.argsort(np.arctan2(top[:, 1] - 10, top[:, 0]))]  # left temple -> over the top -> right
    a, b = top[0], top[-1]
    dip = _p(0, person.hairline, 2)
    hairline = _quad(b, 2 * dip - (a + b) / 2, a, 20)
    if person.hair_style == "fringe":
        hairline[:, 1] += 1.2 * np.sin(np.linspace(0, 9 * np.pi, len(hairline)))
    polys["hair"] = np.concatenate([top, hairline[1:-1]])
    if person.hair_style == "long":
        side_x = 1.22 * w
        back = _face_outline(person, scale=1.12, lift=6.0, n=64)
        back = back[back[:, 1] < 10]
        back = back[np.argsort(np.arctan2(back[:, 1] - 10, back[:, 0]))]
        ends = np.array([[side_x, person.hair_len, -20], [-side_x, person.hair_len, -20]])
        polys["back_hair"] = np.concatenate([back, ends])


@functools.lru_cache(maxsize=4)
def _person_shapes(person: Person) -> tuple[dict, dict, dict]:
    """Head, hair and nose do not change with expression: build them once per person."""
    kp: dict[str, np.ndarray] = {}
    polys: dict[str, np.ndarray] = {}
    ellipses: dict[str, tuple[np.ndarray, tuple[float, float]]] = {}
    _head(person, polys, ellipses)
    _nose(person, kp, polys, ellipses)
    return kp, polys, ellipses


def face_shapes(person: Person, view: View) -> FaceShapes:
    """Build every outline of one frame and project it; keypoints come from the same anchors."""
    kp: dict[str, np.ndarray] = {}
    polys: dict[str, np.ndarray] = {}
    ellipses: dict[str, tuple[np.ndarray, tuple[float, float]]] = {}
    fixed_kp, fixed_polys, fixed_ellipses = _person_shapes(person)
    kp.update(fixed_kp)
    polys.update(fixed_polys)
    ellipses.update(fixed_ellipses)
    for side in (1, -1):
        _eye(person, view, side, kp, polys, ellipses)
        _brow(person, view, side, kp, polys)
    _mouth(person, view, kp, polys)
    # one projection call for everything: keypoints, ellipse centres, then every outline
    names = list(polys)
    sizes = [len(polys[name]) for name in names]
    parts = [np.stack([kp[name] for name in KEYPOINT_NAMES]), np.stack([c for c, _ in ellipses.values()])]
    flat = project(np.concatenate(parts + [polys[name] for name in names]), view)
    n_kp, n_ell = len(KEYPOINT_NAMES), len(ellipses)
    centres = flat[n_kp : n_kp + n_ell]
    chunks = np.split(flat[n_kp + n_ell :], np.cumsum(sizes)[:-1])
    return FaceShapes(
        keypoints=flat[:n_kp],
        polys=dict(zip(names, chunks, strict=True)),
        ellipses={name: (centres[i], axes) for i, (name, (_, axes)) in enumerate(ellipses.items())},
        scale=view.scale,
        roll=view.roll,
    )
