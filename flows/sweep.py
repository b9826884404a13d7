"""Prefect flow: train several param variants as DVC experiments and let the registry keep the best.

Each variant is one ``dvc exp run --temp -S key=value ...`` of the ``dvc.yaml`` pipeline up to the stages
that write metrics (``evaluate``), in its own temporary copy of the workspace, so variants never touch
the workspace's files and DVC reuses every stage a variant does not change (its cache is shared). So
``dvc exp show`` and the MLflow UI list the same variants with the same numbers, and the winner is
applied with ``dvc exp apply <name>`` (then ``dvc repro`` registers and predicts with it). Every variant
is an MLflow run tagged ``fkp.sweep=<flow run id>``, ``fkp.variant=<name>`` and ``fkp.dvc_exp=<exp>``.
The variants are then registered one at a time, best first: the registry only moves the ``champion``
alias on a real improvement, so it moves at most once, to the best variant if it beats the champion.
The sweep takes no lock of its own: each variant's ``dvc --wait-for-lock exp run --temp`` takes DVC's
repository lock for the moments it reads or records the workspace (so it waits while a retrain holds
the pipeline) and trains in a temporary copy, never in the workspace. Run it from the repository root::

    python flows/sweep.py                                  # default grid, 2 variants at a time
    python flows/sweep.py --grid '{"impute.strategy": ["ffill", "mask"], "train.lr": [0.001, 0.0003]}'
    python flows/sweep.py --grid grid.yaml --max-parallel 3
    dvc exp show --only-changed --drop '.*/|metrics.json|Created'   # the same variants and scores

A grid maps dotted param keys to lists of values (every combination is a variant) or is a list of
explicit variants (``[{"model.arch": "lean"}, {"model.arch": "seed", "model.width": 48}]``), where a
``name`` key names the variant (``{"name": "wide", "model.width": 48}``; by default its values). Data
params (``data``, ``sample``, ``split``) cannot vary: every variant must be scored on the same split.

Task runner. Each variant is a task that runs ``dvc exp run`` in a subprocess; by default the tasks run
in a local process pool (``ProcessPoolTaskRunner``, ``--max-parallel`` workers). The runner is
configuration, not code: ``--task-runner`` / ``--address`` on the command line, or the environment
variables ``FKP_SWEEP_TASK_RUNNER`` / ``FKP_SWEEP_ADDRESS`` (also read by deployments). On a Dask
cluster::

    pip install prefect-dask                   # where the flow runs and on every worker
    cd <repository> && PYTHONPATH=. dask worker tcp://scheduler:8786   # on each worker machine
    python flows/sweep.py --task-runner dask --address tcp://scheduler:8786 --max-parallel 8

Without ``--address`` a temporary local Dask cluster is started. Workers import the tasks from this
file and run ``dvc exp run`` in the repository, so they need the project installed
(``pip install -e .``), the repository at the same path (a shared folder), and one MLflow store for
all: the flow passes its ``MLFLOW_TRACKING_URI`` to every variant, so point it at an MLflow tracking
server (``mlflow server``) when the workers are on other machines.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import State, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run, task_run
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from fkp import tracking
from fkp.envvars import env_var
from fkp.orchestration import crash_detection, pipeline
from fkp.orchestration.prefect_local import api_url
from fkp.orchestration.run_names import run_namer
from fkp.params import Params, from_dict, load_params

#: impute strategies x model architectures (fkp.core.models)
DEFAULT_GRID: dict[str, list[Any]] = {
    "model.arch": ["seed", "lean"],
    "impute.strategy": ["ffill", "mask", "drop"],
}
DEFAULT_MAX_PARALLEL = 2
RUNNER_ENV = "FKP_SWEEP_TASK_RUNNER"
ADDRESS_ENV = "FKP_SWEEP_ADDRESS"
RUNNERS = ("process", "dask", "ray")
FIXED_SECTIONS = ("data.", "sample.", "split.")  # every variant is scored on the same split

#: where each variant's handover files are kept for registration (git-ignored)
SWEEP_DIR = Path("reports/sweep")
RUN_FILE = "reports/train/run.json"
METRICS_FILE = "metrics.json"

#: what the stage commands of a variant read (fkp.tracking tags the MLflow run with them)
SWEEP_ENV = tracking.SWEEP_ENV
VARIANT_ENV = tracking.VARIANT_ENV


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One param set of the sweep: its name, its ``-S`` overrides and the params they give."""

    name: str
    overrides: dict[str, Any]
    params: Params

    def set_args(self) -> list[str]:
        """``-S key=value`` per override, values in YAML (what ``dvc exp run -S`` parses)."""
        args: list[str] = []
        for key, value in self.overrides.items():
            text = value if isinstance(value, str) else json.dumps(value)
            args += ["-S", f"{key}={text}"]
        return args

    def exp_name(self, sweep_id: str, attempt: int = 1) -> str:
        """The DVC experiment's name: the variant and the sweep (and the attempt, when retried)."""
        name = f"{self.name}-{sweep_id[:8]}"
        return name if attempt <= 1 else f"{name}-retry{attempt - 1}"


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
        overrides = dict(overrides)  # an explicit variant may name itself
        name = str(overrides.pop("name", "")) or variant_name(overrides)
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
        return ProcessPoolTaskRunner(max_workers=max_workers, initializer=pipeline.stop_commands_on)
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


