"""Make a retrain a versioned point: commit what it produced to a git branch the user names.

A retrain's state is ``dvc.lock`` (the hashes of data, model and every output), ``params.yaml`` and
``metrics.json``; the outputs themselves are in DVC's cache (``dvc push`` sends them to the remote).
:func:`commit_to_branch` commits those files, on top of the code that ran, to a branch, without
touching the user's checkout unless that branch is the one checked out. Anyone can then restore the
exact data and model of that retrain with ``git checkout <commit> && dvc pull``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: what a retrain commits (when present): the pipeline's state, its knobs and its scores
STATE_FILES = ("dvc.lock", "params.yaml", "metrics.json")


def git(args: Sequence[str], root: str | Path = ".", env: dict[str, str] | None = None) -> str:
    """Run git; its stdout stripped. Raises ``RuntimeError`` with git's own message on failure."""
    done = subprocess.run(
        ["git", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def current_branch(root: str | Path = ".") -> str | None:
    name = git(["rev-parse", "--abbrev-ref", "HEAD"], root)
    return None if name == "HEAD" else name


def has_upstream(root: str | Path = ".") -> bool:
    try:
        git(["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}"], root)
    except RuntimeError:
        return False
    return True


def _branch_tip(branch: str, root: str | Path) -> str | None:
    try:
        return git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], root)
    except RuntimeError:
        return None


def commit_to_branch(
    branch: str, message: str, root: str | Path = ".", extra: Sequence[str | Path] = ()
) -> str:
    """Commit the workspace's tracked files plus :data:`STATE_FILES` (and ``extra``) to ``branch``.

    The commit's tree is exactly what ran: HEAD's files with the workspace's changes to tracked files
    and the state files. Its parents are the branch's tip (when the branch exists) and HEAD, so the
    branch keeps a history of retrains and each one shows the code it ran. When ``branch`` is checked
    out this is an ordinary commit. Returns the new commit's sha.
    """
    root = Path(root)
    files = [str(f) for f in (*STATE_FILES, *extra) if (root / f).exists()]
    if branch == current_branch(root):
        git(["add", "-u"], root)
        git(["add", "--", *files], root)
        git(["commit", "-q", "--allow-empty", "-m", message], root)
        return git(["rev-parse", "HEAD"], root)
    head = git(["rev-parse", "HEAD"], root)
    tip = _branch_tip(branch, root)
    with tempfile.TemporaryDirectory(prefix="fkp-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(["read-tree", "HEAD"], root, env)
        git(["add", "-u"], root, env)
        git(["add", "--", *files], root, env)
        tree = git(["write-tree"], root, env)
    parents = [p for p in (tip, head) if p]
    parents = list(dict.fromkeys(parents))
    args = ["commit-tree", tree, "-m", message]
    for parent in parents:
        args += ["-p", parent]
    commit = git(args, root)
    git(["update-ref", f"refs/heads/{branch}", commit, *([tip] if tip else [])], root)
    return commit
