"""Prefect flow: train several param variants side by side and let the registry keep the best.

The data is prepared once (``reports/sweep/prepared``); then each variant runs impute -> train ->
evaluate as parallel tasks with its own outputs (``reports/sweep/<variant>/``,
``models/sweep/<variant>.keras``), so variants never overwrite each other or the main pipeline's
files. Every variant is an MLflow run named after it and tagged ``fkp.sweep=<flow run id>`` and
``fkp.variant=<name>``. The variants are then registered one at a time, best first: the registry only
moves the ``champion`` alias on a real improvement, so the best variant becomes champion if it beats
the current one. Run it from the repository root::

    python flows/sweep.py                                  # default grid, 2 variants at a time
    python flows/sweep.py --grid '{"impute.strategy": ["ffill", "mask"], "train.lr": [0.001, 0.0003]}'
    python flows/sweep.py --grid grid.yaml --max-parallel 3

A grid maps dotted param keys to lists of values (every combination is a variant) or is a list of
explicit variants (``[{"model.arch": "lean"}, {"model.arch": "seed", "model.width": 48}]``). Data
params (``data``, ``sample``, ``split``) cannot vary: the sweep prepares the data once.

Task runner. Keras is not safe to train from several threads of one process, so by default each
variant's steps run in a local process pool (``ProcessPoolTaskRunner``, ``--max-parallel`` workers).
The runner is configuration, not code: ``--task-runner`` / ``--address`` on the command line, or the
environment variables ``FKP_SWEEP_TASK_RUNNER`` / ``FKP_SWEEP_ADDRESS`` (also read by deployments).

On a Dask cluster::

    pip install prefect-dask                   # where the flow runs and on every worker
    cd <repository> && PYTHONPATH=. dask worker tcp://scheduler:8786   # on each worker machine
    python flows/sweep.py --task-runner dask --address tcp://scheduler:8786 --max-parallel 8

On a Ray cluster::

    pip install prefect-ray                    # where the flow runs and in the cluster's environment
    python flows/sweep.py --task-runner ray --address ray://head:10001 --max-parallel 8

Without ``--address`` a temporary local Dask cluster (or Ray instance) is started. Workers import
the tasks from this file and read and write the repository's folders, so they need the project
installed (``pip install -e .``), the repository checked out at the same path on a shared
filesystem, and one MLflow store for all: point ``MLFLOW_TRACKING_URI`` at an MLflow tracking
server (``mlflow server``) on every machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import State, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from fkp import tracking
from fkp.envvars import env_var
from fkp.lock import REGISTRY_LOCK, file_lock
from fkp.params import Params, from_dict, load_params

#: impute strategies x model architectures (fkp.models)
DEFAULT_GRID: dict[str, list[Any]] = {
    "model.arch": ["seed", "lean"],
    "impute.strategy": ["ffill", "mask", "drop"],
}
DEFAULT_MAX_PARALLEL = 2
RUNNER_ENV = "FKP_SWEEP_TASK_RUNNER"
ADDRESS_ENV = "FKP_SWEEP_ADDRESS"
RUNNERS = ("process", "dask", "ray")
FIXED_SECTIONS = ("data.", "sample.", "split.")  # the data is prepared once for all variants

SWEEP_DIR = Path("reports/sweep")
PREPARED_DIR = SWEEP_DIR / "prepared"
MODELS_DIR = Path("models/sweep")

TAG_SWEEP = "fkp.sweep"
TAG_VARIANT = "fkp.variant"
TAG_RUN_NAME = "mlflow.runName"


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One param set of the sweep and where its outputs go."""

    name: str
    overrides: dict[str, Any]
    params: Params

    @property
    def out_dir(self) -> Path:
        return SWEEP_DIR / self.name

    @property
    def targets(self) -> Path:
        return self.out_dir / "targets.npz"

    @property
    def model(self) -> Path:
        return MODELS_DIR / f"{self.name}.keras"

    @property
    def history(self) -> Path:
        return self.out_dir / "train" / "history.csv"

    @property
    def run_file(self) -> Path:
        return self.out_dir / "train" / "run.json"

    @property
    def metrics(self) -> Path:
        return self.out_dir / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.out_dir / "eval"

    @property
    def registry(self) -> Path:
        return self.out_dir / "registry.json"


