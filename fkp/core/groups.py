"""``groups.csv``: which person each training row shows (``row,group``; row = 0-based row of training.csv).

Frames of one person are near-duplicates, so validation must hold out whole persons.
The file is optional: a Kaggle download has none, and callers then split rows at random.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fkp.atomic import atomic_path
from fkp.errors import DataError

GROUPS_CSV = "groups.csv"
GROUPS_COLUMNS = ("row", "group")


def write_groups(path: str | Path, groups: np.ndarray) -> None:
    """Write one person id per training row, atomically."""
    groups = np.asarray(groups, dtype=np.int64)
    df = pd.DataFrame({"row": np.arange(len(groups), dtype=np.int64), "group": groups})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def read_groups(path: str | Path, n_rows: int | None = None) -> np.ndarray:
    """Read ``groups.csv`` -> (n,) int64 person ids in training-row order.

    Rows must be listed 0, 1, 2, ... exactly once; with ``n_rows`` the count must match
    training.csv, since a stale groups file would silently leak persons across a split.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in GROUPS_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; expected {list(GROUPS_COLUMNS)}", file=path)
    values = {}
    for col in GROUPS_COLUMNS:
        numbers = pd.to_numeric(df[col], errors="coerce")
        bad = numbers.isna() | (numbers != numbers.round())
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise DataError(f"not an integer: {df[col].iloc[i]!r}", file=path, row=i + 1, column=col)
        values[col] = numbers.to_numpy(dtype=np.int64)
    wrong = values["row"] != np.arange(len(df))
    if wrong.any():
        i = int(np.argmax(wrong))
        raise DataError(
            f"row index {values['row'][i]}, expected {i} (rows must be 0, 1, 2, ... in order)",
            file=path,
            row=i + 1,
            column="row",
        )
    if n_rows is not None and len(df) != n_rows:
        raise DataError(f"{len(df)} rows, but training.csv has {n_rows}", file=path)
    return values["group"]
