"""How the 96x96 model copes with faces framed by other conventions than its training data's.

Other sources crop their faces differently: a face detector's box instead of labelled points, no
correction of head roll, the face a little larger or smaller, higher or lower in the frame, a
looser jitter. A model that has learnt where keypoints usually sit, rather than where they are in
the image, loses accuracy on every such source. This cuts the unseen people's original photos
(``youtube-faces-photos``, people a ``benchmarks.photo_model`` model never trained on) under
several conventions, each straight from the photo pixels, and scores each model on every one:
RMSE in 96x96 pixels over the 15 keypoints, the truth mapped through the same crop; each model with
one look at every crop and with its second look at faces it finds framed far off
(:mod:`fkp.core.reframe`, on by default wherever fkp predicts on crops).

    python -m benchmarks.framings --photos youtube-faces-photos --model a.keras [--model b.keras]

Conventions (all scored on the same faces):

- ``training``: the photo's own labels fitted onto the training faces' mean layout by scale and
  shift, head roll left in: how the training faces were framed (without their jitter).
- ``aligned``: the photo path's first framing (detector landmarks on their template, roll removed).
- ``box``: the detector's box made square about its centre, no roll correction, its size set so
  that the median face has the training scale (what a source cropping detector boxes delivers).
- ``larger``/``smaller``/``lower``/``higher``: the training framing with the face 12 % larger or
  smaller, or 4 px lower or higher: one source's framing offset against another's.
- ``loose``: the training framing with a random similarity per face (scale sd 8 %, roll sd 8 deg,
  shift sd 3 px; seeded): a source with looser framing.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from fkp.core.keypoints import IMAGE_SIZE, MEAN_KEYPOINTS

OFFSET_SCALE, OFFSET_PX = 0.12, 4.0
LOOSE = (0.08, 8.0, 3.0)  # scale sd, roll sd (deg), shift sd (px, 96x96 units)


def fit_scale_shift(points: np.ndarray, reference: np.ndarray):
    """The upright crop whose least-squares scale + shift puts ``points`` on ``reference``."""
    from fkp.serving.align import FaceCrop

    pc, qc = points - points.mean(0), reference - reference.mean(0)
    s = float((pc * qc).sum() / (qc * qc).sum())  # photo px per model px
    x0, y0 = points.mean(0) - s * reference.mean(0)
    return FaceCrop(float(x0), float(y0), s * IMAGE_SIZE, 0.0)


def moved(crop, scale: float = 1.0, angle: float = 0.0, dx: float = 0.0, dy: float = 0.0):
    """``crop`` with its content scaled by ``scale`` and turned by ``angle`` about the frame's centre,
    then moved by (dx, dy) model pixels: the face appears ``scale`` times larger, ``dy`` px lower."""
    from fkp.serving.align import FaceCrop

    size = crop.size / scale
    centre = crop.to_photo(np.array([IMAGE_SIZE / 2 - dx, IMAGE_SIZE / 2 - dy]))
    turned = FaceCrop(0.0, 0.0, size, crop.angle + angle)
    x0, y0 = centre - turned.to_photo(np.array([IMAGE_SIZE / 2, IMAGE_SIZE / 2]))
    return FaceCrop(float(x0), float(y0), size, crop.angle + angle)


def conventions(seed: int) -> dict[str, Callable]:
    """name -> f(labels crop, aligned crop, box crop, rng) -> crop."""
    rng = np.random.default_rng(seed)

    def loose(t, a, b):
        s, r, d = LOOSE
        return moved(t, math.exp(rng.normal(0, s)), rng.normal(0, r), *rng.normal(0, d, 2))

    return {
        "training": lambda t, a, b: t,
        "aligned": lambda t, a, b: a,
        "box": lambda t, a, b: b,
        "larger": lambda t, a, b: moved(t, 1 + OFFSET_SCALE),
        "smaller": lambda t, a, b: moved(t, 1 - OFFSET_SCALE),
        "lower": lambda t, a, b: moved(t, dy=OFFSET_PX),
        "higher": lambda t, a, b: moved(t, dy=-OFFSET_PX),
        "loose": loose,
    }


def cut_faces(
    photos_dir: Path, groups: set[int], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per convention: the (n, 96, 96) crops of the held-out people's photos and their (n, 30) truth."""
    from benchmarks.photo_data import read_photo_set
    from fkp.serving.align import FaceCrop, extract_crop, fit_crop
    from fkp.serving.detect import LANDMARK_TEMPLATE, detect_faces

    rows = []
    for photo in read_photo_set(photos_dir):
        if photo.group not in groups:
            continue
        colour = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        faces = detect_faces(colour)
        if not faces:
            continue
        box = faces[0].box
        side = max(box.w, box.h)
        square = FaceCrop(box.x + box.w / 2 - side / 2, box.y + box.h / 2 - side / 2, side)
        truth = photo.keypoints
        rows.append(
            (
                photo,
                cv2.imread(str(photo.path), cv2.IMREAD_GRAYSCALE),  # read once, cut eight ways
                fit_scale_shift(truth, MEAN_KEYPOINTS),
                fit_crop(faces[0].landmarks, LANDMARK_TEMPLATE),
                square,
            )
        )
    # the box convention's size: the median face at the training scale
    ratio = float(np.median([t.size / b.size for _, _, t, _, b in rows]))
    images: dict[str, list] = {}
    truths: dict[str, list] = {}
    for name, frame in conventions(seed).items():
        for photo, gray, t, a, b in rows:
            b = moved(b, 1 / ratio)
            crop = frame(t, a, b)
            images.setdefault(name, []).append(extract_crop(gray, crop))
            truths.setdefault(name, []).append(crop.to_crop(photo.keypoints.reshape(-1)))
    return {k: np.stack(v) for k, v in images.items()}, {k: np.stack(v) for k, v in truths.items()}


def held_out(model: Path) -> set[int]:
    from benchmarks.photo_model import held_out_groups

    groups = held_out_groups(model)
    if groups is None:
        raise SystemExit(
            f"{model}: no {model.name}.heldout.json beside it (train it with benchmarks.photo_model)"
        )
    return groups


def main() -> None:
    from fkp.core.metrics import rmse
    from fkp.core.predictor import load_model, predict_keypoints

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()

    groups = set.intersection(*(held_out(m) for m in args.model))
    images, truths = cut_faces(args.photos, groups, args.seed)
    names = list(images)
    print(f"{len(images['training'])} photos of {len(groups)} unseen people")
    print("| model | prediction | " + " | ".join(names) + " | worst / training |")
    print("|---|---|" + "---|" * (len(names) + 1))
    report = {}
    for path in args.model:
        model = load_model(path)
        for look, second in (("one look", False), ("second look", True)):
            scores = {
                n: rmse(predict_keypoints(model, images[n], tta_flip=False, second_look=second), truths[n])
                for n in names
            }
            report[f"{path} {look}"] = scores
            worst = max(scores.values()) / scores["training"]
            cells = " | ".join(f"{scores[n]:.3f}" for n in names)
            print(f"| {path.stem} | {look} | {cells} | x{worst:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
