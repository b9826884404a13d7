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
from fkp.core.groups import GROUPS_CSV, read_groups
from fkp.core.kaggle_csv import TEST_CSV, TRAINING_CSV, TestSet, TrainingSet, read_test, read_training
from fkp.core.split import Split, make_split, save_split
from fkp.errors import DataError
from fkp.params import SplitParams
from fkp.safety.swap import staging_dir

TRAIN_NPZ = "train.npz"
TEST_NPZ = "test.npz"
SPLIT_JSON = "split.json"
#: what :func:`prepare` writes; anything else in its folder (e.g. the impute stage's targets) is kept
PREPARED_FILES = (TRAIN_NPZ, TEST_NPZ, SPLIT_JSON)


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
    """Read ``raw_dir``'s training.csv/test.csv (+ optional groups.csv) and write the cache and split.

    The three files are written into a new folder that then replaces ``out_dir`` in one step, so a
    crash, a kill or a full disk leaves either the old three or the new three, never a mix. Other
    files in ``out_dir`` are carried over unchanged.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train = read_training(raw_dir / TRAINING_CSV)
    test = read_test(raw_dir / TEST_CSV)
    groups_path = raw_dir / GROUPS_CSV
    groups = read_groups(groups_path, len(train.images)) if groups_path.exists() else None
    split: Split = make_split(len(train.images), split_params.val_fraction, split_params.seed, groups)
    paths = PreparedPaths(train=out_dir / TRAIN_NPZ, test=out_dir / TEST_NPZ, split=out_dir / SPLIT_JSON)
    if folders := sorted(p.name for p in out_dir.glob("[!.]*") if p.is_dir()):
        raise DataError(f"holds folders {folders}: give prepare an output folder of its own", file=out_dir)
    others = [p.name for p in out_dir.glob("[!.]*") if p.is_file() and p.name not in PREPARED_FILES]
    with staging_dir(out_dir, keep=others) as stage:
        save_train(stage / TRAIN_NPZ, train)
        save_test(stage / TEST_NPZ, test)
        save_split(split, stage / SPLIT_JSON)
    kind = "person-disjoint" if split.by_group else "random rows"
    print(
        f"prepared {len(train.images)} training and {len(test.images)} test images; "
        f"split {split.split_id} ({kind}): {len(split.train)} train / {len(split.val)} val"
    )
    return paths