def expand_grid(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of a ``{key: [values]}`` grid, or an explicit list of variants as given."""
    if isinstance(grid, Mapping):
        for key, values in grid.items():
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"grid: {key!r} must map to a non-empty list of values, got {values!r}")
        keys = list(grid)
        combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    else:
        combos = [dict(item) for item in grid]
    if not combos:
        raise ValueError("grid: no variants")
    for combo in combos:
        fixed = sorted(k for k in combo if k.startswith(FIXED_SECTIONS))
        if fixed:
            raise ValueError(
                f"grid: {fixed} cannot vary in a sweep (the data is prepared once for all variants)"
            )
    return combos


def variant_name(overrides: Mapping[str, Any]) -> str:
    """The values joined in grid order (``seed-ffill``): short, readable, safe as a file name."""
    text = "-".join(str(v) for v in overrides.values()) or "base"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested params dict with dotted keys (``train.lr``) replaced."""
    out = json.loads(json.dumps(base))
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(f"grid: {key!r} goes through a value that is not a section")
        node[leaf] = value
    return out


def make_variants(
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]], base: Mapping[str, Any]
) -> list[Variant]:
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for overrides in expand_grid(grid):
        name = variant_name(overrides)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"
        try:
            params = from_dict(apply_overrides(base, overrides))
        except (TypeError, ValueError) as error:
            raise ValueError(f"grid variant {overrides}: {error}") from None
        variants.append(Variant(name, overrides, params))
    return variants


# --------------------------------------------------------------------------- task runner


def build_task_runner(
    kind: str | None = None, address: str | None = None, max_workers: int = DEFAULT_MAX_PARALLEL
) -> TaskRunner:
    """The task runner for ``kind`` (process | dask | ray); ``address`` names an existing cluster."""
    kind = (kind or "process").lower()
    if kind == "process":
        if address:
            raise ValueError("--address only applies to --task-runner dask or ray")
        return ProcessPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RuntimeError("the dask task runner needs prefect-dask: pip install prefect-dask") from None
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise RuntimeError("the ray task runner needs prefect-ray: pip install prefect-ray") from None
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ValueError(f"unknown task runner {kind!r}; choose one of {', '.join(RUNNERS)}")


# --------------------------------------------------------------------------- tasks


def _prefect_entrypoint() -> contextlib.AbstractContextManager[None]:
    """MLflow runs opened here record ``fkp.entrypoint=prefect`` (the task may run in a worker process)."""
    return env_var(tracking.ENTRYPOINT_ENV, "prefect")


def _workers_report_here() -> contextlib.AbstractContextManager[None]:
    """Point worker processes at the Prefect server this flow run reports to.

    Without a configured ``PREFECT_API_URL`` the flow run talks to a temporary local server, and each
    worker process would start a temporary server of its own, whose task runs nobody sees. Worker
    processes inherit the environment of the first submission, so setting the URL here is enough.
    """
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    return env_var("PREFECT_API_URL", str(get_run_context().client.api_url).rstrip("/"))


@task(name="prepare", cache_policy=NO_CACHE, log_prints=True)
def prepare_once(raw_dir: Path, params: Params) -> None:
    from fkp.prepare import prepare

    prepare(raw_dir, PREPARED_DIR, params.split)


@task(name="impute", task_run_name="impute-{variant.name}", cache_policy=NO_CACHE, log_prints=True)
def impute_variant(variant: Variant) -> None:
    from fkp.impute import run_impute

    variant.out_dir.mkdir(parents=True, exist_ok=True)
    (variant.out_dir / "params.yaml").write_text(
        yaml.safe_dump(dataclasses.asdict(variant.params), sort_keys=False)
    )
    run_impute(PREPARED_DIR, variant.targets, variant.params.impute.strategy)


