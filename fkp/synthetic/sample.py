"""License-free synthetic data in the exact Kaggle layout, deterministic for a seed.

Faces come from :mod:`fkp.synthetic.face_model` / :mod:`fkp.synthetic.face_render`: several frames per
synthetic person (``train_groups`` = person id) so person-disjoint splits mean something.
Missing labels and the IdLookupTable copy Kaggle's patterns, including complete rows
first, which is what makes forward-fill imputation misbehave as it does on Kaggle.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fkp.core.groups import GROUPS_CSV, write_groups
from fkp.core.kaggle_csv import (
    ID_LOOKUP_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_CSV,
    TRAINING_CSV,
    write_id_lookup,
    write_submission,
    write_test,
    write_training,
)
from fkp.core.keypoints import COORD_COLUMNS, CORE_KEYPOINTS, IMAGE_SIZE, KEYPOINT_NAMES
from fkp.params import SampleParams
from fkp.synthetic.face_model import (
    MID_EYE,
    FaceShapes,
    Person,
    View,
    face_shapes,
    sample_person,
    sample_view,
)
from fkp.synthetic.face_render import render_shapes

#: Kaggle's training.csv / test.csv row counts.
FULL_SIZE = (7049, 1783)
DEFAULT_SIZE = (SampleParams().n_train, SampleParams().n_test)

FRAMES_PER_PERSON = (4, 14)  # inclusive range
EDGE_MARGIN = 1.0  # keypoints stay this far inside the image
PARALLEL_MIN_FRAMES = 3000  # below this, starting worker processes costs more than it saves
MAX_WORKERS = 4
FRAMES_PER_BATCH = 250

# Kaggle: 2140 of 7049 rows complete, ~140 more in the leading block miss a few of the
# 11 extra keypoints, the rest carry only the 4 core ones and ~1 % of those miss one more.
COMPLETE_FRACTION = 0.30
LEADING_INCOMPLETE_FRACTION = 0.02
CORE_DROP_FRACTION = 0.015
# weights of which core keypoint goes missing (Kaggle counts; nose_tip is never missing)
CORE_DROP_WEIGHTS = {"left_eye_center": 10, "right_eye_center": 13, "mouth_center_bottom_lip": 33}

# Kaggle's IdLookupTable: images 1..591 of 1783 ask for (nearly) all 30 coordinates,
# the others only for the 8 core ones; a few of each ask for fewer.
LOOKUP_FULL_FRACTION = 591 / 1783
LOOKUP_FULL_SUBSET_FRACTION = 35 / 591
LOOKUP_CORE_SUBSET_FRACTION = 2 / 1192

_TRAIN, _TEST = 0, 1  # seed stream of each split: test persons never appear in training


@dataclass(frozen=True)
class SampleData:
    """A synthetic Kaggle dataset in memory (see :func:`generate_sample`)."""

    train_images: np.ndarray  # (n, 96, 96) uint8
    train_keypoints: np.ndarray  # (n, 30) float32, NaN = missing, COORD_COLUMNS order
    train_groups: np.ndarray  # (n,) int64 person id
    test_image_ids: np.ndarray  # (m,) int64, 1..m
    test_images: np.ndarray  # (m, 96, 96) uint8
    id_lookup: pd.DataFrame  # RowId, ImageId, FeatureName, Location (empty)


def _inside(keypoints: np.ndarray) -> bool:
    return bool(np.all((keypoints >= EDGE_MARGIN) & (keypoints <= IMAGE_SIZE - EDGE_MARGIN)))


def _framed_view(rng: np.random.Generator, person: Person) -> tuple[View, FaceShapes]:
    """Draw a view whose 15 keypoints all fall inside the image (redraw a few times, then centre)."""
    for _ in range(20):
        view = sample_view(rng, person)
        shapes = face_shapes(person, view)
        if _inside(shapes.keypoints):
            return view, shapes
    view = dataclasses.replace(view, roll=0.0, yaw=0.0, pitch=0.0, scale=1.0, cx=MID_EYE[0], cy=MID_EYE[1])
    return view, face_shapes(person, view)


def _plan(n: int, seed: int, stream: int) -> list[tuple[int, int]]:
    """(person id, frames) until ``n`` frames: the cast, fixed before any rendering."""
    plan, row, person_id = [], 0, 0
    while row < n:
        rng = np.random.default_rng([seed, stream, person_id])
        sample_person(rng)
        frames = min(int(rng.integers(FRAMES_PER_PERSON[0], FRAMES_PER_PERSON[1] + 1)), n - row)
        plan.append((person_id, frames))
        row += frames
        person_id += 1
    return plan


def _render_cast(seed: int, stream: int, cast: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Render the frames of the persons in ``cast``; each person replays its own generator."""
    images, keypoints = [], []
    for person_id, frames in cast:
        rng = np.random.default_rng([seed, stream, person_id])
        person = sample_person(rng)
        rng.integers(FRAMES_PER_PERSON[0], FRAMES_PER_PERSON[1] + 1)  # the draw _plan made
        for _ in range(frames):
            view, shapes = _framed_view(rng, person)
            images.append(render_shapes(person, view, shapes, rng))
            keypoints.append(shapes.keypoints.reshape(-1).astype(np.float32))
    return np.stack(images), np.stack(keypoints)


