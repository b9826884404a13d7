"""Temporarily set an environment variable (e.g. the entrypoint tag a flow's MLflow runs get)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    """Set ``name=value`` for the body, then restore what was there (or its absence)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
