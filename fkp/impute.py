"""Imputation strategies for the missing keypoint labels of the training rows.

Kaggle labels all 15 keypoints on only ~30 % of the faces. The strategies:

- ``ffill``: the classic baseline, a pandas forward fill down the rows. It pastes the
  eyebrows and mouth of an earlier face onto the next one, so its labels are wrong for
  most rows; kept for comparison.
- ``mask``: leave missing labels missing; the masked loss counts observed coordinates only,
  so every image helps without inventing labels.
- ``drop``: keep only rows with all 15 keypoints.
- ``pseudo``: self-training (:mod:`fkp.pseudo_labels`): a teacher trained as ``mask`` fills the
  missing labels it predicts consistently under a mirror; the rest stay missing.

Imputation touches training rows only; evaluation always scores the original labels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fkp.atomic import atomic_path
from fkp.params import Params

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
    if strategy == "mask":
        kept = np.flatnonzero(~np.isnan(keypoints).all(axis=1))
        return keypoints[kept], kept
    if strategy == "drop":
        kept = np.flatnonzero(~np.isnan(keypoints).any(axis=1))
        return keypoints[kept], kept
    if strategy == "pseudo":
        raise ValueError("impute.strategy 'pseudo' needs a teacher: use fkp.pseudo_labels.pseudo_label")
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


def save_targets(
    path: str | Path, rows: np.ndarray, targets: np.ndarray, strategy: str, info: dict | None = None
) -> None:
    """Write the targets with the strategy that made them and its figures (``info``, for the run)."""
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            rows=rows,
            targets=targets,
            strategy=np.array(strategy),
            info=np.array(json.dumps(info or {})),
        )


def load_targets(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(rows, targets, strategy)`` as written by :func:`save_targets`."""
    with np.load(path) as npz:
        return npz["rows"], npz["targets"], str(npz["strategy"])


def load_target_info(path: str | Path) -> dict:
    """What the imputation reported (the teacher's score for ``pseudo``), ``{}`` if nothing."""
    with np.load(path) as npz:
        return json.loads(str(npz["info"])) if "info" in npz.files else {}


def training_targets(
    images: np.ndarray, keypoints: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray, params: Params
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(rows, targets, info)`` for the training rows under ``params.impute``; ``info`` is for the run.

    Only ``pseudo`` looks at the images (its teacher trains on them) and at the validation rows
    (they stop the teacher's training early, as they do the model's).
    """
    impute = params.impute
    if impute.strategy != "pseudo":
        rows, targets = impute_training_rows(keypoints, train_rows, impute.strategy)
        return rows, targets, {}
    from fkp.pseudo_labels import pseudo_label

    print(f"impute[pseudo]: training the teacher ({impute.teacher_epochs} epochs) ...", flush=True)
    start = time.perf_counter()
    labels = pseudo_label(images, keypoints, train_rows, val_rows, impute, params.model, params.train)
    print(
        f"impute[pseudo]: teacher val_rmse {labels.teacher_val_rmse:.4f} px; filled {labels.filled} missing "
        f"coordinates, left {labels.rejected} (mirror disagreement > {impute.max_disagreement} px)"
    )
    info = {
        "teacher_val_rmse": round(labels.teacher_val_rmse, 4),
        "pseudo_filled": labels.filled,
        "pseudo_rejected": labels.rejected,
        "teacher_seconds": round(time.perf_counter() - start, 1),  # part of what the model cost to train
    }
    return labels.rows, labels.targets, info


def run_impute(prepared_dir: str | Path, out: str | Path, params: Params) -> Path:
    """Stage: impute the training rows of the prepared cache and write ``targets.npz``.

    Only ``pseudo`` reads ``params.model`` and ``params.train`` (its teacher is that network).
    """
    from fkp.prepare import SPLIT_JSON, TRAIN_NPZ, load_train
    from fkp.split import load_split

    strategy = params.impute.strategy
    prepared_dir = Path(prepared_dir)
    train = load_train(prepared_dir / TRAIN_NPZ)
    split = load_split(prepared_dir / SPLIT_JSON)
    rows, targets, info = training_targets(train.images, train.keypoints, split.train, split.val, params)
    save_targets(out, rows, targets, strategy, info)
    observed = np.isfinite(train.keypoints[split.train]).mean()
    print(
        f"impute[{strategy}]: {len(rows)} of {len(split.train)} training rows kept; "
        f"{observed:.0%} of their coordinates were labelled, {np.isfinite(targets).mean():.0%} are now"
    )
    return Path(out)