def _workers_report_here() -> contextlib.AbstractContextManager[None]:
    """Point worker processes at the Prefect server this flow run reports to.

    Without a configured ``PREFECT_API_URL`` the flow run talks to a temporary local server, and each
    worker process would start a temporary server of its own, whose task runs nobody sees. Worker
    processes inherit the environment of the first submission, so setting the URL here is enough.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    return env_var("PREFECT_API_URL", str(get_run_context().client.api_url).rstrip("/"))


def _read_exp_json(root: str, path: str, exp: str) -> dict[str, Any]:
    import dvc.api

    return json.loads(dvc.api.read(path, repo=root, rev=exp))


def _retry_unless_interrupted(task: Any, task_run: Any, state: State) -> bool:
    """A variant stopped because the sweep was stopped is not retried."""
    return not isinstance(state.data, pipeline.Interrupted)


@task(
    name="variant",
    task_run_name="{variant.name}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_unless_interrupted,
)
def run_variant(variant: Variant, root: str, targets: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One variant as a DVC experiment (``dvc exp run --temp``); its MLflow run, score and model."""
    logger = get_run_logger()
    exp = variant.exp_name(env[SWEEP_ENV], task_run.run_count or 1)
    argv = [pipeline.dvc_executable(), "--wait-for-lock", "exp", "run", "--temp", "-n", exp]
    pipeline.run([*argv, *variant.set_args(), *targets], root=root, on_line=logger.info, env=env)
    handover = _read_exp_json(root, RUN_FILE, exp)
    metrics = _read_exp_json(root, METRICS_FILE, exp)
    logger.info("%s: DVC experiment %s, val RMSE %.4f px", variant.name, exp, metrics["val_rmse"])
    return {
        "exp": exp,
        "run_id": handover["run_id"],
        "handover": handover,
        "metrics": metrics,
        "val_rmse": float(metrics["val_rmse"]),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


@task(
    name="register", task_run_name="register-{name}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5
)
def register_variant(name: str, result: dict[str, Any], params: Params) -> dict[str, Any]:
    """Register one variant's model (the registry moves the champion only if it is better)."""
    from fkp.stages.register import run_register

    out = SWEEP_DIR / result["exp"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(result["handover"]) + "\n")
    (out / "metrics.json").write_text(json.dumps(result["metrics"]) + "\n")
    record = run_register(
        params, run_file=out / "run.json", metrics_path=out / "metrics.json", out=out / "registry.json"
    )
    get_run_logger().info("%s: %s", name, record["reason"])  # the reason names the version, if any
    return record


# --------------------------------------------------------------------------- flow


def _run_variants(
    variants: list[Variant], root: str, targets: list[str], env: dict[str, str], max_parallel: int
) -> dict[str, PrefectFuture]:
    """Submit every variant, at most ``max_parallel`` at a time; return their futures once all ended."""
    futures: dict[str, PrefectFuture] = {}
    in_flight: list[PrefectFuture] = []
    try:
        for variant in variants:
            if len(in_flight) >= max_parallel:
                in_flight.remove(next(as_completed(in_flight)))
            future = run_variant.submit(variant, root, targets, {**env, VARIANT_ENV: variant.name})
            futures[variant.name] = future
            in_flight.append(future)
        for future in futures.values():
            future.wait()
    except BaseException:  # terminated (SIGTERM, cancelled), Ctrl-C, or a bug: stop what runs, then unwind
        _interrupt_local_workers()
        deadline = time.monotonic() + pipeline.INTERRUPT_GRACE_S + 10
        for future in in_flight:
            future.wait(max(0.0, deadline - time.monotonic()))
        raise
    return futures


#: seconds between the sweep's progress lines (``FKP_SWEEP_PROGRESS_SECONDS`` overrides it)
PROGRESS_SECONDS = 30.0
PROGRESS_ENV = "FKP_SWEEP_PROGRESS_SECONDS"


def variant_progress(sweep_id: str) -> list[str]:
    """One line per variant that has started: its epoch, latest val RMSE and state, read from MLflow.

    The variants' own output goes to their task logs (and, on a Dask cluster, to the workers' logs),
    not to the terminal that started the sweep; their MLflow runs say where each one is, wherever it
    runs, so the flow reads them from there.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    lines = []
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{tracking.TAG_SWEEP}` = '{sweep_id}'",
    )
    for run in sorted(runs, key=lambda r: r.data.tags.get("fkp.variant", "")):
        history = sorted(client.get_metric_history(run.info.run_id, "val_rmse"), key=lambda m: m.step)
        epochs = run.data.params.get("train.epochs", "?")
        # the evaluate stage logs the evaluated val_rmse (and mean_face_rmse, which training never
        # does) one step after the last epoch: that step is not an epoch
        if history and "mean_face_rmse" in run.data.metrics:
            trained = history[-2].step if len(history) > 1 else 0
            where = f"{trained} epochs, evaluated val RMSE {history[-1].value:.4f} px"
        elif history:
            where = f"epoch {history[-1].step}/{epochs}, val RMSE {min(m.value for m in history):.4f} px"
        else:
            where = "starting"
        lines.append(
            f"{run.data.tags.get('fkp.variant', run.info.run_name)}: {where} ({run.info.status.lower()})"
        )
    return lines


def _report_progress(sweep_id: str, done: threading.Event, say: Callable[[str], None]) -> None:
    while not done.wait(float(os.environ.get(PROGRESS_ENV) or PROGRESS_SECONDS)):
        with contextlib.suppress(Exception):  # progress is a courtesy: a store hiccup must not stop a sweep
            lines = variant_progress(sweep_id)
            if lines:
                say("progress: " + "; ".join(lines))


def _interrupt_local_workers() -> None:
    """SIGINT to the local worker processes: each stops its variant's ``dvc exp run`` and ends its task.

    Unwinding, the process pool would wait for its running tasks, so a terminated sweep kept training
    until every running variant ended. Workers take SIGINT as
    :func:`fkp.orchestration.pipeline.stop_commands_on` says: a running command is stopped as Ctrl-C
    would stop it
    and its task fails without a retry; an idle worker ignores it. Workers of remote runners (Dask,
    Ray) are not this process's to signal.
    """
    if not isinstance(get_run_context().task_runner, ProcessPoolTaskRunner):
        return
    for worker in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGINT)


def _variant_env(sweep_id: str, experiment: str) -> dict[str, str]:
    """What every variant's stages need to land in this workspace's MLflow store and be tagged."""
    tracking.configure(experiment=experiment)  # created here, so its artifacts stay in the workspace
    return {
        "MLFLOW_TRACKING_URI": tracking.default_tracking_uri(),
        tracking.ARTIFACTS_ENV: tracking.default_artifact_root(),
        tracking.ENTRYPOINT_ENV: "prefect",
        tracking.FLOW_RUN_ENV: sweep_id,
        SWEEP_ENV: sweep_id,
    }


@flow(
    name="sweep",
    flow_run_name=run_namer("sweep"),
    log_prints=True,
    task_runner=build_task_runner(os.environ.get(RUNNER_ENV), os.environ.get(ADDRESS_ENV)),
)
def sweep(
    grid: dict[str, list[Any]] | list[dict[str, Any]] | None = None,
    params_path: str = "params.yaml",
    max_parallel: int = DEFAULT_MAX_PARALLEL,
) -> dict[str, Any]:
    """Run every variant of ``grid`` (default :data:`DEFAULT_GRID`) as a DVC experiment; register them.

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
    root = str(Path.cwd().resolve())
    targets = pipeline.metric_stages(root)
    logger.info(
        "sweep %s: %d variants (%s) as DVC experiments up to %s",
        sweep_id,
        len(variants),
        ", ".join(v.name for v in variants),
        ", ".join(targets),
    )
    env = _variant_env(sweep_id, base_params.mlflow.experiment)
    done = threading.Event()
    reporter = threading.Thread(
        target=_report_progress, args=(sweep_id, done, logger.info), name="fkp-sweep-progress", daemon=True
    )
    reporter.start()
    try:
        with _workers_report_here():
            futures = _run_variants(variants, root, targets, env, max_parallel)
    finally:
        done.set()
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name, future in futures.items():
        if future.state.is_completed():
            results[name] = future.result()
        else:
            failed[name] = f"{future.state.name}: {future.state.message}"
    for name in sorted(results, key=lambda n: results[n]["val_rmse"]):
        record = register_variant(name, results[name], base_params)
        results[name].update(version=record["version"], promoted=record["promoted"])
    summary = {
        name: {k: entry[k] for k in ("exp", "run_id", "val_rmse", "version", "promoted", "worker")}
        for name, entry in results.items()
    }
    for name, entry in summary.items():
        logger.info(
            "%s: val RMSE %.4f px, DVC experiment %s, %s%s",
            name,
            entry["val_rmse"],
            entry["exp"],
            f"v{entry['version']}" if entry["version"] else "not registered",
            " (champion)" if entry["promoted"] else "",
        )
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(variants)} variants failed: {json.dumps(failed, indent=1)}"
        )
    best = min(summary, key=lambda name: summary[name]["val_rmse"])
    logger.info("best: %s; apply it with `dvc exp apply %s`", best, summary[best]["exp"])
    return {"sweep_id": sweep_id, "variants": summary, "best": best}


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
    crash_detection.enable_heartbeats()
    with api_url():
        crash_detection.ensure_automation()
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
