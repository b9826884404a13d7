"""Run the committed Great Expectations suites and turn their results into located findings.

The suites are GX JSON files under ``expectations/``. GX evaluates them on in-memory frames
in an ephemeral context (no project folder), returns each result as JSON and renders them
as Data Docs; :func:`findings` turns a result into messages naming the file, row and column.
GX itself is imported only when a :class:`SuiteRunner` starts: the import takes seconds.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fkp.errors import DataError

SUITES_DIR = Path(__file__).resolve().parents[2] / "expectations"
#: Rows listed one by one per failed check; the rest are counted (validation.json keeps them all).
MAX_ROWS_PER_CHECK = 20
CRITICAL = "critical"
_SITE = "raw_data"
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class Finding:
    """One failed expectation (or one failing row of it), located in the raw file."""

    severity: str  # GX severity of the expectation: "critical" fails validation, others only warn
    file: str
    row: int | None
    column: str | None
    detail: str

    @property
    def is_error(self) -> bool:
        return self.severity == CRITICAL

    def __str__(self) -> str:
        return str(DataError(self.detail, file=self.file, row=self.row, column=self.column))


def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> dict[str, Any]:
    """The suite ``name`` as GX JSON (``expectations/<name>.json``)."""
    return json.loads((suites_dir / f"{name}.json").read_text(encoding="utf-8"))


def split_unbound(suite: dict[str, Any], parameters: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """Drop expectations whose ``$PARAMETER`` is not in ``parameters`` (e.g. test.csv is unreadable).

    Returns the runnable suite and the dropped expectations, so the caller can say what was not checked.
    """
    runnable, dropped = [], []
    for expectation in suite["expectations"]:
        needed = [v["$PARAMETER"] for v in expectation["kwargs"].values() if isinstance(v, dict)]
        (dropped if any(p not in parameters for p in needed) else runnable).append(expectation)
    return {**suite, "expectations": runnable}, dropped


class SuiteRunner:
    """One ephemeral GX context: runs suites on frames and renders every run as Data Docs."""

    def __init__(self, docs_dir: Path, suites_dir: Path = SUITES_DIR) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage statistics, no network
        import great_expectations as gx  # takes seconds: only once a validation starts
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        site = {
            "class_name": "SiteBuilder",
            # GX wants an absolute folder when no project root is configured
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False},
        }
        config = DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites={_SITE: site},
        )
        self._gx = gx
        self._context = gx.get_context(mode="ephemeral", project_config=config)
        self._source = self._context.data_sources.add_pandas("raw_files")
        self._suites_dir = suites_dir

    def run(
        self,
        suite_name: str,
        frame: pd.DataFrame,
        parameters: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> tuple[dict[str, Any], list[dict]]:
        """Validate ``frame`` against a suite; return GX's result as JSON and the expectations skipped.

        ``run_name`` is what Data Docs list the result under (GX shows ``__none__`` without one).
        """
        parameters = parameters or {}
        spec, skipped = split_unbound(load_suite(suite_name, self._suites_dir), parameters)
        suite = self._context.suites.add(self._gx.ExpectationSuite(**spec))
        asset = self._source.add_dataframe_asset(suite_name)
        batch = asset.add_batch_definition_whole_dataframe("whole file")
        definition = self._context.validation_definitions.add(
            self._gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        )
        from great_expectations.core.run_identifier import RunIdentifier

        result = definition.run(
            batch_parameters={"dataframe": frame},
            run_id=RunIdentifier(run_name=run_name) if run_name else None,
            expectation_parameters=parameters,
            result_format={"result_format": "COMPLETE"},
        )
        return json_safe(result.to_json_dict()), skipped

    def build_docs(self) -> None:
        """Render the suites and every result of this runner into its Data Docs folder."""
        self._context.build_data_docs(site_names=[_SITE])


def findings(result: dict[str, Any], file: str) -> list[Finding]:
    """Every failure in a GX suite result, one per failing row (capped per check).

    Row-level results name rows by the validated frame's index, which must be the 1-based data row.
    """
    return [
        finding for item in result["results"] if not item["success"] for finding in _item_findings(item, file)
    ]


def _item_findings(item: dict[str, Any], file: str) -> list[Finding]:
    config = item["expectation_config"]
    severity = str(config.get("severity") or CRITICAL)
    column = (config.get("meta") or {}).get("file_column") or config["kwargs"].get("column")
    description = config.get("description") or config["type"]
    res = item.get("result") or {}
    if problem := _exception_message(item.get("exception_info") or {}):
        return [Finding(severity, file, None, column, f"{description}: check could not run ({problem})")]
    if config["type"] == "expect_table_columns_to_match_set":
        return [Finding(severity, file, None, None, _columns_detail(res))]
    if "unexpected_index_list" in res:
        return _row_findings(res, config["type"], severity, file, column, description)
    observed = show(res.get("observed_value"))
    return [Finding(severity, file, None, column, f"{description}: found {observed}")]


def _columns_detail(res: dict[str, Any]) -> str:
    mismatched = (res.get("details") or {}).get("mismatched") or {}
    parts = []
    if mismatched.get("missing"):
        parts.append(f"missing column(s) {sorted(mismatched['missing'])}")
    if mismatched.get("unexpected"):
        parts.append(f"unexpected column(s) {sorted(mismatched['unexpected'])}")
    return "; ".join(parts) or f"columns differ from the Kaggle layout: found {res.get('observed_value')}"


def _row_findings(
    res: dict[str, Any], kind: str, severity: str, file: str, column: str | None, description: str
) -> list[Finding]:
    rows = [int(i) for i in res["unexpected_index_list"]]  # frames are indexed by 1-based data row
    values = res.get("unexpected_list") or [None] * len(rows)
    rows_of_value: dict[str, list[int]] = defaultdict(list)
    for row, value in zip(rows, values, strict=True):
        rows_of_value[show(value)].append(row)
    out = []
    for row, value in zip(rows[:MAX_ROWS_PER_CHECK], values, strict=False):
        detail = description if value is None else f"{description}: found {show(value)}"
        if kind == "expect_column_values_to_be_unique":
            others = [r for r in rows_of_value[show(value)] if r != row]
            detail = f"{description}: {show(value)} is also in row(s) {_row_list(others)}"
        out.append(Finding(severity, file, row, column, detail))
    if len(rows) > MAX_ROWS_PER_CHECK:
        more = len(rows) - MAX_ROWS_PER_CHECK
        detail = f"{description}: {more} more row(s) fail; validation.json lists them all"
        out.append(Finding(severity, file, None, column, detail))
    return out


def _row_list(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX reports one exception, or one per metric; return the first message if anything raised."""
    if "raised_exception" in info:
        return str(info.get("exception_message") or "error") if info["raised_exception"] else None
    for nested in info.values():
        if isinstance(nested, dict) and (message := _exception_message(nested)):
            return message
    return None


def show(value: object) -> str:
    """A value as a message shows it: whole floats without ``.0``, text quoted and shortened."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")
    return str(value)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by their names ("nan", "inf"), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
