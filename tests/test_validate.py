"""Raw-data validation with the real Great Expectations suites on small Kaggle-layout files."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fkp.core import kaggle_csv
from fkp.core.expectations import MAX_ROWS_PER_CHECK, load_suite
from fkp.core.groups import GROUPS_COLUMNS, GROUPS_CSV, write_groups
from fkp.core.images import format_images, image_token_stats
from fkp.core.keypoints import (
    COORD_COLUMNS,
    ID_LOOKUP_COLUMNS,
    SUBMISSION_COLUMNS,
    TEST_COLUMNS,
    TRAINING_COLUMNS,
    core_mask,
)
from fkp.stages.validate import ValidationReport, validate_raw_dir

N_TRAIN, N_TEST, N_COMPLETE = 40, 10, 12  # 12 of 40 rows fully labelled: Kaggle's ~30 %


def write_clean_set(raw: Path, *, complete_rows: int = N_COMPLETE) -> None:
    """A valid raw folder: the core keypoints in every row, the other 11 in ``complete_rows`` rows."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(N_TRAIN, 96, 96), dtype=np.uint8)
    keypoints = rng.uniform(5, 91, size=(N_TRAIN, 30)).astype(np.float32)
    keypoints[complete_rows:, ~core_mask()] = np.nan
    kaggle_csv.write_training(raw / kaggle_csv.TRAINING_CSV, images, keypoints)
    kaggle_csv.write_test(raw / kaggle_csv.TEST_CSV, np.arange(1, N_TEST + 1), images[:N_TEST])
    asked = [(image_id, name) for image_id in range(1, N_TEST + 1) for name in COORD_COLUMNS[::3]]
    lookup = pd.DataFrame(
        {
            "RowId": np.arange(1, len(asked) + 1),
            "ImageId": [image_id for image_id, _ in asked],
            "FeatureName": [name for _, name in asked],
            "Location": np.nan,
        }
    )
    kaggle_csv.write_id_lookup(raw / kaggle_csv.ID_LOOKUP_CSV, lookup)
    write_groups(raw / GROUPS_CSV, np.arange(N_TRAIN) // 4)  # four frames per person


def edit_csv(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """Rewrite a CSV after ``change`` edits its text cells (1-based data row r is index r - 1)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    changed = change(df)
    (df if changed is None else changed).to_csv(path, index=False, lineterminator="\n")


def set_cell(df: pd.DataFrame, row: int, column: str, value: str) -> None:
    df.loc[row - 1, column] = value


def replace_token(df: pd.DataFrame, row: int, position: int, token: str) -> None:
    tokens = df.loc[row - 1, "Image"].split(" ")
    tokens[position] = token
    df.loc[row - 1, "Image"] = " ".join(tokens)


def located(raw: Path, file: str, row: int | None, column: str | None) -> str:
    """The location prefix a message must start with (DataError's format)."""
    parts = [str(raw / file)]
    if row is not None:
        parts.append(f"row {row} (line {row + 1})")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts) + ": "


def messages_at(items: list[str], prefix: str) -> list[str]:
    return [m for m in items if m.startswith(prefix)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationReport]:
    raw = tmp_path_factory.mktemp("clean")
    write_clean_set(raw)
    return raw, validate_raw_dir(raw, raw / "report")


def test_clean_set_passes_and_writes_reports(clean: tuple[Path, ValidationReport]) -> None:
    raw, report = clean
    assert report.errors == [] and report.warnings == [], report.summary()
    assert report.success
    assert "PASSED" in report.summary()
    saved = json.loads((raw / "report" / "validation.json").read_text())
    assert saved["success"] is True and saved["errors"] == []
    suites = saved["per_file"]["training.csv"]["suites"]
    assert suites["training.values"]["success"] is True
    assert len(suites["training.values"]["results"]) == len(load_suite("training.values")["expectations"])
    assert saved["per_file"]["training.csv"]["rows"] == N_TRAIN
    assert saved["per_file"]["SampleSubmission.csv"]["present"] is False
    assert saved["per_file"]["groups.csv"]["suites"]["groups.values"]["success"] is True
    docs = raw / "report" / "data_docs"
    assert (docs / "index.html").is_file()
    assert list((docs / "validations").rglob("*training.values*.html"))


# Row-level defects, each in its own row and column, all validated in one run.
ROW_DEFECTS: list[tuple[str, str, Callable[[pd.DataFrame], None], int, str, str]] = [
    # (id, file, edit, row, column, fragment of the message)
    ("pixel-count", "training.csv", lambda df: replace_token(df, 3, 0, ""), 3, "Image", "found 9215"),
    ("pixel-non-integer", "training.csv", lambda df: replace_token(df, 5, 10, "12.5"), 5, "Image", "'12.5'"),
    ("pixel-over-255", "training.csv", lambda df: replace_token(df, 7, 20, "256"), 7, "Image", "found 256"),
    ("pixel-negative", "training.csv", lambda df: replace_token(df, 8, 30, "-4"), 8, "Image", "found -4"),
    (
        "keypoint-outside",
        "training.csv",
        lambda df: set_cell(df, 2, "nose_tip_y", "97.5"),
        2,
        "nose_tip_y",
        "97.5",
    ),
    (
        "keypoint-non-numeric",
        "training.csv",
        lambda df: set_cell(df, 4, "left_eye_center_x", "abc"),
        4,
        "left_eye_center_x",
        "'abc'",
    ),
    ("test-pixel-count", "test.csv", lambda df: replace_token(df, 9, 0, "1 2"), 9, "Image", "found 9217"),
    ("test-duplicate-id", "test.csv", lambda df: set_cell(df, 6, "ImageId", "2"), 6, "ImageId", "row(s) 2"),
    ("duplicate-first", "test.csv", lambda df: None, 2, "ImageId", "row(s) 6"),  # the row 6 duplicates
    (
        "lookup-feature",
        "IdLookupTable.csv",
        lambda df: set_cell(df, 3, "FeatureName", "nose_x"),
        3,
        "FeatureName",
        "'nose_x'",
    ),
    ("groups-row", "groups.csv", lambda df: set_cell(df, 5, "row", "40"), 5, "row", "found 40"),
    ("groups-group", "groups.csv", lambda df: set_cell(df, 6, "group", "p7"), 6, "group", "'p7'"),
    (
        "lookup-image-id",
        "IdLookupTable.csv",
        lambda df: set_cell(df, 8, "ImageId", "999"),
        8,
        "ImageId",
        "999",
    ),
]


@pytest.fixture(scope="module")
def defects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationReport]:
    raw = tmp_path_factory.mktemp("defects")
    write_clean_set(raw)
    for _, file, edit, *_ in ROW_DEFECTS:
        edit_csv(raw / file, edit)
    # more failing rows than are listed one by one
    edit_csv(
        raw / "training.csv",
        lambda df: df.assign(mouth_center_bottom_lip_y=["-1"] * (MAX_ROWS_PER_CHECK + 5) + ["50"] * 15),
    )
    return raw, validate_raw_dir(raw, raw / "report")


@pytest.mark.parametrize(
    ("file", "row", "column", "fragment"),
    [(file, row, column, fragment) for _, file, _, row, column, fragment in ROW_DEFECTS],
    ids=[d[0] for d in ROW_DEFECTS],
)
def test_row_defect_is_reported_with_file_row_and_column(
    defects: tuple[Path, ValidationReport], file: str, row: int, column: str, fragment: str
) -> None:
    raw, report = defects
    assert not report.success
    found = messages_at(report.errors, located(raw, file, row, column))
    assert any(fragment in m for m in found), f"{fragment!r} not in {found}\n{report.summary()}"
    assert any(fragment in m for m in report.summary().splitlines())


def test_defects_leave_other_rows_alone(defects: tuple[Path, ValidationReport]) -> None:
    raw, report = defects
    flagged_training_rows = {
        m.split(", row ")[1].split(" ")[0]
        for m in report.errors
        if m.startswith(str(raw / "training.csv")) and ", row " in m and "mouth_center_bottom_lip_y" not in m
    }
    assert flagged_training_rows == {"2", "3", "4", "5", "7", "8"}


def test_many_failing_rows_are_listed_up_to_a_cap(defects: tuple[Path, ValidationReport]) -> None:
    raw, report = defects
    column = "mouth_center_bottom_lip_y"
    listed = [m for m in report.errors if ", row " in m and f"column {column!r}" in m]
    assert len(listed) == MAX_ROWS_PER_CHECK
    assert any(
        m.startswith(located(raw, "training.csv", None, column)) and "5 more row(s)" in m
        for m in report.errors
    )
    saved = json.loads((raw / "report" / "validation.json").read_text())
    results = saved["per_file"]["training.csv"]["suites"]["training.values"]["results"]
    ranged = next(
        r
        for r in results
        if r["expectation_config"]["kwargs"].get("column") == column
        and r["expectation_config"]["type"] == "expect_column_values_to_be_between"
    )
    assert ranged["result"]["unexpected_index_list"] == list(range(1, MAX_ROWS_PER_CHECK + 6))


def drop_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["nose_tip_x"])


