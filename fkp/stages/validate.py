"""Validate a folder of raw Kaggle files with the Great Expectations suites.

Each file is checked twice: its header against ``<suite>.columns``, then a frame derived
from its rows against ``<suite>.values``. The derived frame keeps every check cheap and
exact: keypoints as numbers plus their text as written, and four small per-row columns
summarising each 36 KB ``Image`` field instead of the field itself. Bad data never
raises; it is reported with its file, row and column.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fkp.atomic import write_text
from fkp.core.expectations import CRITICAL, Finding, SuiteRunner, findings
from fkp.core.groups import GROUPS_CSV
from fkp.core.images import image_token_stats
from fkp.core.kaggle_csv import ID_LOOKUP_CSV, SAMPLE_SUBMISSION_CSV, TEST_CSV, TRAINING_CSV
from fkp.core.keypoints import COORD_COLUMNS, IMAGE_COLUMN
from fkp.stages.validation_page import render_summary

REPORT_JSON = "validation.json"
SUMMARY_HTML = "summary.html"
DATA_DOCS_DIR = "data_docs"
#: what GX adds to a result that changes on every run (times, random ids), dropped from
#: validation.json so that it is a pure function of the data (DVC stages depend on it)
_RUN_META = ("run_id", "validation_time", "validation_id", "checkpoint_id")
_READ_ERROR_CHARS = 300


@dataclass
class ValidationReport:
    """Outcome of validating a raw folder: ``success`` is False when any error was found."""

    success: bool
    errors: list[str]
    warnings: list[str]
    per_file: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> str:
        """Human summary: verdict, what was read, then every error and warning with file/row/column."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"Raw data validation {verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        ]
        for name, entry in self.per_file.items():
            if not entry.get("present"):
                lines.append(f"  {name}: {'not found' if entry.get('required') else 'absent (optional)'}")
            elif "rows" in entry:
                lines.append(f"  {name}: {entry['rows']} row(s) checked")
            else:
                lines.append(f"  {name}: rows not checked (see errors)")
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RawFile:
    """A raw file: its name, its suites, how its rows become the checked frame and what later files need.

    ``provides`` turns the checked frame into suite parameters of the files after it
    (e.g. the ImageIds of test.csv, which IdLookupTable.csv may name).
    """

    name: str
    suite: str
    required: bool
    derive: Callable[[pd.DataFrame], pd.DataFrame]
    provides: Callable[[pd.DataFrame], dict[str, Any]] = lambda frame: {}


def _as_numbers_and_text(raw: pd.DataFrame, column: str) -> dict[str, pd.Series]:
    """``column`` as a number (NaN when empty or not a number) and ``column.text`` as written.

    Text goes in as plain objects: GX filters the whole frame once per check, and pandas
    copies object columns about twice as fast as its default string columns.
    """
    text = raw[column].astype(object)
    return {column: pd.to_numeric(raw[column], errors="coerce"), f"{column}.text": text}


def _image_columns(images: pd.Series) -> dict[str, np.ndarray]:
    stats = image_token_stats(images.tolist())
    return {
        f"{IMAGE_COLUMN}.count": stats.n_tokens,
        f"{IMAGE_COLUMN}.non_integer": stats.first_bad,
        f"{IMAGE_COLUMN}.min": stats.minimum,
        f"{IMAGE_COLUMN}.max": stats.maximum,
    }


def derive_training(raw: pd.DataFrame) -> pd.DataFrame:
    """The frame ``training.values`` checks: 30 coordinates (number + text) and the Image stats."""
    columns: dict[str, Any] = {}
    for column in COORD_COLUMNS:
        columns.update(_as_numbers_and_text(raw, column))
    columns.update(_image_columns(raw[IMAGE_COLUMN]))
    return pd.DataFrame(columns, index=raw.index)


