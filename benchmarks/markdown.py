"""BENCHMARKS.md is part generated, part hand-written: each benchmark rewrites only its own part."""

from __future__ import annotations

import os

#: The markers of the suite's part.
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


def splice(existing: str, generated: str, begin: str = BEGIN, end: str = END, *, append: bool = False) -> str:
    """``existing`` with its part between ``begin`` and ``end`` replaced by ``generated``.

    Hand-written sections are kept. A part not there yet goes first (or last with ``append``).
    """
    if begin in existing and end in existing:
        head, rest = existing.split(begin, 1)
        return head + generated + rest.split(end, 1)[1]
    if not existing.strip():
        return generated + "\n"
    return existing.rstrip("\n") + "\n\n" + generated + "\n" if append else generated + "\n\n" + existing


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
