"""What the team stack costs and buys: the servers' overhead on one training, and a sweep's wall time
on the local process pool vs the stack's 2-worker Dask cluster.

On a tiny copy of the project (the tests' sample, short epochs), from the repository root::

    python -m benchmarks.team_overhead --epochs 4 --repeat 2

1. ``fkp train`` with MLflow on the SQLite file, then on the MLflow server (PostgreSQL, proxied
   artifacts), ``--repeat`` times each, alternating; the median wall time of each.
2. A 4-variant sweep (``train.lr``), ``--max-parallel 2``, on the process pool, then on the Dask cluster
   (``--task-runner dask --address``), both logging to the server.

Prints a Markdown section for BENCHMARKS.md. Every step is a separate process, as a user runs it, so
the figures include the start-up of Python, TensorFlow and the task runner.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fkp.orchestration.stack.config import StackConfig, client_env
from fkp.orchestration.stack.supervisor import read_state

BIN = Path(sys.executable).parent
GRID = {"train.lr": [0.002, 0.004, 0.006, 0.008]}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "FKP_"))}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="False")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall time of one command, in seconds; its output is shown only if it fails."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="trainings per store (default: %(default)s)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_project_copy  # the tests' tiny project copy: one definition of it

    work = Path(tempfile.mkdtemp(prefix="fkp-team-bench-"))
    os.chmod(work, 0o755)  # the stack's PostgreSQL runs as the postgres user when this runs as root
    project = make_project_copy(work / "project", {"train": {"epochs": args.epochs, "patience": args.epochs}})
    state = work / "stack"
    fkp = str(BIN / "fkp")
    try:
        timed([str(BIN / "dvc"), "repro", "impute"], project, _env())
        train = {"sqlite": [], "server": []}
        timed(
            [fkp, "stack", "up", "--state-dir", str(state), "--project", str(project), "--no-deploy"],
            project,
            _env(),
        )
        config = StackConfig.from_dict(read_state(state)["config"])
        server_env = _env(**client_env(config), PREFECT_HOME=str(state / "client"), PYTHONPATH=str(project))
        for _ in range(args.repeat):
            train["sqlite"].append(timed([fkp, "train"], project, _env()))
            train["server"].append(timed([fkp, "train"], project, server_env))
        sweep = [sys.executable, "flows/sweep.py", "--grid", json.dumps(GRID), "--max-parallel", "2"]
        local_env = {k: v for k, v in server_env.items() if not k.startswith("FKP_SWEEP_")}
        local = timed([*sweep, "--task-runner", "process"], project, local_env)
        dask = timed([*sweep, "--task-runner", "dask", "--address", config.dask_address], project, server_env)
    finally:
        subprocess.run([fkp, "stack", "down", "--state-dir", str(state)], env=_env(), capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    sqlite, server = statistics.median(train["sqlite"]), statistics.median(train["server"])
    print(f"""## Team stack overhead

Measured {time.strftime("%Y-%m-%d")} on {platform.processor() or platform.machine()}, {os.cpu_count()} cores \
(shared), Python {platform.python_version()}; tiny sample (96 training faces), {args.epochs} epochs.

```bash
python -m benchmarks.team_overhead --epochs {args.epochs} --repeat {args.repeat}
```

| | wall time (s) |
|---|---|
| `fkp train`, MLflow on the SQLite file (median of {args.repeat}) | {sqlite:.1f} |
| `fkp train`, MLflow server on PostgreSQL, proxied artifacts (median of {args.repeat}) | {server:.1f} |
| overhead of the server per training | {server - sqlite:+.1f} |
| 4-variant sweep, `--max-parallel 2`, local process pool | {local:.1f} |
| 4-variant sweep, `--max-parallel 2`, Dask cluster of 2 worker processes | {dask:.1f} |
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