def rename_image(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"Image": "image"})


def rename_feature(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"FeatureName": "Feature"})


@pytest.mark.parametrize(
    ("file", "change", "fragments"),
    [
        ("training.csv", drop_column, ["missing column(s) ['nose_tip_x']"]),
        ("training.csv", rename_image, ["missing column(s) ['Image']", "unexpected column(s) ['image']"]),
        ("IdLookupTable.csv", rename_feature, ["missing column(s) ['FeatureName']", "['Feature']"]),
    ],
    ids=["missing", "renamed", "lookup-renamed"],
)
def test_column_defect_names_missing_and_unexpected_columns(
    tmp_path: Path, file: str, change: Callable[[pd.DataFrame], pd.DataFrame], fragments: list[str]
) -> None:
    write_clean_set(tmp_path)
    edit_csv(tmp_path / file, change)
    report = validate_raw_dir(tmp_path, tmp_path / "report")
    assert not report.success
    found = messages_at(report.errors, located(tmp_path, file, None, None))
    assert any(all(f in m for f in fragments) for m in found), report.summary()
    assert "rows not checked" in report.summary()


def test_missing_file_is_an_error_and_lookup_ids_go_unchecked(tmp_path: Path) -> None:
    write_clean_set(tmp_path)
    (tmp_path / "test.csv").unlink()
    report = validate_raw_dir(tmp_path, tmp_path / "report")
    assert not report.success
    assert f"{tmp_path / 'test.csv'}: required file not found" in report.errors
    assert any(w.startswith(located(tmp_path, "IdLookupTable.csv", None, "ImageId")) for w in report.warnings)
    assert (tmp_path / "report" / "validation.json").is_file()


