"""Parse the raw Kaggle CSVs once into a compressed ``.npz`` cache and fix the split.

Parsing 230 MB of pixel text takes about a second; every later stage instead loads the
cache (a few hundred milliseconds) and the saved split, so all stages and all runs see
the same rows in the same roles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fkp.atomic import atomic_path
from fkp.groups import GROUPS_CSV, read_groups
from fkp.kaggle_csv import TEST_CSV, TRAINING_CSV, TestSet, TrainingSet, read_test, read_training
from fkp.params import SplitParams
from fkp.split import Split, make_split, save_split

TRAIN_NPZ = "train.npz"
TEST_NPZ = "test.npz"
SPLIT_JSON = "split.json"


@dataclass(frozen=True)
class PreparedPaths:
    train: Path
    test: Path
    split: Path


def save_train(path: str | Path, data: TrainingSet) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, images=data.images, keypoints=data.keypoints)


def load_train(path: str | Path) -> TrainingSet:
    with np.load(path) as npz:
        return TrainingSet(images=npz["images"], keypoints=npz["keypoints"])


def save_test(path: str | Path, data: TestSet) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, image_ids=data.image_ids, images=data.images)


def load_test(path: str | Path) -> TestSet:
    with np.load(path) as npz:
        return TestSet(image_ids=npz["image_ids"], images=npz["images"])


def prepare(raw_dir: str | Path, out_dir: str | Path, split_params: SplitParams) -> PreparedPaths:
    """Read ``raw_dir``'s training.csv/test.csv (+ optional groups.csv) and write the cache and split."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train = read_training(raw_dir / TRAINING_CSV)
    test = read_test(raw_dir / TEST_CSV)
    groups_path = raw_dir / GROUPS_CSV
    groups = read_groups(groups_path, len(train.images)) if groups_path.exists() else None
    split: Split = make_split(len(train.images), split_params.val_fraction, split_params.seed, groups)
    paths = PreparedPaths(train=out_dir / TRAIN_NPZ, test=out_dir / TEST_NPZ, split=out_dir / SPLIT_JSON)
    save_train(paths.train, train)
    save_test(paths.test, test)
    save_split(split, paths.split)
    kind = "person-disjoint" if split.by_group else "random rows"
    print(
        f"prepared {len(train.images)} training and {len(test.images)} test images; "
        f"split {split.split_id} ({kind}): {len(split.train)} train / {len(split.val)} val"
    )
    return paths
