"""Read and write the four Kaggle files: training.csv, test.csv, IdLookupTable.csv, submissions.

Readers return arrays (pixels as uint8, keypoints as float32 with NaN for a missing
label); writers produce byte-for-byte Kaggle layout (empty field for a missing label)
and write atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fkp.atomic import atomic_path
from fkp.core.images import format_images, parse_images
from fkp.core.keypoints import (
    COORD_COLUMNS,
    ID_LOOKUP_COLUMNS,
    IMAGE_COLUMN,
    SUBMISSION_COLUMNS,
    TEST_COLUMNS,
    TRAINING_COLUMNS,
)
from fkp.errors import DataError

TRAINING_CSV = "training.csv"
TEST_CSV = "test.csv"
ID_LOOKUP_CSV = "IdLookupTable.csv"
SAMPLE_SUBMISSION_CSV = "SampleSubmission.csv"
KAGGLE_FILES = (TRAINING_CSV, TEST_CSV, ID_LOOKUP_CSV, SAMPLE_SUBMISSION_CSV)


@dataclass(frozen=True)
class TrainingSet:
    """Parsed training.csv: ``images`` (m, 96, 96) uint8, ``keypoints`` (m, 30) float32, NaN = missing."""

    images: np.ndarray
    keypoints: np.ndarray


@dataclass(frozen=True)
class TestSet:
    """Parsed test.csv: ``image_ids`` (m,) int64 and ``images`` (m, 96, 96) uint8."""

    image_ids: np.ndarray
    images: np.ndarray


def _read_csv(path: Path, expected: tuple[str, ...], dtype: dict[str, object]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("file not found", file=path)
    header = pd.read_csv(path, nrows=0).columns.tolist()
    missing = [c for c in expected if c not in header]
    if missing:
        unexpected = [c for c in header if c not in expected]
        hint = f"; unexpected column(s) {unexpected}" if unexpected else ""
        raise DataError(f"missing column(s) {missing}{hint}", file=path, row=None)
    return pd.read_csv(path, usecols=list(expected), dtype=dtype, keep_default_na=True)


def _numeric(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    """Raise a located error for the first non-numeric value in ``columns``."""
    for col in columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            coerced = pd.to_numeric(df[col], errors="coerce")
            bad = coerced.isna() & df[col].notna()
            i = int(np.argmax(bad.to_numpy()))
            raise DataError(f"not a number: {df[col].iloc[i]!r}", file=path, row=i + 1, column=col)


def read_training(path: str | Path) -> TrainingSet:
    """Read a Kaggle training.csv (30 keypoint columns + ``Image``)."""
    path = Path(path)
    df = _read_csv(path, TRAINING_COLUMNS, {IMAGE_COLUMN: str})
    _numeric(df, COORD_COLUMNS, path)
    keypoints = df[list(COORD_COLUMNS)].to_numpy(dtype=np.float32)
    images = parse_images(df[IMAGE_COLUMN].tolist(), file=path)
    return TrainingSet(images=images, keypoints=keypoints)


def read_test(path: str | Path) -> TestSet:
    """Read a Kaggle test.csv (``ImageId``, ``Image``)."""
    path = Path(path)
    df = _read_csv(path, TEST_COLUMNS, {IMAGE_COLUMN: str})
    _numeric(df, ("ImageId",), path)
    images = parse_images(df[IMAGE_COLUMN].tolist(), file=path)
    return TestSet(image_ids=df["ImageId"].to_numpy(dtype=np.int64), images=images)


def read_id_lookup(path: str | Path) -> pd.DataFrame:
    """Read IdLookupTable.csv; ``Location`` is empty in Kaggle's copy and filled by a submission."""
    path = Path(path)
    df = _read_csv(path, ID_LOOKUP_COLUMNS, {"FeatureName": str})
    _numeric(df, ("RowId", "ImageId"), path)
    return df


def _write_frame(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")


def write_training(path: str | Path, images: np.ndarray, keypoints: np.ndarray) -> None:
    """Write a training.csv in Kaggle's layout (NaN keypoints become empty fields)."""
    df = pd.DataFrame(np.asarray(keypoints, dtype=np.float64), columns=list(COORD_COLUMNS))
    df[IMAGE_COLUMN] = format_images(images)
    _write_frame(df, path)


def write_test(path: str | Path, image_ids: np.ndarray, images: np.ndarray) -> None:
    """Write a test.csv in Kaggle's layout."""
    df = pd.DataFrame({"ImageId": np.asarray(image_ids, dtype=np.int64), IMAGE_COLUMN: format_images(images)})
    _write_frame(df, path)


def write_id_lookup(path: str | Path, lookup: pd.DataFrame) -> None:
    """Write an IdLookupTable.csv byte-compatible with Kaggle's: rows stop after FeatureName.

    Kaggle's header names a ``Location`` column that no row fills (not even with a comma).
    """
    rows = lookup[["RowId", "ImageId", "FeatureName"]].astype(str).agg(",".join, axis=1)
    text = ",".join(ID_LOOKUP_COLUMNS) + "\n" + "".join(f"{r}\n" for r in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="ascii")


def write_submission(path: str | Path, row_ids: np.ndarray, locations: np.ndarray) -> None:
    """Write a submission (``RowId,Location``)."""
    df = pd.DataFrame(
        {"RowId": np.asarray(row_ids, dtype=np.int64), "Location": np.asarray(locations, dtype=np.float64)}
    )
    _write_frame(df[list(SUBMISSION_COLUMNS)], path)


def submission_from_predictions(
    lookup: pd.DataFrame, image_ids: np.ndarray, predictions: np.ndarray
) -> pd.DataFrame:
    """Map (n, 30) predictions for ``image_ids`` onto the rows the lookup table asks for.

    Locations are clipped to the image (0..96), as a coordinate outside it cannot be right.
    """
    row_of_image = {int(i): r for r, i in enumerate(image_ids)}
    col_of_feature = {name: c for c, name in enumerate(COORD_COLUMNS)}
    try:
        rows = np.array([row_of_image[int(i)] for i in lookup["ImageId"]])
    except KeyError as exc:
        raise DataError(
            f"IdLookupTable asks for ImageId {exc.args[0]}, which test.csv does not have"
        ) from None
    unknown = ~lookup["FeatureName"].isin(col_of_feature)
    if unknown.any():
        i = int(np.argmax(unknown.to_numpy()))
        raise DataError(
            f"unknown FeatureName {lookup['FeatureName'].iloc[i]!r}", row=i + 1, column="FeatureName"
        )
    cols = lookup["FeatureName"].map(col_of_feature).to_numpy()
    locations = np.clip(np.asarray(predictions)[rows, cols], 0.0, 96.0)
    return pd.DataFrame({"RowId": lookup["RowId"].to_numpy(), "Location": locations})
