"""Is the committed baseline (``dvc.lock`` + ``metrics.json``) still what today's code and params give?

Both files are committed so that every clone compares its runs against a known result:
``dvc metrics diff``, ``dvc params diff`` and ``dvc exp show`` read them from ``HEAD``. They stay true
only while the code, params and commands each stage ran with are the ones in the tree. This check
asks DVC's own ``status`` which stages differ from ``dvc.lock`` in what git holds (a tracked
dependency, a param, the command); outputs and generated data, which a clone does not have until
it runs the pipeline, do not count. It compares hashes only: no stage runs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: the one command that brings the baseline back in line (run from the repository root)
REFRESH = 'dvc repro && git add dvc.lock metrics.json && git commit -m "Baseline: dvc.lock and metrics.json"'


def _stage_reasons(changes: list[Any], tracked: Callable[[str], bool]) -> list[str]:
    """Why one stage's ``dvc status`` entry makes the committed lock stale (empty: it does not)."""
    reasons: list[str] = []
    for change in changes:
        if change == "changed checksum":  # the stage's command or definition in dvc.yaml
            reasons.append("its command in dvc.yaml changed")
        if not isinstance(change, Mapping):
            continue
        for path, state in (change.get("changed deps") or {}).items():
            if isinstance(state, Mapping):  # params.yaml: {key or section: "modified" | "new" | "deleted"}
                reasons.extend(f"{path} {key} {what}" for key, what in state.items())
            elif tracked(path):
                reasons.append(f"{path} {state}")
    return reasons


def stale_stages(status: Mapping[str, list[Any]], tracked: Callable[[str], bool]) -> dict[str, list[str]]:
    """Stages whose committed lock no longer matches the tree, each with what changed.

    ``status`` is ``Repo.status()``'s answer (stage -> changes); ``tracked`` tells a file git holds
    from generated data (a missing or rebuilt output is not a stale baseline).
    """
    stale = {}
    for stage, changes in status.items():
        if reasons := _stage_reasons(changes, tracked):
            stale[stage.split(":")[-1]] = reasons
    return stale


def _git_files(root: Path) -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def check(root: str | Path = ".") -> dict[str, list[str]]:
    """The stale stages of the repository at ``root`` (empty when the baseline holds)."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    files = _git_files(root)
    dirs = {str(parent) for f in files for parent in Path(f).parents}

    def tracked(path: str) -> bool:
        rel = path.rstrip("/")
        return rel in files or rel in dirs

    if not (root / "dvc.lock").is_file():
        return {"(all)": ["no dvc.lock committed"]}
    with Repo(str(root)) as repo:
        return stale_stages(repo.status(), tracked)


def report(stale: Mapping[str, list[str]]) -> str:
    """What ``fkp baseline`` prints: one line per stale stage, then the command that refreshes them."""
    if not stale:
        return "baseline: dvc.lock and metrics.json match the code, params and commands of every stage"
    lines = [f"baseline: dvc.lock is stale for {len(stale)} stage(s):"]
    lines += [f"  {stage}: {', '.join(reasons)}" for stage, reasons in stale.items()]
    lines.append(f"refresh it (reruns those stages): {REFRESH}")
    return "\n".join(lines)