def derive_test(raw: pd.DataFrame) -> pd.DataFrame:
    """The frame ``test.values`` checks: ImageId (number + text) and the Image stats."""
    return pd.DataFrame(
        {**_as_numbers_and_text(raw, "ImageId"), **_image_columns(raw[IMAGE_COLUMN])}, index=raw.index
    )


def derive_id_lookup(raw: pd.DataFrame) -> pd.DataFrame:
    """The frame ``id_lookup.values`` checks: RowId, ImageId (number + text) and FeatureName."""
    return pd.DataFrame(
        {
            **_as_numbers_and_text(raw, "RowId"),
            **_as_numbers_and_text(raw, "ImageId"),
            "FeatureName": raw["FeatureName"].astype(object),
        },
        index=raw.index,
    )


def derive_submission(raw: pd.DataFrame) -> pd.DataFrame:
    """The frame ``sample_submission.values`` checks: RowId (number + text)."""
    return pd.DataFrame(_as_numbers_and_text(raw, "RowId"), index=raw.index)


def derive_groups(raw: pd.DataFrame) -> pd.DataFrame:
    """The frame ``groups.values`` checks: row and group (number + text)."""
    return pd.DataFrame(
        {**_as_numbers_and_text(raw, "row"), **_as_numbers_and_text(raw, "group")}, index=raw.index
    )


def _training_size(frame: pd.DataFrame) -> dict[str, Any]:
    return {"training_rows": len(frame), "training_last_row": len(frame) - 1}


def _test_image_ids(frame: pd.DataFrame) -> dict[str, Any]:
    ids = frame["ImageId"].to_numpy(dtype=np.float64)
    whole = ids[np.isfinite(ids) & (ids == np.floor(ids))]
    return {"test_image_ids": sorted(set(whole.astype(np.int64).tolist()))}


# in dependency order: a file's parameters come from files before it
RAW_FILES: tuple[RawFile, ...] = (
    RawFile(TRAINING_CSV, "training", True, derive_training, _training_size),
    RawFile(TEST_CSV, "test", True, derive_test, _test_image_ids),
    RawFile(ID_LOOKUP_CSV, "id_lookup", True, derive_id_lookup),
    RawFile(SAMPLE_SUBMISSION_CSV, "sample_submission", False, derive_submission),
    RawFile(GROUPS_CSV, "groups", False, derive_groups),
)