def default_workers(n_frames: int) -> int:
    """Processes worth starting: one for small jobs (start-up costs ~1 s), else the usable cores."""
    if n_frames < PARALLEL_MIN_FRAMES:
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def render_people(
    n: int, seed: int, stream: int, pool: Executor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` frames, person after person: (images, keypoints (n, 30), person ids).

    Person ``k`` draws from its own generator ``(seed, stream, k)``, so a person looks the
    same whatever ``n`` is, and the result does not depend on ``pool`` (which, when given,
    renders batches of persons in parallel).
    """
    plan = _plan(n, seed, stream)
    groups = np.repeat([p for p, _ in plan], [f for _, f in plan]).astype(np.int64)
    batches, batch, size = [], [], 0
    for person in plan:
        batch.append(person)
        size += person[1]
        if size >= FRAMES_PER_BATCH:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    job = functools.partial(_render_cast, seed, stream)
    results = list(pool.map(job, batches)) if pool is not None else [job(b) for b in batches]
    images = np.concatenate([r[0] for r in results])
    keypoints = np.concatenate([r[1] for r in results])
    return images, keypoints, groups


def kaggle_row_order(n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Permutation of person-ordered rows and the size of the leading (fully labelled) block.

    The leading block takes whole runs of persons; rows are shuffled within each block.
    """
    lead = min(n, round(n * (COMPLETE_FRACTION + LEADING_INCOMPLETE_FRACTION)))
    order = np.concatenate([rng.permutation(lead), lead + rng.permutation(n - lead)])
    return order, lead


def kaggle_label_mask(n: int, lead: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 15) bool: which keypoints each row is labelled with, in Kaggle's pattern."""
    present = np.zeros((n, len(KEYPOINT_NAMES)), dtype=bool)
    core = [KEYPOINT_NAMES.index(name) for name in CORE_KEYPOINTS]
    extra = [i for i in range(len(KEYPOINT_NAMES)) if i not in core]
    present[:lead] = True
    n_incomplete = min(lead, round(n * LEADING_INCOMPLETE_FRACTION))
    for row in rng.choice(lead, size=n_incomplete, replace=False):
        gone = rng.choice(extra, size=int(rng.integers(1, 4)), replace=False)
        present[row, gone] = False
    present[lead:, core] = True
    n_rest = n - lead
    drop_rows = rng.choice(n_rest, size=round(n_rest * CORE_DROP_FRACTION), replace=False) + lead
    names = list(CORE_DROP_WEIGHTS)
    weights = np.array([CORE_DROP_WEIGHTS[k] for k in names], dtype=float)
    for row in drop_rows:
        present[row, KEYPOINT_NAMES.index(names[rng.choice(len(names), p=weights / weights.sum())])] = False
    return present


def id_lookup_table(n_images: int, rng: np.random.Generator) -> pd.DataFrame:
    """An IdLookupTable for ImageIds 1..n in Kaggle's pattern (``Location`` empty)."""
    core = [name for name in KEYPOINT_NAMES if name in CORE_KEYPOINTS]
    extra = [name for name in KEYPOINT_NAMES if name not in CORE_KEYPOINTS]
    n_full = round(n_images * LOOKUP_FULL_FRACTION)
    full_subset = set(rng.choice(n_full, size=round(n_full * LOOKUP_FULL_SUBSET_FRACTION), replace=False))
    n_core = n_images - n_full
    core_subset = set(rng.choice(n_core, size=round(n_core * LOOKUP_CORE_SUBSET_FRACTION), replace=False))
    image_ids, features = [], []
    for i in range(n_images):
        if i < n_full:
            asked = set(KEYPOINT_NAMES)
            if i in full_subset:
                asked -= set(rng.choice(extra, size=int(rng.integers(1, 7)), replace=False))
        else:
            asked = set(core)
            if i - n_full in core_subset:
                asked.discard("mouth_center_bottom_lip")
        cols = [c for c in COORD_COLUMNS if c.rsplit("_", 1)[0] in asked]
        image_ids += [i + 1] * len(cols)
        features += cols
    return pd.DataFrame(
        {
            "RowId": np.arange(1, len(features) + 1, dtype=np.int64),
            "ImageId": np.asarray(image_ids, dtype=np.int64),
            "FeatureName": features,
            "Location": np.full(len(features), np.nan),
        }
    )


def generate_sample(n_train: int, n_test: int, seed: int, *, workers: int | None = None) -> SampleData:
    """Render a synthetic Kaggle dataset; the same ``n_train, n_test, seed`` always give the
    same arrays, whatever ``workers`` (processes; default: :func:`default_workers`)."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    workers = default_workers(n_train + n_test) if workers is None else workers
    if workers > 1:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            train = render_people(n_train, seed, _TRAIN, pool)
            test_images, _, _ = render_people(n_test, seed, _TEST, pool)
    else:
        train = render_people(n_train, seed, _TRAIN)
        test_images, _, _ = render_people(n_test, seed, _TEST)
    images, keypoints, groups = train
    rng = np.random.default_rng([seed, 2])
    order, lead = kaggle_row_order(n_train, rng)
    images, keypoints, groups = images[order], keypoints[order], groups[order]
    present = kaggle_label_mask(n_train, lead, rng)
    keypoints[~np.repeat(present, 2, axis=1)] = np.nan

    test_images = test_images[rng.permutation(n_test)]
    return SampleData(
        train_images=images,
        train_keypoints=keypoints,
        train_groups=groups,
        test_image_ids=np.arange(1, n_test + 1, dtype=np.int64),
        test_images=test_images,
        id_lookup=id_lookup_table(n_test, rng),
    )


def sample_from_params(params: SampleParams) -> SampleData:
    """:func:`generate_sample` with the ``sample`` section of params.yaml."""
    return generate_sample(params.n_train, params.n_test, params.seed)


def write_sample(out_dir: str | Path, data: SampleData) -> list[Path]:
    """Write the four Kaggle files plus ``groups.csv`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    paths = [
        out / name for name in (TRAINING_CSV, TEST_CSV, ID_LOOKUP_CSV, SAMPLE_SUBMISSION_CSV, GROUPS_CSV)
    ]
    write_training(paths[0], data.train_images, data.train_keypoints)
    write_test(paths[1], data.test_image_ids, data.test_images)
    write_id_lookup(paths[2], data.id_lookup)
    row_ids = data.id_lookup["RowId"].to_numpy()
    write_submission(paths[3], row_ids, np.zeros(len(row_ids)))
    write_groups(paths[4], data.train_groups)
    return paths