@task(
    name="train",
    task_run_name="train-{variant.name}",
    cache_policy=NO_CACHE,
    log_prints=True,
    retries=1,
    retry_delay_seconds=10,
)
def train_variant(variant: Variant, raw_dir: Path, sweep_id: str) -> Any:
    from mlflow import MlflowClient

    from fkp.train import run_train

    with _prefect_entrypoint():
        outcome = run_train(
            variant.params,
            prepared_dir=PREPARED_DIR,
            targets_path=variant.targets,
            model_out=variant.model,
            history_out=variant.history,
            run_file=variant.run_file,
            raw_dir=raw_dir,
        )
    client = MlflowClient()
    for key, value in {TAG_SWEEP: sweep_id, TAG_VARIANT: variant.name, TAG_RUN_NAME: variant.name}.items():
        client.set_tag(outcome.run_id, key, value)
    get_run_logger().info(
        "%s: MLflow run %s, best val RMSE %.3f px", variant.name, outcome.run_id, outcome.best_val_rmse
    )
    return outcome


@task(
    name="evaluate",
    task_run_name="evaluate-{variant.name}",
    cache_policy=NO_CACHE,
    log_prints=True,
    retries=2,
    retry_delay_seconds=5,
)
def evaluate_variant(variant: Variant) -> dict[str, Any]:
    from fkp.evaluate import run_evaluate

    with _prefect_entrypoint():
        return run_evaluate(
            variant.params,
            model_path=variant.model,
            prepared_dir=PREPARED_DIR,
            run_file=variant.run_file,
            history_path=variant.history,
            metrics_out=variant.metrics,
            plots_dir=variant.plots,
        )


@task(
    name="register",
    task_run_name="register-{variant.name}",
    cache_policy=NO_CACHE,
    log_prints=True,
    retries=2,
    retry_delay_seconds=5,
)
def register_variant(variant: Variant) -> dict[str, Any]:
    from fkp.promote import run_register

    with (
        _prefect_entrypoint(),
        file_lock(REGISTRY_LOCK, owner="sweep register", on_wait=get_run_logger().info),
    ):
        record = run_register(
            variant.params,
            run_file=variant.run_file,
            metrics_path=variant.metrics,
            prepared_dir=PREPARED_DIR,
            out=variant.registry,
        )
    get_run_logger().info("%s -> v%s: %s", variant.name, record["version"], record["reason"])
    return record


# --------------------------------------------------------------------------- flow


def _train_and_evaluate(
    variants: list[Variant], raw_dir: Path, sweep_id: str, max_parallel: int
) -> dict[str, tuple[PrefectFuture, PrefectFuture]]:
    """Submit impute -> train -> evaluate per variant, at most ``max_parallel`` chains at a time.

    Returns each variant's (train, evaluate) futures once all have finished, failed or not.
    """
    chains: dict[str, tuple[PrefectFuture, PrefectFuture]] = {}
    in_flight: list[PrefectFuture] = []
    for variant in variants:
        if len(in_flight) >= max_parallel:
            in_flight.remove(next(as_completed(in_flight)))
        imputed = impute_variant.submit(variant)
        trained = train_variant.submit(variant, raw_dir, sweep_id, wait_for=[imputed])
        evaluated = evaluate_variant.submit(variant, wait_for=[trained])
        chains[variant.name] = (trained, evaluated)
        in_flight.append(evaluated)
    for _, evaluated in chains.values():
        evaluated.wait()
    return chains


