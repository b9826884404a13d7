"""Prefect flow: retrain the keypoint model by running the DVC pipeline, on demand or on a schedule.

The flow has no steps of its own: ``dvc.yaml`` is the one definition of the DAG. The flow asks DVC for
the stages in order (:mod:`fkp.orchestration.pipeline`) and runs each as one Prefect task named after it,
through DVC
(``dvc repro --single-item <stage>``), so ``dvc.lock`` records the run and ``dvc status`` / ``dvc repro``
agree with it afterwards. Run it from the repository root::

    python flows/retrain.py run                     # once; "Skipped" when DVC says nothing changed
    python flows/retrain.py run --pull --push --git-branch retrain   # the full versioned loop
    python flows/retrain.py run --wait              # wait for a run holding the pipeline (default: refuse)

Without a configured server each ``run`` starts a temporary local one (about 15 s) that keeps no
history and stops with the command, even when it is killed. Schedules need a real server: start
one, point the client at it (once per machine), then serve the deployment, which retrains every
Monday at 03:00 by default::

    prefect server start                                           # UI at http://127.0.0.1:4200
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_SERVER_ANALYTICS_ENABLED=false
    python flows/retrain.py serve --cron "0 3 * * 1" --pull --push --git-branch retrain
    prefect deployment run 'retrain/fkp-retrain'                   # an extra run now, from anywhere

Behaviour worth knowing:

* What is stale is DVC's answer. When ``dvc status`` reports nothing, the run ends in the state
  *Skipped* (a Completed state, named so in the UI) without running a stage; a stage DVC finds up to
  date inside a run is a *Skipped* task. ``--force`` reruns every stage (``dvc repro --force``).
* Bad raw data fails the ``validate`` stage: the run ends *Failed* with every problem (file, row,
  column) in its message and log, nothing after it runs, and the prepared data, the model and the
  champion stay as they were. Stages with ``meta.retries`` in ``dvc.yaml`` (those that talk to the
  MLflow store) are retried.
* One run at a time, whatever started it: the flow holds DVC's own repository lock from its first
  step to its last (:mod:`fkp.orchestration.repo_lock`) and runs every stage through it, so any
  ``dvc`` command started meanwhile is refused by DVC before it touches a file. ``run`` refuses too,
  naming the holder (``--wait``: waits for it); a scheduled run waits. The served deployment also has
  a Prefect concurrency limit of 1.
* A registry without a ``champion`` (a new tracking server, a deleted model) is stale too: the
  stages that write to MLflow (``meta.mlflow: true`` in ``dvc.yaml``) run again even when DVC's own
  state is up to date, so the first scheduled run on a new stack trains and registers.
* ``--pull``: before checking what changed, ``git pull --ff-only`` (when the branch tracks a remote),
  ``dvc update`` of data brought in with ``dvc import`` / ``dvc import-url``, then ``dvc pull``: new
  labelled data in the remote is what makes the next scheduled run retrain.
* ``--push`` / ``--git-branch NAME``: when a stage ran, ``dvc push`` the outputs and commit
  ``dvc.lock``, ``params.yaml`` and ``metrics.json`` to branch NAME
  (:mod:`fkp.orchestration.versioning`); the MLflow
  run gets the commit as tag ``fkp.retrain_commit``. ``git checkout <commit> && dvc pull`` gets that
  model and its data back.
* MLflow runs record ``fkp.entrypoint=prefect``, the flow run id, the git commit and the data's DVC
  hash. Each run leaves a Markdown artifact (stages, metrics, champion decision) in the Prefect UI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from fkp import tracking
from fkp.orchestration import crash_detection, pipeline, repo_lock, versioning
from fkp.orchestration.prefect_local import api_url
from fkp.orchestration.run_names import run_namer
from fkp.stages.handover import METRICS_JSON, REGISTRY_JSON, RUN_JSON
from fkp.tracking import links

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: a week of new labels, before anyone needs the model
DEPLOYMENT_NAME = "fkp-retrain"
DESCRIPTION = (
    "Retrain the facial keypoint model: runs the dvc.yaml pipeline stage by stage through DVC "
    "(validate, prepare, train, evaluate, register, predict), skipping what DVC finds up to date."
)
TAGS = ["fkp", "retrain", "dvc", "mlflow"]


SKIPPED = "Skipped"
SKIP_MESSAGE = "nothing changed: DVC reports every stage up to date, so nothing was retrained"
NO_CHAMPION_MESSAGE = (
    "the registry has no champion (a new tracking server?): the stages that write to MLflow run again"
)
TAG_RETRAIN_COMMIT = "fkp.retrain_commit"


def _no_champion() -> bool:
    """Whether the tracking server's registry lacks the ``champion`` alias (DVC cannot know that)."""
    from fkp.params import load_params
    from fkp.tracking.registry import champion_info

    tracking.configure()
    return champion_info(load_params().mlflow.registered_model) is None