def test_malformed_rows_are_located(tmp_path: Path) -> None:
    write_clean_set(tmp_path)
    training = tmp_path / "training.csv"
    lines = training.read_text().split("\n")
    lines[4] += ",9"  # data row 4 has one field too many
    training.write_text("\n".join(lines))
    lookup = tmp_path / "IdLookupTable.csv"
    lines = lookup.read_text().split("\n")
    lines[3] = lines[3].rsplit(",", 1)[0]  # data row 3 stops before FeatureName
    lookup.write_text("\n".join(lines))
    report = validate_raw_dir(tmp_path, tmp_path / "report")
    assert any(
        e.startswith(located(tmp_path, "training.csv", 4, None) + "cannot be read") for e in report.errors
    )
    prefix = located(tmp_path, "IdLookupTable.csv", 3, "FeatureName")
    assert any(e.startswith(prefix) and e.endswith("must not be empty") for e in report.errors), (
        report.summary()
    )
    assert not any(e.startswith(located(tmp_path, "IdLookupTable.csv", 3, "ImageId")) for e in report.errors)


def test_unreadable_csv_is_reported_not_raised(tmp_path: Path) -> None:
    write_clean_set(tmp_path)
    (tmp_path / "IdLookupTable.csv").write_bytes(b"")
    report = validate_raw_dir(tmp_path, tmp_path / "report")
    assert any(e.startswith(f"{tmp_path / 'IdLookupTable.csv'}: cannot be read") for e in report.errors)


def test_label_profile_far_from_kaggle_warns_but_passes(tmp_path: Path) -> None:
    write_clean_set(tmp_path, complete_rows=N_TRAIN)  # every keypoint labelled everywhere
    report = validate_raw_dir(tmp_path, tmp_path / "report")
    assert report.success and report.errors == []
    partial = [c for c, core in zip(COORD_COLUMNS, core_mask(), strict=True) if not core]
    for column in partial:
        prefix = located(tmp_path, "training.csv", None, column)
        assert any(w.startswith(prefix) and "found 1" in w for w in report.warnings), report.summary()
    assert len(report.warnings) == len(partial)
    assert "Warnings:" in report.summary()
    assert json.loads((tmp_path / "report" / "validation.json").read_text())["warnings"] == report.warnings


