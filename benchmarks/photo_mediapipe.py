"""Reference for the photo benchmark: MediaPipe's own face detector and face mesh on the same photos.

Runs in a separate virtual environment that has ``mediapipe`` (never the project's: MediaPipe pins
its own NumPy and OpenCV), on exactly the photos :mod:`benchmarks.photos` posts (same photo set,
same seed, :mod:`benchmarks.photo_data`). A labelled face is found when a detection's eye centre
lies within half its outer-eye-corner distance, as there. Speed is in-process, one thread, decode
included (no HTTP), so it is a bound on what a server around it could do, not a like-for-like
latency. No keypoint error: MediaPipe's points are not the Kaggle 15.

    python3 -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe==0.10.21
    PYTHONPATH=. /tmp/mp/bin/python -m benchmarks.photo_mediapipe \
        --photos ../shared/data/youtube-faces-photos --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks.markdown import load_average, splice
from benchmarks.photo_data import SETS, make_sets, match_faces, read_photo_set, single

#: Face mesh landmarks at the eye corners (outer and inner, both eyes): their mean is the eye centre.
MESH_EYE_CORNERS = (33, 133, 362, 263)
MAX_FACES = 20
BEGIN, END = "<!-- photos:mediapipe:begin -->", "<!-- photos:mediapipe:end -->"

#: ``f(RGB image) -> eye centres of the faces found`` (photo pixels).
Detector = Callable[[np.ndarray], list[np.ndarray]]


def detectors() -> dict[str, Detector]:
    """MediaPipe's short- and full-range face detectors and its face mesh, as eye-centre finders."""
    import mediapipe as mp

    def detection(model_selection: int) -> Detector:
        solution = mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=0.5
        )

        def find(rgb: np.ndarray) -> list[np.ndarray]:
            h, w = rgb.shape[:2]
            found = solution.process(rgb).detections or []
            eyes = [d.location_data.relative_keypoints[:2] for d in found]  # right eye, left eye
            return [np.array([(a.x + b.x) / 2 * w, (a.y + b.y) / 2 * h]) for a, b in eyes]

        return find

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=MAX_FACES)

    def find_mesh(rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        faces = mesh.process(rgb).multi_face_landmarks or []
        return [
            np.mean([[f.landmark[i].x * w, f.landmark[i].y * h] for i in MESH_EYE_CORNERS], axis=0)
            for f in faces
        ]

    return {
        "MediaPipe face detection, short range": detection(0),
        "MediaPipe face detection, full range": detection(1),
        "MediaPipe face mesh": find_mesh,
    }


def timed(find: Detector, data: bytes) -> tuple[list[np.ndarray], float]:
    """Decode + detect one encoded photo; (eye centres, seconds)."""
    t0 = time.perf_counter()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    centres = find(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return centres, time.perf_counter() - t0


def measure(find: Detector, posted, throughput, big, repeat: int) -> dict:
    found: dict[str, list[int]] = {}
    seconds = []
    for name, photo in posted:
        centres, elapsed = timed(find, photo.data)
        seconds.append(elapsed)
        counts = found.setdefault(name, [0, 0])
        counts[0] += sum(m is not None for m in match_faces(centres, photo.faces))
        counts[1] += len(photo.faces)
    small = [timed(find, throughput.data)[1] for _ in range(repeat)]
    big_runs = [timed(find, big.data) for _ in range(3)]
    return {
        "found_pct": {name: 100 * f / max(1, n) for name, (f, n) in found.items()},
        "photos_per_s": len(seconds) / sum(seconds),
        "p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "p99_ms": float(np.percentile(seconds, 99) * 1e3),
        "small_per_s": len(small) / sum(small),
        "big_s": float(np.median([s for _, s in big_runs])),
        "big_found": sum(match_faces(c, big.faces)[0] is not None for c, _ in big_runs),
    }


def render(results: dict[str, dict], command: str, version: str, big_size: str) -> str:
    names = list(SETS)
    lines = [
        BEGIN,
        f"### Reference: MediaPipe {version} (not part of fkp)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Faces found on the same photos, and in-process speed (one thread, decode included, no HTTP). "
        f"Machine load (1/5/15 min) at the end: {load_average()}.",
        "",
        "| detector | " + " | ".join(f"found: {n}" for n in names) + " | photos/s (all) | p50 / p99 ms "
        f"| 640x480 photos/s | {big_size} s (found) |",
        "|---" * (len(names) + 5) + "|",
    ]
    for label, r in results.items():
        cells = [f"{r['found_pct'].get(n, 0):.1f} %" for n in names]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {r['photos_per_s']:.1f} | {r['p50_ms']:.0f} / "
            f"{r['p99_ms']:.0f} | {r['small_per_s']:.1f} | {r['big_s']:.2f} ({r['big_found']}/3) |"
        )
    return "\n".join([*lines, END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crowds", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--big", type=lambda s: tuple(map(int, s.split("x"))), default=(8000, 6000))
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    import mediapipe as mp

    labelled = read_photo_set(args.photos)[: args.limit]
    posted = list(make_sets(labelled, args.seed, args.crowds))
    throughput = single("640x480", labelled[0], (640, 480), 60.0)
    big = single("big", labelled[0], args.big, args.big[0] / 25)
    results = {}
    for label, find in detectors().items():
        print(f"{label} ...", flush=True)
        results[label] = measure(find, posted, throughput, big, args.repeat)
    command = "python -m benchmarks.photo_mediapipe " + shlex.join(sys.argv[1:])
    text = render(results, command, mp.__version__, f"{args.big[0]}x{args.big[1]}")
    if args.out:
        args.out.write_text(splice(args.out.read_text(), text, BEGIN, END, append=True))
    print(text)


if __name__ == "__main__":
    main()