def _stage_env() -> dict[str, str]:
    """What the stage commands inherit: the entrypoint and flow run their MLflow runs record."""
    return {tracking.ENTRYPOINT_ENV: "prefect", tracking.FLOW_RUN_ENV: str(flow_run.id)}


# --------------------------------------------------------------------------- tasks


@task(name="stage", cache_policy=NO_CACHE)
def run_stage(name: str, force: bool = False) -> State | str:
    """Run one ``dvc.yaml`` stage through DVC when DVC finds it stale; a *Skipped* state otherwise."""
    logger = get_run_logger()
    if not force and not pipeline.is_stale(name):
        logger.info("stage '%s' is up to date (DVC): skipped", name)
        return Completed(name=SKIPPED, message=f"stage '{name}' is up to date")
    repo = repo_lock.held_repo()
    try:
        lines = pipeline.reproduce(repo, name, force=force, on_line=logger.info, env=_stage_env())
    except pipeline.StageFailed as exc:
        # A returned Failed state is retried like a raised exception (the stage's retries still apply),
        # but Prefect logs no traceback of its own engine around the stage's message, which says it all.
        return Failed(message=str(exc))
    return f"stage '{name}' ran ({len(lines)} lines of output)"


@task(name="pull", task_run_name="pull", cache_policy=NO_CACHE)
def pull_data() -> None:
    """Bring the newest code pointers and data: git pull, dvc update of imports, dvc pull."""
    logger = get_run_logger()
    if versioning.has_upstream():
        pipeline.run(["git", "pull", "--ff-only"], on_line=logger.info)
    # through the Repo whose lock this run holds: a `dvc` command would be refused by our own lock
    repo = repo_lock.held_repo()
    imports = pipeline.import_targets()
    if imports:
        repo.update(imports)
        logger.info("updated %s", ", ".join(imports))
    # Data is pulled as it is: a local edit of a data file stops the run rather than being lost. Stage
    # outputs are derived: those a failed run left behind (a failed validate's reports) are put back to
    # the versions dvc.lock records; left alone, they made every later pull, and so every later run, fail.
    data = pipeline.data_files()
    if data:
        logger.info("dvc pull: %s", repo.pull(data, allow_missing=True))
    stages = [stage.name for stage in pipeline.stages()]
    logger.info("dvc pull --force (stage outputs): %s", repo.pull(stages, allow_missing=True, force=True))


@task(name="push", task_run_name="push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def push_outputs() -> None:
    pushed = repo_lock.held_repo().push()
    get_run_logger().info("dvc push: %s file(s) sent to the remote", pushed)


@task(name="commit", task_run_name="commit", cache_policy=NO_CACHE)
def commit_state(branch: str, ran: list[str], run_id: str | None) -> str:
    """Commit dvc.lock, params and metrics to ``branch``; tag the MLflow run with the commit."""
    imports = pipeline.import_targets()
    message = f"retrain {flow_run.name}: {', '.join(ran)}"
    commit = versioning.commit_to_branch(branch, message, extra=imports)
    get_run_logger().info("committed dvc.lock, params.yaml and metrics.json to %s as %s", branch, commit[:12])
    if run_id:
        from mlflow import MlflowClient

        tracking.configure()
        client = MlflowClient()
        client.set_tag(run_id, TAG_RETRAIN_COMMIT, commit)
        client.set_tag(run_id, "fkp.retrain_branch", branch)
    return commit


# --------------------------------------------------------------------------- summary


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _run_url(run_id: str) -> str | None:
    """The run's page in the tracking server's UI (training view); ``None`` for a local store."""
    uri = tracking.default_tracking_uri()
    if links.ui_base(uri) is None:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    except (MlflowException, OSError):  # the summary goes out without a link rather than not at all
        return None
    return links.run_url(uri, experiment_id, run_id)


def _summary(ran: list[str], skipped: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"flow_run_id": str(flow_run.id), "ran": ran, "skipped": skipped}
    if "train" in ran:
        summary["run_id"] = _read_json(RUN_JSON).get("run_id")
        if summary["run_id"] and (url := _run_url(summary["run_id"])):
            summary["run_url"] = url
    metrics = _read_json(METRICS_JSON)
    if "val_rmse" in metrics:
        summary["val_rmse"] = round(float(metrics["val_rmse"]), 4)
    if "register" in ran:
        record = _read_json(REGISTRY_JSON)
        summary.update(
            promoted=record.get("promoted"), version=record.get("version"), decision=record.get("reason")
        )
    return summary


def _markdown(summary: dict[str, Any], status: str) -> str:
    lines = [f"# Retrain: {status}", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| {name} | ran |" for name in summary.get("ran", [])]
    lines += [f"| {name} | up to date (skipped) |" for name in summary.get("skipped", [])]
    if "val_rmse" in summary:
        lines += ["", f"**Validation RMSE:** {summary['val_rmse']:.4f} px"]
    if summary.get("decision"):
        lines += ["", f"**Registry:** {summary['decision']}"]
    if summary.get("run_id"):
        lines += ["", f"**MLflow run:** `{summary['run_id']}` {summary.get('run_url', '')}".rstrip()]
    if summary.get("commit"):
        lines += ["", f"**Committed:** `{summary['commit']}` on `{summary['branch']}`"]
    return "\n".join(lines) + "\n"


def _publish(summary: dict[str, Any], status: str) -> None:
    create_markdown_artifact(
        key="retrain-summary", markdown=_markdown(summary, status), description=f"retrain {status}"
    )


# --------------------------------------------------------------------------- flow


@flow(name="retrain", flow_run_name=run_namer("retrain"), description=DESCRIPTION, log_prints=True)
def retrain(
    force: bool = False,
    pull: bool = False,
    push: bool = False,
    git_branch: str | None = None,
    wait: bool = True,
) -> Any:
    """Run the DVC pipeline's stale stages (every stage with ``force``); say what ran.

    ``wait``: when another run holds the pipeline, wait for it (``False``: fail at once, naming it).
    Returns a summary dict, a *Skipped* state when nothing changed, or a *Failed* one naming the stage.
    """
    logger = get_run_logger()
    owner = f"retrain flow run {flow_run.name} ({flow_run.id})"
    with repo_lock.hold(owner=owner, wait=wait, on_wait=logger.info):
        if pull:
            pull_data()
        stages = pipeline.stages()
        without_champion = not force and _no_champion()
        if without_champion:
            logger.info(NO_CHAMPION_MESSAGE)
        elif not force and not pipeline.stale():
            logger.info(SKIP_MESSAGE)
            _publish({"skipped": [s.name for s in stages]}, SKIPPED.lower())
            return Completed(name=SKIPPED, message=SKIP_MESSAGE)
        ran: list[str] = []
        skipped: list[str] = []
        for stage in stages:
            task_ = run_stage.with_options(
                name=stage.name,
                task_run_name=stage.name,
                retries=stage.retries,
                retry_delay_seconds=stage.retry_delay_seconds,
            )
            rerun = force or (without_champion and stage.mlflow)
            state = task_(stage.name, force=rerun, return_state=True)
            if state.is_failed():  # the run ends Failed with the stage's message (no second traceback)
                return Failed(message=state.message or f"stage '{stage.name}' failed")
            (skipped if state.name == SKIPPED else ran).append(stage.name)
        summary = _summary(ran, skipped)
        if ran and push:
            push_outputs()
        if ran and git_branch:
            summary["commit"] = commit_state(git_branch, ran, summary.get("run_id"))
            summary["branch"] = git_branch
    logger.info(
        "retrain done: ran %s%s",
        ", ".join(ran) or "nothing",
        f"; val RMSE {summary['val_rmse']:.4f} px" if "val_rmse" in summary else "",
    )
    _publish(summary, "trained" if "train" in ran else "updated")
    return summary


# --------------------------------------------------------------------------- command line


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pull", action="store_true", help="git pull, dvc update and dvc pull first")
    parser.add_argument("--push", action="store_true", help="dvc push the outputs when a stage ran")
    parser.add_argument("--git-branch", help="commit dvc.lock, params and metrics to this branch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Retrain the keypoint model with Prefect (run once or serve)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="retrain once")
    run.add_argument("--force", action="store_true", help="rerun every stage even if nothing changed")
    run.add_argument("--wait", action="store_true", help="wait for a run holding the pipeline to end")
    serve = sub.add_parser("serve", help="serve a deployment that retrains on a cron schedule")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule (default: %(default)r)")
    when.add_argument("--interval", type=float, help="seconds between runs, instead of --cron")
    serve.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name (default: %(default)s)")
    for p in (run, serve):
        _options(p)
    args = parser.parse_args(argv)
    parameters = {"pull": args.pull, "push": args.push, "git_branch": args.git_branch}
    crash_detection.enable_heartbeats()  # a killed run is then Crashed by the server's automation
    if args.command == "serve":
        crash_detection.ensure_automation()
        schedule = {"interval": args.interval} if args.interval else {"cron": args.cron}
        retrain.serve(
            name=args.name,
            **schedule,
            parameters=parameters,
            global_limit=1,
            description=DESCRIPTION,
            tags=TAGS,
        )
        return 0
    if not args.wait and (message := repo_lock.busy()):  # one line, before a server or a run is started
        print(f"retrain: {message}", file=sys.stderr)
        return 75  # EX_TEMPFAIL, as fkp's steps: try again when the other run has finished
    with api_url():
        crash_detection.ensure_automation()
        state = retrain(**parameters, force=args.force, wait=args.wait, return_state=True)
    if not state.is_completed():
        print(f"retrain ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    if state.name == SKIPPED:
        print(f"retrain skipped: {state.message}")
        return 0
    print(json.dumps(state.result(), indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(main())
