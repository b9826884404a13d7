"""Where the face detector puts its five landmarks on faces framed like the training faces.

Photo crops are framed by fitting the detector's landmarks onto fixed positions in the 96x96
frame (:data:`fkp.serving.detect.LANDMARK_TEMPLATE`). Those positions must be where *this
detector* marks a face that sits in its frame like a training face, not the Kaggle mean
keypoints of the same names: the detector's own eye centres, nose tip and mouth corners follow
another labelling convention (its eyes sit ~4 px closer together and its nose tip ~5 px higher
than Kaggle's), and fitting them onto Kaggle's points frames every face too large and too high.

This runs the detector on Kaggle-format training faces (upscaled so it sees them at a
comfortable size, the border repeated around them) and prints the mean position of each
landmark in the 96x96 frame, the table to paste; with ``--photos`` it also shows how far photo
crops framed by the detector land from the framing of the training faces (the photo's own labels
fitted onto the training faces' mean keypoints), in 96x96 pixels.

    python -m benchmarks.detector_template --csv training.csv.gz [--groups groups.csv \
        --exclude <model>.heldout.json] [--photos youtube-faces-photos] [--every 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from fkp.core.keypoints import MEAN_FACE

UPSCALE, BORDER = 3, 96


def detector_landmarks(images: np.ndarray) -> tuple[np.ndarray, int]:
    """(n_found, 5, 2) landmarks of the largest face in each 96x96 image, in its frame."""
    from fkp.serving.detect import detect_faces

    found = []
    for image in images:
        big = cv2.resize(image, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REPLICATE)
        faces = detect_faces(big)
        if faces:
            found.append((faces[0].landmarks - BORDER) / UPSCALE)
    return np.array(found).reshape(-1, 5, 2), len(images)


def framing_offsets(photos_dir: Path, template: np.ndarray, label_layout: np.ndarray) -> np.ndarray:
    """Per photo: scale ratio, angle difference and RMS displacement (96x96 px) of the crop the
    detector's landmarks frame on ``template`` against the crop the photo's labels frame on
    ``label_layout`` (the training faces' mean keypoints: where their framing puts a face)."""
    from benchmarks.photo_data import read_photo_set
    from fkp.serving.align import fit_crop
    from fkp.serving.detect import detect_faces

    rows = []
    for photo in read_photo_set(photos_dir):
        image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        faces = detect_faces(image)
        if not faces:
            continue
        truth = photo.keypoints.reshape(-1)
        by_labels = fit_crop(photo.keypoints.reshape(15, 2), label_layout)
        by_detector = fit_crop(faces[0].landmarks, template)
        moved = (by_detector.to_crop(truth) - by_labels.to_crop(truth)).reshape(-1, 2)
        scale = by_detector.size / by_labels.size
        rows.append((scale, by_detector.angle - by_labels.angle, np.sqrt((moved**2).mean())))
    return np.array(rows)


def main() -> None:
    from fkp.core.groups import read_groups
    from fkp.core.kaggle_csv import read_training
    from fkp.serving.detect import LANDMARK_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True, help="a Kaggle-format training.csv[.gz]")
    parser.add_argument("--groups", type=Path, help="its row -> person file, with --exclude")
    parser.add_argument("--exclude", type=Path, help="a <model>.heldout.json: leave those people out")
    parser.add_argument("--photos", type=Path, help="a photo set to check the framing on")
    parser.add_argument("--every", type=int, default=1, help="use every n-th face (faster)")
    args = parser.parse_args()

    data = read_training(args.csv)
    keep = np.ones(len(data.images), bool)
    if args.exclude:
        held_out = set(json.loads(args.exclude.read_text())["held_out_groups"])
        keep = ~np.isin(read_groups(args.groups, len(data.images)), list(held_out))
    rows = np.flatnonzero(keep)[:: args.every]
    landmarks, tried = detector_landmarks(data.images[rows])
    template = landmarks.mean(axis=0)
    print(f"faces: {len(landmarks)} found of {tried}")
    print("LANDMARK_TEMPLATE (96x96 frame)       x       y   spread   Kaggle mean face")
    for name, (x, y), spread in zip(LANDMARK_NAMES, template, landmarks.std(axis=0), strict=True):
        mx, my = MEAN_FACE[name]
        print(f"  {name:22s} {x:8.2f} {y:7.2f}   {np.hypot(*spread):5.2f}   {mx:7.2f} {my:7.2f}")
    if args.photos:
        kaggle = np.array([MEAN_FACE[name] for name in LANDMARK_NAMES])
        layout = np.nanmean(data.keypoints[rows], axis=0).reshape(-1, 2)
        for label, ref in (("Kaggle mean face points", kaggle), ("detector template", template)):
            scale, angle, rms = framing_offsets(args.photos, ref, layout).T
            print(
                f"photo crops framed on the {label}: scale x{np.mean(scale):.3f} (sd {np.std(scale):.3f}), "
                f"angle sd {np.std(angle):.1f} deg, keypoints {np.mean(rms):.2f} px RMS from where the "
                "training faces' framing puts them"
            )


if __name__ == "__main__":
    main()
