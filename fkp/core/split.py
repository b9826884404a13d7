"""A fixed, seeded train/validation split, person-disjoint when person ids are known.

Frames of one person are near-duplicates: a random row split would put the same face on
both sides and flatter the validation score, so rows are split by group when a groups
file exists. The split is saved as an artifact and identified by a short hash, so two
models are only compared on the same split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fkp.atomic import write_text


@dataclass(frozen=True)
class Split:
    """Row indices (into training.csv) of the training and validation parts."""

    train: np.ndarray
    val: np.ndarray
    by_group: bool

    @property
    def split_id(self) -> str:
        """Short content hash: equal ids mean identical validation rows."""
        digest = hashlib.sha1()
        digest.update(np.sort(self.train).astype(np.int64).tobytes())
        digest.update(b"|")
        digest.update(np.sort(self.val).astype(np.int64).tobytes())
        return digest.hexdigest()[:12]


def make_split(n_rows: int, val_fraction: float, seed: int, groups: np.ndarray | None = None) -> Split:
    """Split ``n_rows`` rows; with ``groups``, whole groups go to one side."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split.val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n_rows)
        n_val = max(1, round(n_rows * val_fraction))
        val = np.sort(order[:n_val])
        train = np.sort(order[n_val:])
        return Split(train=train, val=val, by_group=False)
    groups = np.asarray(groups)
    if len(groups) != n_rows:
        raise ValueError(f"groups has {len(groups)} entries but training.csv has {n_rows} rows")
    unique = rng.permutation(np.unique(groups))
    target = n_rows * val_fraction
    sizes = {g: c for g, c in zip(*np.unique(groups, return_counts=True), strict=True)}
    chosen, count = [], 0
    for g in unique:
        if count >= target:
            break
        chosen.append(g)
        count += sizes[g]
    is_val = np.isin(groups, chosen)
    return Split(train=np.flatnonzero(~is_val), val=np.flatnonzero(is_val), by_group=True)


def save_split(split: Split, path: str | Path) -> None:
    """Write the split as JSON (row indices, its id, and whether it is person-disjoint)."""
    payload = {
        "split_id": split.split_id,
        "by_group": split.by_group,
        "n_train": int(len(split.train)),
        "n_val": int(len(split.val)),
        "train": split.train.tolist(),
        "val": split.val.tolist(),
    }
    write_text(path, json.dumps(payload))


def load_split(path: str | Path) -> Split:
    """Read a split written by :func:`save_split`."""
    payload = json.loads(Path(path).read_text())
    return Split(
        train=np.asarray(payload["train"], dtype=np.int64),
        val=np.asarray(payload["val"], dtype=np.int64),
        by_group=bool(payload["by_group"]),
    )
