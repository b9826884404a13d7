"""A copied or moved project keeps its MLflow artifacts to itself.

MLflow stores absolute artifact locations in ``mlflow.db`` (experiments, runs, logged models,
model versions). After ``cp -r project copy``, the copy's store would still write new artifacts
into the original project's ``mlartifacts/``. When the project's own default store (``mlflow.db``
at the project root, artifacts in ``mlartifacts/`` beside it) names another root, the locations are
rewritten to this root, in one transaction, before MLflow uses the store.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

ARTIFACTS_DIR = "mlartifacts"
#: every column of MLflow's SQL schema that holds an artifact location
COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)

_log = logging.getLogger(__name__)


def _local_path(location: str) -> Path | None:
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    if location.startswith("/"):
        return Path(location)
    return None


def previous_root(conn: sqlite3.Connection, root: Path) -> Path | None:
    """The project root the store's default artifact folder points at, if it is not ``root``."""
    for (location,) in conn.execute("SELECT artifact_location FROM experiments"):
        path = _local_path(location or "")
        if path is not None and path.name == ARTIFACTS_DIR and path.parent != root:
            return path.parent
    return None


def rewrite(location: str, old: Path, new: Path) -> str:
    """``location`` with the ``old`` root replaced by ``new`` (file URIs and plain paths alike)."""
    for before, after in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
        if location == before or location.startswith(before + "/"):
            return after + location[len(before) :]
    return location


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def relocate_store(database: Path, root: Path) -> Path | None:
    """Point the artifact locations of ``database`` at ``root``; the previous root, or ``None``."""
    root = root.resolve()
    conn = sqlite3.connect(database, timeout=30)
    try:
        tables = _tables(conn)
        if "experiments" not in tables:
            return None
        old = previous_root(conn, root)
        if old is None:
            return None
        with conn:  # one transaction: all locations move, or none
            for table, column in COLUMNS:
                if table not in tables:
                    continue
                rows = conn.execute(
                    f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL"
                ).fetchall()
                for rowid, value in rows:
                    new = rewrite(value, old, root)
                    if new != value:
                        conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (new, rowid))
    finally:
        conn.close()
    _log.info("the project moved from %s: its MLflow artifact locations now point at %s", old, root)
    return old
