"""Shared fixtures: a throwaway copy of the project on a tiny sample, and quiet, offline tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Small enough that a whole pipeline (train included) runs in well under a minute on 2 cores.
TINY_PARAMS = {
    "sample": {"n_train": 96, "n_test": 12, "seed": 1},
    "split": {"val_fraction": 0.25, "seed": 0},
    "train": {"epochs": 2, "batch_size": 32, "patience": 2},
}


def _project_files() -> list[str]:
    """Files git tracks or would track (untracked but not ignored): what a clone would hold."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project_copy(dest: Path, params_override: dict | None = None) -> Path:
    """Copy the project into ``dest`` as a fresh git + DVC repo with tiny params."""
    for rel in _project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params = merge(merge(params, TINY_PARAMS), params_override or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


@pytest.fixture
def project_copy(tmp_path, monkeypatch) -> Path:
    """A tiny, self-contained copy of the project; cwd is set to it, MLflow stays inside it."""
    dest = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(dest)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FKP_MLFLOW_ARTIFACTS", raising=False)
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return dest
