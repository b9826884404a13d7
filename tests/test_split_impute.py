"""Split and imputation: person-disjoint splits, and what each strategy does to the labels."""

from __future__ import annotations

import numpy as np
import pytest

from fkp.core.split import load_split, make_split, save_split
from fkp.stages.impute import impute, impute_training_rows


def test_group_split_is_person_disjoint_and_seeded(tmp_path):
    groups = np.repeat(np.arange(50), 6)
    split = make_split(len(groups), 0.2, seed=3, groups=groups)
    assert split.by_group
    assert not set(groups[split.train]) & set(groups[split.val])
    assert 0.15 < len(split.val) / len(groups) < 0.3
    assert make_split(len(groups), 0.2, seed=3, groups=groups).split_id == split.split_id
    assert make_split(len(groups), 0.2, seed=4, groups=groups).split_id != split.split_id
    save_split(split, tmp_path / "split.json")
    back = load_split(tmp_path / "split.json")
    assert back.split_id == split.split_id and back.by_group


def test_row_split_covers_every_row_once():
    split = make_split(101, 0.25, seed=0)
    assert sorted(np.concatenate([split.train, split.val]).tolist()) == list(range(101))
    with pytest.raises(ValueError, match="val_fraction"):
        make_split(10, 1.5, seed=0)


def _labels() -> np.ndarray:
    k = np.arange(4 * 30, dtype=np.float32).reshape(4, 30)
    k[1, 4:] = np.nan  # partial row
    k[2, :] = np.nan  # nothing labelled
    k[3, 4:10] = np.nan
    return k


def test_ffill_copies_the_previous_rows_labels():
    k = _labels()
    targets, kept = impute(k, "ffill")
    assert kept.tolist() == [0, 1, 2, 3]
    assert np.array_equal(targets[1, 4:], k[0, 4:])  # row 0's eyebrows pasted onto row 1
    assert not np.isnan(targets).any()


def test_mask_keeps_missing_missing_and_drop_keeps_complete_rows():
    k = _labels()
    targets, kept = impute(k, "mask")
    assert kept.tolist() == [0, 1, 3]
    assert np.array_equal(np.isnan(targets), np.isnan(k[kept]))
    targets, kept = impute(k, "drop")
    assert kept.tolist() == [0] and not np.isnan(targets).any()
    with pytest.raises(ValueError, match="impute.strategy"):
        impute(k, "mean")


def test_training_rows_never_borrow_validation_labels():
    k = _labels()
    k[2] = 1000.0  # a fully labelled validation row between two training rows
    rows, targets = impute_training_rows(k, np.array([3, 0, 1]), "ffill")
    assert rows.tolist() == [0, 1, 3]
    assert np.array_equal(targets[2, 4:10], k[0, 4:10])  # filled from row 0 via row 1, never row 2
    rows, _ = impute_training_rows(k, np.array([1, 3]), "ffill")
    assert rows.tolist() == []  # nothing labelled before them in the training part: unusable
