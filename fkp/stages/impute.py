"""Imputation strategies for the missing keypoint labels of the training rows.

Kaggle labels all 15 keypoints on only ~30 % of the faces. The strategies:

- ``ffill``: the classic baseline, a pandas forward fill down the rows. It pastes the
  eyebrows and mouth of an earlier face onto the next one, so its labels are wrong for
  most rows; kept for comparison.
- ``mask``: leave missing labels missing; the masked loss counts observed coordinates only,
  so every image helps without inventing labels.
- ``drop``: keep only rows with all 15 keypoints.
- ``pseudo``: self-training. Here it keeps the observed labels, as ``mask`` does; the train
  stage then trains a teacher and fills the missing labels it is sure of
  (:mod:`fkp.core.pseudo_labels`). The teacher is a training, so it lives with training: a change of
  a training param never reruns the data stages.

Imputation touches training rows only; evaluation always scores the original labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fkp.atomic import atomic_path

STRATEGIES = ("ffill", "mask", "drop", "pseudo")


def impute(keypoints: np.ndarray, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(targets, kept_rows)`` for the (n, 30) ``keypoints`` (NaN = missing).

    ``kept_rows`` indexes into ``keypoints``; rows with no usable label are dropped
    (ffill cannot fill rows before the first labelled one).
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if strategy == "ffill":
        filled = pd.DataFrame(keypoints).ffill().to_numpy(dtype=np.float32)
        kept = np.flatnonzero(~np.isnan(filled).any(axis=1))
        return filled[kept], kept
    if strategy in ("mask", "pseudo"):
        kept = np.flatnonzero(~np.isnan(keypoints).all(axis=1))
        return keypoints[kept], kept
    if strategy == "drop":
        kept = np.flatnonzero(~np.isnan(keypoints).any(axis=1))
        return keypoints[kept], kept
    raise ValueError(f"impute.strategy must be one of {STRATEGIES}, got {strategy!r}")


def impute_training_rows(
    keypoints: np.ndarray, train_rows: np.ndarray, strategy: str
) -> tuple[np.ndarray, np.ndarray]:
    """Impute the training part only, in file order, so no validation label leaks into training.

    Returns ``(rows, targets)``: row indices into training.csv and their (possibly imputed) labels.
    """
    train_rows = np.sort(np.asarray(train_rows))
    targets, kept = impute(keypoints[train_rows], strategy)
    return train_rows[kept], targets


def save_targets(path: str | Path, rows: np.ndarray, targets: np.ndarray, strategy: str) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, rows=rows, targets=targets, strategy=np.array(strategy))


def load_targets(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(rows, targets, strategy)`` as written by :func:`save_targets`."""
    with np.load(path) as npz:
        return npz["rows"], npz["targets"], str(npz["strategy"])


def run_impute(prepared_dir: str | Path, out: str | Path, strategy: str) -> Path:
    """Stage: impute the training rows of the prepared cache and write ``targets.npz``."""
    from fkp.core.split import load_split
    from fkp.stages.prepare import SPLIT_JSON, TRAIN_NPZ, load_train

    prepared_dir = Path(prepared_dir)
    train = load_train(prepared_dir / TRAIN_NPZ)
    split = load_split(prepared_dir / SPLIT_JSON)
    rows, targets = impute_training_rows(train.keypoints, split.train, strategy)
    save_targets(out, rows, targets, strategy)
    observed = np.isfinite(train.keypoints[split.train]).mean()
    print(
        f"impute[{strategy}]: {len(rows)} of {len(split.train)} training rows kept; "
        f"{observed:.0%} of their coordinates were labelled, {np.isfinite(targets).mean():.0%} are now"
    )
    return Path(out)
