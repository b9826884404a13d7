"""Structured access logs: one JSON object per request on the ``fkp.serving.web.access`` logger.

Machines (log shippers, ``jq``) read JSON lines without a parser per format; uvicorn's own
text access log is switched off so each request is logged once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LOGGER_NAME = "fkp.serving.web.access"
_log = logging.getLogger(LOGGER_NAME)


def access_record(
    *, method: str, path: str, status: int, seconds: float, client: str | None, **extra: Any
) -> dict[str, Any]:
    """The fields of one access-log line (``extra``: model version, faces, error code, ...)."""
    record = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "method": method,
        "path": path,
        "status": status,
        "ms": round(seconds * 1000, 2),
        "client": client,
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def log_access(record: dict[str, Any]) -> None:
    _log.info(json.dumps(record, separators=(",", ":")))


def configure(stream=None) -> None:
    """Send access lines, bare, to ``stream`` (stderr by default); idempotent."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
