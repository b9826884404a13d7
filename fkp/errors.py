"""Errors that point a user at the exact place in their data that is wrong."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data, located by file, 1-based data row and column.

    ``row`` counts data rows (the header is not a row), so row 1 is on line 2 of the file.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.column = column
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row} (line {self.row + 1})")
        if self.column:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail
