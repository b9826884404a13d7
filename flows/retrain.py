"""Prefect flow: retrain the keypoint model from raw data to the registry, on demand or on a schedule.

The tasks are the pipeline steps the CLI and the DVC stages run (same functions, same paths):
sample (only when ``data.source`` is ``sample`` and its folder is missing) -> validate -> prepare ->
impute -> train -> evaluate -> register. Run everything from the repository root::

    python flows/retrain.py run               # once; skipped when nothing changed since the last retrain
    python flows/retrain.py run --force       # once, even if nothing changed
    python flows/retrain.py run --no-wait     # fail at once if another retrain is running

Without a configured server each ``run`` starts a temporary local one (about 15 s) that keeps no
history. Schedules need a real server: start one, point the client at it (once per machine), then
serve the deployment, which retrains every Monday at 03:00 by default::

    prefect server start                                           # UI at http://127.0.0.1:4200
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/retrain.py serve --cron "0 3 * * 1"
    prefect deployment run 'retrain/fkp-retrain'                   # an extra run now, from anywhere

Behaviour worth knowing:

* Bad raw data ends the run Failed at ``validate`` with every problem (file, row, column) in the log;
  nothing after it runs, so the prepared data, the model and the champion stay as they were.
* No-op detection: the run's fingerprint (raw data content, params, code; see :mod:`fkp.fingerprint`)
  is compared with the one the last successful retrain stored on its MLflow run. When they match,
  training is skipped and the log says so; ``--force`` retrains anyway.
* One retrain at a time: a run holds ``reports/.retrain.lock`` from its first step to its last. A second
  run waits for it (the log says who holds it), then rechecks the fingerprint, so a retrain queued behind
  an identical one skips. ``run --no-wait`` fails at once instead. The served deployment also has a
  Prefect concurrency limit of 1. Registration additionally holds ``reports/.registry.lock``, which the
  sweep flow shares, so two runs never move the champion alias at the same time.
* The MLflow run records ``fkp.entrypoint=prefect`` and the flow run id (``fkp.flow_run_id``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from fkp import fingerprint as fp
from fkp import tracking
from fkp.envvars import env_var
from fkp.lock import REGISTRY_LOCK, RETRAIN_LOCK, file_lock
from fkp.params import Params, load_params

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: a week of new labels, before anyone needs the model
DEPLOYMENT_NAME = "fkp-retrain"

# the same paths as the DVC stages (dvc.yaml) and the CLI defaults
VALIDATION_DIR = Path("reports/validation")
PREPARED_DIR = Path("data/prepared")
TARGETS = PREPARED_DIR / "targets.npz"
MODEL = Path("models/model.keras")
HISTORY = Path("reports/train/history.csv")
RUN_FILE = Path("reports/train/run.json")
METRICS = Path("metrics.json")
PLOTS_DIR = Path("reports/eval")
REGISTRY_JSON = Path("reports/registry.json")

SKIP_MESSAGE = "no new data and no changed params: skipping training"


class RawDataInvalid(Exception):
    """The raw data failed validation; the message is the full validation summary."""


# --------------------------------------------------------------------------- tasks


@task(name="sample", cache_policy=NO_CACHE, log_prints=True)
def ensure_raw_data(params: Params, raw_dir: Path) -> bool:
    """Generate the synthetic sample if it is the configured source and missing; True if generated."""
    if raw_dir.is_dir() and any(raw_dir.glob("*.csv")):
        return False
    if params.data.source != "sample":
        raise FileNotFoundError(
            f"{raw_dir}: no raw data; bring the Kaggle files in with `fkp data import <zip or folder>`"
        )
    from fkp.sample import generate_sample, write_sample

    s = params.sample
    get_run_logger().info(
        "%s is missing: generating the synthetic sample (%d + %d faces)", raw_dir, s.n_train, s.n_test
    )
    write_sample(raw_dir, generate_sample(s.n_train, s.n_test, s.seed))
    return True


@task(name="validate", cache_policy=NO_CACHE)
def validate(raw_dir: Path) -> dict[str, Any]:
    """Great Expectations on the raw files; any error fails the task with the whole summary."""
    from fkp.validate import validate_raw_dir

    logger = get_run_logger()
    report = validate_raw_dir(raw_dir, VALIDATION_DIR)
    summary = report.summary()
    if not report.success:
        logger.error("%s", summary)
        raise RawDataInvalid(summary)
    logger.info("%s", summary)
    return {"errors": len(report.errors), "warnings": len(report.warnings)}


@task(name="prepare", cache_policy=NO_CACHE, log_prints=True)
def prepare(raw_dir: Path, params: Params) -> None:
    from fkp.prepare import prepare as prepare_cache

    prepare_cache(raw_dir, PREPARED_DIR, params.split)


@task(name="impute", cache_policy=NO_CACHE, log_prints=True)
def impute(params: Params) -> None:
    from fkp.impute import run_impute

    run_impute(PREPARED_DIR, TARGETS, params.impute.strategy)


@task(name="train", cache_policy=NO_CACHE, log_prints=True, retries=1, retry_delay_seconds=10)
def train(params: Params, raw_dir: Path) -> Any:
    from fkp.train import run_train

    outcome = run_train(
        params,
        prepared_dir=PREPARED_DIR,
        targets_path=TARGETS,
        model_out=MODEL,
        history_out=HISTORY,
        run_file=RUN_FILE,
        raw_dir=raw_dir,
    )
    get_run_logger().info(
        "trained MLflow run %s: best val RMSE %.3f px at epoch %d",
        outcome.run_id,
        outcome.best_val_rmse,
        outcome.best_epoch,
    )
    return outcome


@task(name="evaluate", cache_policy=NO_CACHE, log_prints=True, retries=2, retry_delay_seconds=5)
def evaluate(params: Params) -> dict[str, Any]:
    from fkp.evaluate import run_evaluate

    metrics = run_evaluate(
        params,
        model_path=MODEL,
        prepared_dir=PREPARED_DIR,
        run_file=RUN_FILE,
        history_path=HISTORY,
        metrics_out=METRICS,
        plots_dir=PLOTS_DIR,
    )
    get_run_logger().info(
        "validation RMSE %.3f px (mean face %.3f px)", metrics["val_rmse"], metrics["mean_face_rmse"]
    )
    return metrics


@task(name="register", cache_policy=NO_CACHE, log_prints=True, retries=2, retry_delay_seconds=5)
def register(params: Params) -> dict[str, Any]:
    from fkp.promote import run_register

    with file_lock(REGISTRY_LOCK, owner="retrain register", on_wait=get_run_logger().info):
        record = run_register(
            params, run_file=RUN_FILE, metrics_path=METRICS, prepared_dir=PREPARED_DIR, out=REGISTRY_JSON
        )
    get_run_logger().info(
        "registered %s v%s: %s", record["registered_model"], record["version"], record["reason"]
    )
    return record


# --------------------------------------------------------------------------- flow


def _why_retrain(
    current: fp.Fingerprint, previous: tuple[str, fp.Fingerprint] | None, force: bool
) -> str | None:
    """Why this run trains, or ``None`` when it should skip."""
    if previous is None:
        return "no earlier retrain recorded"
    changed = current.changes_since(previous[1])
    if changed:
        return f"{' and '.join(changed)} changed since MLflow run {previous[0]}"
    return "forced (nothing changed)" if force else None


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml",
    raw_dir: str | None = None,
    force: bool = False,
    lock_timeout: float | None = None,
) -> dict[str, Any]:
    """Retrain unless nothing changed; return what happened (skipped or trained, run, RMSE, decision).

    ``lock_timeout``: seconds to wait for another retrain to finish (``None``: as long as it takes,
    ``0``: fail at once).
    """
    logger = get_run_logger()
    params = load_params(params_path)
    raw = Path(raw_dir) if raw_dir else Path("data/raw") / params.data.source
    summary: dict[str, Any] = {"flow_run_id": str(flow_run.id), "raw_dir": raw.as_posix()}
    with (
        env_var(tracking.ENTRYPOINT_ENV, "prefect"),
        file_lock(
            RETRAIN_LOCK, timeout=lock_timeout, owner=f"retrain flow run {flow_run.id}", on_wait=logger.info
        ),
    ):
        ensure_raw_data(params, raw)
        current = fp.compute(raw, params)
        summary["fingerprint"] = current.digest
        previous = fp.last_recorded(tracking.configure(experiment=params.mlflow.experiment))
        why = _why_retrain(current, previous, force)
        if why is None:
            logger.info(
                "%s (same fingerprint %s as MLflow run %s)", SKIP_MESSAGE, current.digest, previous[0]
            )
            return {**summary, "status": "skipped", "reason": SKIP_MESSAGE, "run_id": previous[0]}
        logger.info("retraining: %s", why)

        validate(raw)
        prepare(raw, params)
        impute(params)
        outcome = train(params, raw)
        metrics = evaluate(params)
        decision = register(params)
        fp.record(outcome.run_id, current)
    logger.info(
        "retrain done: run %s, val RMSE %.3f px, %s",
        outcome.run_id,
        metrics["val_rmse"],
        "promoted to champion" if decision["promoted"] else "champion kept",
    )
    return {
        **summary,
        "status": "trained",
        "reason": why,
        "run_id": outcome.run_id,
        "val_rmse": metrics["val_rmse"],
        "promoted": decision["promoted"],
        "version": decision["version"],
        "decision": decision["reason"],
    }


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Retrain the keypoint model with Prefect (run once or serve)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="retrain once")
    run.add_argument("--force", action="store_true", help="retrain even if nothing changed")
    run.add_argument("--no-wait", action="store_true", help="fail at once if another retrain is running")
    serve = sub.add_parser("serve", help="serve a deployment that retrains on a cron schedule")
    serve.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule (default: %(default)r)")
    serve.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name (default: %(default)s)")
    for p in (run, serve):
        p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        p.add_argument("--raw-dir", help="raw data folder (default: data/raw/<data.source>)")
    args = parser.parse_args(argv)
    parameters = {"params_path": args.params, "raw_dir": args.raw_dir}
    if args.command == "serve":
        retrain.serve(name=args.name, cron=args.cron, parameters=parameters, global_limit=1)
        return 0
    state = retrain(
        **parameters, force=args.force, lock_timeout=0 if args.no_wait else None, return_state=True
    )
    if not state.is_completed():
        print(f"retrain ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