@flow(
    name="sweep",
    log_prints=True,
    task_runner=build_task_runner(os.environ.get(RUNNER_ENV), os.environ.get(ADDRESS_ENV)),
)
def sweep(
    grid: dict[str, list[Any]] | list[dict[str, Any]] | None = None,
    params_path: str = "params.yaml",
    max_parallel: int = DEFAULT_MAX_PARALLEL,
) -> dict[str, Any]:
    """Train every variant of ``grid`` (default :data:`DEFAULT_GRID`) over ``params_path``; register them.

    At most ``max_parallel`` variants are in flight at once, whatever the task runner offers. The run
    fails (after registering the variants that finished) if any variant failed.
    """
    logger = get_run_logger()
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
    base = yaml.safe_load(Path(params_path).read_text()) if Path(params_path).exists() else {}
    base_params = load_params(params_path)
    variants = make_variants(grid or DEFAULT_GRID, base or {})
    sweep_id = str(flow_run.id)
    raw_dir = Path("data/raw") / base_params.data.source
    if not any(raw_dir.glob("*.csv")):
        raise FileNotFoundError(
            f"{raw_dir}: no raw data (run the retrain flow or `dvc repro validate` first)"
        )
    logger.info("sweep %s: %d variants: %s", sweep_id, len(variants), ", ".join(v.name for v in variants))

    prepare_once(raw_dir, base_params)
    with _workers_report_here():
        chains = _train_and_evaluate(variants, raw_dir, sweep_id, max_parallel)
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for variant in variants:
        trained, evaluated = chains[variant.name]
        if evaluated.state.is_completed():
            results[variant.name] = {
                "run_id": trained.result().run_id,
                "val_rmse": evaluated.result()["val_rmse"],
            }
        else:
            state = evaluated.state if trained.state.is_completed() else trained.state
            failed[variant.name] = f"{state.name}: {state.message}"

    by_rmse = sorted(variants, key=lambda v: results.get(v.name, {}).get("val_rmse", float("inf")))
    for variant in (v for v in by_rmse if v.name in results):
        record = register_variant(variant)
        results[variant.name].update(version=record["version"], promoted=record["promoted"])
    for name, entry in results.items():
        logger.info(
            "%s: val RMSE %.3f px, v%s%s",
            name,
            entry["val_rmse"],
            entry["version"],
            " (champion)" if entry["promoted"] else "",
        )
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(variants)} variants failed: {json.dumps(failed, indent=1)}"
        )
    best = min(results, key=lambda name: results[name]["val_rmse"])
    return {"sweep_id": sweep_id, "variants": results, "best": best}


# --------------------------------------------------------------------------- command line


def run_sweep(
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | None = None,
    params_path: str = "params.yaml",
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    task_runner: TaskRunner | None = None,
) -> State:
    """Run :func:`sweep` on ``task_runner`` (default: the configured one, sized to ``max_parallel``).

    Returns the final state of the flow run.
    """
    runner = task_runner or build_task_runner(
        os.environ.get(RUNNER_ENV), os.environ.get(ADDRESS_ENV), max_parallel
    )
    return sweep.with_options(task_runner=runner)(
        grid=grid, params_path=params_path, max_parallel=max_parallel, return_state=True
    )


def _read_grid(text: str) -> Any:
    """``--grid`` is inline JSON or the path of a YAML/JSON file."""
    path = Path(text)
    return yaml.safe_load(path.read_text()) if path.is_file() else json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a grid of param variants with Prefect.")
    parser.add_argument("--params", default="params.yaml", help="base params file (default: %(default)s)")
    parser.add_argument("--grid", type=_read_grid, help="JSON grid or a YAML/JSON file (default: 3 x 2)")
    parser.add_argument("--max-parallel", type=int, default=DEFAULT_MAX_PARALLEL, help="default: %(default)s")
    parser.add_argument(
        "--task-runner",
        choices=RUNNERS,
        default=os.environ.get(RUNNER_ENV, "process"),
        help=f"where the variants run (default: ${RUNNER_ENV} or process)",
    )
    parser.add_argument("--address", default=os.environ.get(ADDRESS_ENV), help="Dask scheduler / Ray address")
    args = parser.parse_args(argv)
    try:
        runner = build_task_runner(args.task_runner, args.address, args.max_parallel)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    state = run_sweep(args.grid, args.params, args.max_parallel, runner)
    if not state.is_completed():
        print(f"sweep ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=2))
    return 0


if __name__ == "__main__":
    # Worker processes import the tasks by module name, so run them from ``flows.sweep``, not ``__main__``.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flows.sweep import main as sweep_main

    sys.exit(sweep_main())