def validate_raw_dir(raw_dir: str | Path, report_dir: str | Path) -> ValidationReport:
    """Validate the Kaggle files in ``raw_dir``, writing ``report_dir/validation.json`` and ``data_docs/``.

    Never raises for bad data (it is reported); only I/O or programming errors raise.
    ``validation.json`` depends on the files' content and the folder as named (relative to the
    working directory when inside it) only; ``summary.html`` beside it shows the outcome offline.
    """
    raw_dir, report_dir = _relative_if_inside(Path(raw_dir)), Path(report_dir)
    run_name = raw_dir.resolve().name or "raw"  # "sample", "kaggle": GX files results under it (no "/")
    report_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DATA_DOCS_DIR}.", dir=report_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; the docs are meant to be read
    try:
        runner = SuiteRunner(staging)
        per_file: dict[str, dict] = {}
        found: list[Finding] = []
        parameters: dict[str, Any] = {}
        for spec in RAW_FILES:
            entry, file_findings, frame = _validate_file(
                runner, spec, raw_dir / spec.name, parameters, run_name
            )
            per_file[spec.name] = entry
            found.extend(file_findings)
            if frame is not None:
                parameters.update(spec.provides(frame))
        runner.build_docs()
        _replace_dir(staging, report_dir / DATA_DOCS_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    errors = [str(f) for f in found if f.is_error]
    report = ValidationReport(
        success=not errors,
        errors=errors,
        warnings=[str(f) for f in found if not f.is_error],
        per_file=per_file,
    )
    write_text(report_dir / REPORT_JSON, json.dumps(report.to_dict(), indent=1) + "\n")
    write_text(report_dir / SUMMARY_HTML, render_summary(report.to_dict(), raw_dir.as_posix(), DATA_DOCS_DIR))
    return report


def _relative_if_inside(path: Path) -> Path:
    """``path`` relative to the working directory when it lies inside it, else unchanged."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()) if path.is_absolute() else path
    except ValueError:
        return path


def stable_result(result: dict[str, Any]) -> dict[str, Any]:
    """A GX suite result without what differs between two runs on the same data.

    Drops the run id and time, the validation and expectation ids (random UUIDs) and the batch
    load time; keeps every expectation, its outcome and the data fingerprint.
    """
    meta = {k: v for k, v in result.get("meta", {}).items() if k not in _RUN_META}
    if "batch_markers" in meta:
        meta["batch_markers"] = {k: v for k, v in meta["batch_markers"].items() if k != "ge_load_time"}
    results = [
        {**item, "expectation_config": {k: v for k, v in item["expectation_config"].items() if k != "id"}}
        for item in result.get("results", [])
    ]
    return {**{k: v for k, v in result.items() if k != "id"}, "meta": meta, "results": results}


def _validate_file(
    runner: SuiteRunner, spec: RawFile, path: Path, parameters: dict[str, Any], run_name: str
) -> tuple[dict[str, Any], list[Finding], pd.DataFrame | None]:
    """Run both suites of one file; return its report entry, findings and the checked frame."""
    entry: dict[str, Any] = {
        "path": str(path),
        "present": path.is_file(),
        "required": spec.required,
        "suites": {},
    }
    if not entry["present"]:
        missing = Finding(CRITICAL, str(path), None, None, "required file not found")
        return entry, [missing] if spec.required else [], None
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except ValueError as exc:  # empty file, not CSV, not UTF-8
        return entry, [_read_failure(path, exc)], None
    columns_result, _ = runner.run(f"{spec.suite}.columns", header, run_name=run_name)
    columns_result = stable_result(columns_result)
    entry["suites"][f"{spec.suite}.columns"] = columns_result
    if not columns_result["success"]:  # rows are only checked once the header is right
        return entry, findings(columns_result, str(path)), None
    try:
        raw = _read_rows(path)
    except ValueError as exc:
        return entry, [_read_failure(path, exc)], None
    raw.index = pd.RangeIndex(1, len(raw) + 1)  # the 1-based data row: GX reports rows by it
    frame = spec.derive(raw)
    del raw
    values_result, skipped = runner.run(f"{spec.suite}.values", frame, parameters, run_name=run_name)
    values_result = stable_result(values_result)
    entry["suites"][f"{spec.suite}.values"] = values_result
    entry["rows"] = len(frame)
    entry["skipped"] = [e.get("description", e["type"]) for e in skipped]
    unchecked = [
        Finding("warning", str(path), None, e["kwargs"].get("column"), f"not checked: {e['description']}")
        for e in skipped  # the file it refers to could not be checked
    ]
    return entry, [*findings(values_result, str(path)), *unchecked], frame


def _read_rows(path: Path) -> pd.DataFrame:
    """Every cell as text (NaN when empty); pyarrow is 4x faster, pandas' own parser names bad lines.

    Pandas' parser also accepts short rows (their cells become empty), so the row checks can
    point at them.
    """
    try:
        return pd.read_csv(path, dtype=str, engine="pyarrow")
    except ValueError:
        return pd.read_csv(path, dtype=str)


def _read_failure(path: Path, exc: Exception) -> Finding:
    """A parser error as a finding, located at the row when the parser names its line."""
    message = " ".join(str(exc).split())
    if len(message) > _READ_ERROR_CHARS:
        message = message[:_READ_ERROR_CHARS] + "..."
    line = re.search(r"\bline (\d+)", message)
    row = int(line.group(1)) - 1 if line and int(line.group(1)) > 1 else None
    return Finding(CRITICAL, str(path), row, None, f"cannot be read as CSV: {message}")


def _replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, swapping out any previous ``target`` so readers never see a mix."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)