def test_suites_follow_the_keypoint_definitions() -> None:
    for suite, columns in [
        ("training", TRAINING_COLUMNS),
        ("test", TEST_COLUMNS),
        ("id_lookup", ID_LOOKUP_COLUMNS),
        ("sample_submission", SUBMISSION_COLUMNS),
        ("groups", GROUPS_COLUMNS),
    ]:
        (check,) = load_suite(f"{suite}.columns")["expectations"]
        assert sorted(check["kwargs"]["column_set"]) == sorted(columns)
    training = load_suite("training.values")["expectations"]
    ranged = {e["kwargs"]["column"] for e in training if e["type"] == "expect_column_values_to_be_between"}
    assert set(COORD_COLUMNS) <= ranged
    profile = [
        e for e in training if e["type"] == "expect_column_proportion_of_non_null_values_to_be_between"
    ]
    assert {e["kwargs"]["column"] for e in profile} == set(COORD_COLUMNS)
    assert all(e["severity"] == "warning" for e in profile)
    assert all("severity" not in e for e in training if e not in profile)
    lookup = load_suite("id_lookup.values")["expectations"]
    names = next(
        e for e in lookup if e["kwargs"].get("column") == "FeatureName" and "value_set" in e["kwargs"]
    )
    assert names["kwargs"]["value_set"] == list(COORD_COLUMNS)


def test_image_token_stats_match_the_pixels_and_locate_bad_tokens() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(5, 96, 96), dtype=np.uint8)
    fields: list[object] = format_images(images)
    stats = image_token_stats(fields)
    flat = images.reshape(5, -1)
    assert stats.n_tokens.tolist() == [9216] * 5
    assert np.array_equal(stats.minimum, flat.min(axis=1)) and np.array_equal(stats.maximum, flat.max(axis=1))
    assert stats.first_bad.tolist() == [None] * 5
    fields = [
        fields[0] + " 1234",
        fields[1].replace(" ", " x1 ", 1),
        "-7 3",
        "",
        float("nan"),
        "5 1\n2",
        "a b",
    ]
    stats = image_token_stats(fields)
    assert stats.n_tokens.tolist() == [9217, 9217, 2, 0, 0, 2, 2]
    assert stats.maximum[0] == 1234 and stats.minimum[2] == -7 and stats.maximum[2] == 3
    assert stats.first_bad.tolist() == [None, "x1", None, None, None, "1\n2", "a"]
    assert stats.minimum[5] == stats.maximum[5] == 5
    assert np.isnan(stats.minimum[3]) and np.isnan(stats.maximum[4]) and np.isnan(stats.maximum[6])


def test_validation_json_is_a_pure_function_of_the_data(
    clean: tuple[Path, ValidationReport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same files, another run and another spelling of the folder: byte-identical validation.json."""
    raw, _ = clean
    monkeypatch.chdir(raw.parent)
    validate_raw_dir(raw.resolve(), tmp_path / "absolute")  # absolute, inside the working directory
    validate_raw_dir(Path(raw.name), tmp_path / "relative")
    first = (tmp_path / "absolute" / "validation.json").read_text()
    assert first == (tmp_path / "relative" / "validation.json").read_text()
    assert str(raw.parent) not in first
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d|\d{8}T\d{6}", first), "a timestamp"
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-", first), "a random id"
    summary = (tmp_path / "relative" / "summary.html").read_text()
    assert summary == (tmp_path / "absolute" / "summary.html").read_text()


def test_summary_page_reads_offline_and_data_docs_name_the_run(
    clean: tuple[Path, ValidationReport], tmp_path: Path
) -> None:
    raw, _ = clean
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in raw.glob("*.csv"):
        (bad / path.name).write_bytes(path.read_bytes())
    training = pd.read_csv(bad / kaggle_csv.TRAINING_CSV)
    training.loc[2, "nose_tip_x"] = 140.0
    training.to_csv(bad / kaggle_csv.TRAINING_CSV, index=False)
    report = validate_raw_dir(bad, tmp_path / "report")
    page = (tmp_path / "report" / "summary.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), (
        "the page must load nothing from a network"
    )
    assert "FAILED" in page and "nose_tip_x" in page
    assert all(html.escape(error) in page for error in report.errors)
    assert "training.values" in page and 'href="data_docs/index.html"' in page
    docs_index = (tmp_path / "report" / "data_docs" / "index.html").read_text()
    assert "__none__" not in docs_index
    assert "'run_name': 'bad'" in docs_index  # the run is named after the raw folder


def test_fkp_validate_on_bad_data_says_where_the_summary_page_is(tmp_path: Path) -> None:
    import subprocess
    import sys

    raw = tmp_path / "raw"
    write_clean_set(raw)
    edit_csv(raw / kaggle_csv.TRAINING_CSV, lambda df: replace_token(df, 1, 0, "300"))
    done = subprocess.run(
        [sys.executable, "-m", "fkp.cli", "validate", str(raw), "--report-dir", str(tmp_path / "reports")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    page = tmp_path / "reports/summary.html"
    assert page.is_file() and str(page) in done.stdout.splitlines()[-1], done.stdout
