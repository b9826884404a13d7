"""MLflow tracking for fkp: where runs live, and what every run records about its provenance.

The package is fkp's MLflow family: this module (the store, provenance tags, a run handed from
stage to stage), :mod:`~fkp.tracking.keras_callback` (per-epoch values while a model trains),
:mod:`~fkp.tracking.registry` (versions, and the ``champion`` alias moved only on a real
improvement) and :mod:`~fkp.stages.register` (the ``register`` stage over the registry).

The pipeline trains in one process and evaluates/registers in others, so a run is handed on by
id (:func:`write_run_id` / :func:`read_run_id`) and resumed with :func:`start_run`.

Defaults are relative to the current working directory, which is the repository root whenever
a stage runs (``dvc repro``, the CLI and the flows all run from where ``dvc.yaml`` lives):

* tracking store: ``sqlite:///<cwd>/mlflow.db`` (env ``MLFLOW_TRACKING_URI`` overrides it);
* artifact root: ``<cwd>/mlartifacts`` (env ``FKP_MLFLOW_ARTIFACTS`` overrides it; a tracking server
  (``http://``) chooses its own, e.g. proxied ``mlflow-artifacts:/``).

Explicit arguments to :func:`configure` win over both. The artifact root only applies when the
experiment is created: MLflow fixes an experiment's artifact location for its lifetime.

TensorFlow is not imported here: the tracking helpers are used by light-weight stages too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage

from fkp import atomic
from fkp.params import Params, flatten
from fkp.safety.stale_runs import close_dead_runs, owner_tags

DEFAULT_EXPERIMENT = "fkp"
ARTIFACTS_ENV = "FKP_MLFLOW_ARTIFACTS"
ENTRYPOINT_ENV = "FKP_ENTRYPOINT"
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"
#: DVC sets these for every stage command (``dvc repro``, ``dvc exp run``): see dvc/stage/run.py
DVC_STAGE_ENV = "DVC_STAGE"
DVC_EXP_ENV = "DVC_EXP_NAME"
#: the experiment's kind for MLflow's UI; 3.17 ignores it (the view is the browser's: fkp.tracking.ui_app)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DATA_DIR = "fkp.data_dir"
TAG_DATA_HASH = "fkp.data_hash"
TAG_DVC_MD5 = "fkp.dvc_md5"
TAG_FLOW_RUN = "fkp.flow_run_id"
TAG_SWEEP = "fkp.sweep"
TAG_VARIANT = "fkp.variant"
TAG_DVC_EXP = "fkp.dvc_exp"
#: set by the sweep flow for each variant's stage commands: the sweep (flow run id) and variant name
SWEEP_ENV = "FKP_SWEEP_ID"
VARIANT_ENV = "FKP_VARIANT"
TAG_ENTRYPOINT = "fkp.entrypoint"
TAG_RESUME_CONFLICTS = "fkp.resume_param_conflicts"
TAG_HOST = "fkp.host"
TAG_EXECUTOR = "fkp.executor"
# set by whatever runs the process, e.g. a Dask worker (fkp.orchestration.stack.dask_preload)
EXECUTOR_ENV = "FKP_EXECUTOR"

#: params a run does not log: bounds on untrusted input, not knobs of the model
UNLOGGED_PARAM_SECTIONS = ("limits.",)
#: params every run name starts with (so never repeated among its changes)
NAMED_PARAMS = ("data.source", "model.arch", "impute.strategy")
#: at most this many changed params spelled out in a run name
MAX_NAMED_CHANGES = 3
#: decimals of a logged metric, as in ``metrics.json`` (``loss 2.3237``, not ``2.3236687183380127``), so
#: a run and its DVC experiment show the same score; numbers below 1 keep this many significant digits
METRIC_DECIMALS = 4
METRIC_DIGITS = 5

_configured_experiment_id: str | None = None


# --------------------------------------------------------------------------- locations


def _as_uri(location: str | Path) -> str:
    """Paths become absolute ``file://`` URIs; anything that already is a URI passes through."""
    text = str(location)
    if "://" in text or text.startswith("file:"):
        return text
    return Path(text).expanduser().resolve().as_uri()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``mlflow.db`` in the working directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def default_artifact_root(tracking_uri: str | None = None) -> str | None:
    """``FKP_MLFLOW_ARTIFACTS`` if set, else ``mlartifacts`` in the working directory, as a file URI.

    ``None`` for a tracking server (``http(s)://``): the server picks the location (proxied
    ``mlflow-artifacts:/`` with ``--serve-artifacts``), since a client-side path means nothing to it.
    """
    if env := os.environ.get(ARTIFACTS_ENV):
        return _as_uri(env)
    if (tracking_uri or "").startswith(("http://", "https://")):
        return None
    return _as_uri(Path.cwd() / "mlartifacts")


def configure(
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    artifact_root: str | None = None,
) -> str:
    """Point MLflow at the store, make ``experiment`` active (creating it if needed); return its id.

    Safe to call repeatedly and from concurrent processes: a lost creation race just reads back
    the experiment the other process made; a deleted experiment of that name is restored.
    """
    global _configured_experiment_id
    if tracking_uri is None and artifact_root is None:
        follow_moved_project()
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = _as_uri(artifact_root) if artifact_root else default_artifact_root(uri)
        try:
            experiment_id = client.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except mlflow.exceptions.MlflowException:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
        if found.lifecycle_stage == LifecycleStage.DELETED:
            client.restore_experiment(experiment_id)
        if EXPERIMENT_KIND_TAG not in found.tags:  # made before fkp tagged its experiments
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    _configured_experiment_id = experiment_id
    return experiment_id


def follow_moved_project(root: str | Path | None = None) -> None:
    """Keep a copied or moved project's default store writing artifacts inside the project.

    Only the project's own defaults are touched (``mlflow.db`` and ``mlartifacts`` at ``root``,
    default the working directory, with neither environment override set); see
    :mod:`fkp.safety.relocate`.
    """
    from fkp.safety.relocate import relocate_store

    if os.environ.get("MLFLOW_TRACKING_URI") or os.environ.get(ARTIFACTS_ENV):
        return
    root = Path(root) if root is not None else Path.cwd()
    if (root / "mlflow.db").is_file():
        relocate_store(root / "mlflow.db", root)


# --------------------------------------------------------------------------- provenance


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` (tracked files modified) for ``cwd``; empty outside a repo."""
    where = Path(cwd) if cwd is not None else Path.cwd()
    commit = _git(["rev-parse", "HEAD"], where)
    if not commit:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    tags = {TAG_GIT_COMMIT: commit}
    if status is not None:
        tags[TAG_GIT_DIRTY] = "true" if status else "false"
    return tags


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_hash(raw_dir: str | Path) -> str | None:
    """Content hash of the raw data: md5 over ``"<relative path> <md5>"`` lines of every CSV, sorted.

    Independent of file timestamps and of where the folder lives, so the same data gives the same
    hash on every machine. ``None`` when the folder holds no CSV.
    """
    root = Path(raw_dir)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*.csv") if p.is_file())
    if not files:
        return None
    lines = "".join(f"{p.relative_to(root).as_posix()} {_file_md5(p)}\n" for p in files)
    return hashlib.md5(lines.encode(), usedforsecurity=False).hexdigest()


def dvc_md5(path: str | Path, lock_file: str | Path = "dvc.lock") -> str | None:
    """The md5 DVC recorded for ``path``: from ``<path>.dvc`` if it exists, else from ``dvc.lock``.

    ``path`` is compared as written in those files (relative to the repository root).
    """
    target = Path(path).as_posix().rstrip("/")
    dvc_file = Path(f"{target}.dvc")
    entries: list[Mapping[str, Any]] = []
    if dvc_file.is_file():
        entries = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        return next((str(e["md5"]) for e in entries if "md5" in e), None)
    lock = Path(lock_file)
    if not lock.is_file():
        return None
    for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
        entries.extend(stage.get("deps", []) or [])
        entries.extend(stage.get("outs", []) or [])
    for entry in entries:
        if str(entry.get("path", "")).rstrip("/") == target and "md5" in entry:
            return str(entry["md5"])
    return None


def flow_run_id() -> str | None:
    """The Prefect flow run this process belongs to, if any.

    Prefect is only asked when it is already imported: importing it just to find out costs seconds.
    """
    env = os.environ.get(FLOW_RUN_ENV)
    if env:
        return env
    if "prefect" not in sys.modules:
        return None
    try:
        from prefect.runtime import flow_run

        value = flow_run.id
    except Exception:
        return None
    return str(value) if value else None


def entrypoint() -> str:
    """What started this process: ``FKP_ENTRYPOINT`` if set (the flows set ``prefect``), else ``dvc``
    inside a DVC stage command, else ``cli``."""
    if chosen := os.environ.get(ENTRYPOINT_ENV):
        return chosen
    return "dvc" if os.environ.get(DVC_STAGE_ENV) else "cli"


def run_name(
    params: Params, entrypoint_name: str | None = None, changed: Mapping[str, Any] | None = None
) -> str:
    """What tells runs apart at a glance: data source, architecture, imputation, entrypoint, then what
    this run changes: the DVC experiment's name, the sweep variant, the params that differ from the
    committed ``params.yaml`` (``changed``, see :func:`changed_params`).

    e.g. ``sample·lean·mask·dvc``, ``sample·lean·mask·dvc·gaunt-leaf·train.epochs=3``, or
    ``sample·lean·mask·prefect·0.004`` for a sweep variant (whose name is the values it changes).
    """
    parts = [params.data.source, params.model.arch, params.impute.strategy, entrypoint_name or entrypoint()]
    if exp := os.environ.get(DVC_EXP_ENV):
        parts.append(exp)
    if variant := os.environ.get(VARIANT_ENV):
        parts.append(variant)  # the variant's name already is the values it changes
    elif changes := [f"{k}={v}" for k, v in (changed or {}).items() if k not in NAMED_PARAMS]:
        shown = changes[:MAX_NAMED_CHANGES]
        if len(changes) > MAX_NAMED_CHANGES:
            shown.append(f"+{len(changes) - MAX_NAMED_CHANGES} more")
        parts.append(",".join(shown))
    return "·".join(parts)


def changed_params(params: Params, cwd: str | Path | None = None) -> dict[str, Any]:
    """The run params (:func:`run_params`) that differ from ``params.yaml`` as committed at ``HEAD``.

    Empty when nothing differs, outside git, or when the committed file is not readable as params.
    """
    from fkp.params import from_dict

    text = _git(["show", "HEAD:params.yaml"], Path(cwd) if cwd is not None else Path.cwd())
    try:
        committed = run_params(from_dict(yaml.safe_load(text) or {})) if text else None
    except (ValueError, TypeError, yaml.YAMLError):
        return {}
    if committed is None:
        return {}
    return {k: v for k, v in run_params(params).items() if committed.get(k) != v}


def unique_run_name(name: str, experiment_id: str | None = None) -> str:
    """``name``, or ``name#2``, ``name#3``, ... when runs of the experiment already carry it."""
    experiment_id = experiment_id or _configured_experiment_id
    if experiment_id is None:
        return name
    pattern = name.replace("'", "\\'")
    taken = {
        run.info.run_name
        for run in MlflowClient().search_runs(
            [experiment_id], filter_string=f"attributes.run_name LIKE '{pattern}%'", max_results=1000
        )
    }
    if name not in taken:
        return name
    return next(f"{name}#{n}" for n in range(2, len(taken) + 3) if f"{name}#{n}" not in taken)


def new_run_name(params: Params) -> str:
    """The name of a new training run: :func:`run_name` with this run's changes, unique in its experiment."""
    return unique_run_name(run_name(params, changed=changed_params(params)))


def raw_data_digest(raw_dir: str | Path) -> str | None:
    """The DVC hash of the raw data folder (``.dir`` suffix dropped), else our own content hash."""
    recorded = dvc_md5(raw_dir)
    if recorded:
        return recorded.removesuffix(".dir")
    return data_hash(raw_dir)


def log_raw_dataset(raw_dir: str | Path, name: str, context: str = "training") -> None:
    """Record the raw data folder as the active run's dataset input (MLflow's Dataset column).

    A metadata-only dataset: the folder is the source, the DVC hash the digest, so two runs on
    the same data show the same digest and ``dvc checkout`` of that hash brings the files back.
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    source = LocalArtifactDatasetSource(Path(raw_dir).as_posix())
    mlflow.log_input(MetaDataset(source, name=name, digest=raw_data_digest(raw_dir)), context=context)


def provenance_tags(raw_dir: str | Path) -> dict[str, str]:
    """Git state, raw-data hashes, Prefect flow run, entrypoint and host (and executor) of the process."""
    tags = git_tags()
    tags[TAG_DATA_DIR] = Path(raw_dir).as_posix()
    if (content := data_hash(raw_dir)) is not None:
        tags[TAG_DATA_HASH] = content
    if (recorded := dvc_md5(raw_dir)) is not None:
        tags[TAG_DVC_MD5] = recorded
    if (flow := flow_run_id()) is not None:
        tags[TAG_FLOW_RUN] = flow
    tags[TAG_ENTRYPOINT] = entrypoint()
    for tag, env in ((TAG_SWEEP, SWEEP_ENV), (TAG_VARIANT, VARIANT_ENV), (TAG_DVC_EXP, DVC_EXP_ENV)):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags[TAG_HOST] = socket.gethostname()
    if executor := os.environ.get(EXECUTOR_ENV):
        tags[TAG_EXECUTOR] = executor
    return tags


# --------------------------------------------------------------------------- runs


def _log_params(run_id: str, values: Mapping[str, Any], resumed: bool) -> None:
    """Log params; on a resumed run keep the recorded values and note any that now differ.

    MLflow refuses to change a logged param, and the values the model was trained with are the
    ones worth keeping.
    """
    client = MlflowClient()
    existing = client.get_run(run_id).data.params if resumed else {}
    fresh = {k: v for k, v in values.items() if k not in existing}
    conflicts = {
        k: [existing[k], str(v)] for k, v in values.items() if k in existing and existing[k] != str(v)
    }
    if fresh:
        mlflow.log_params(fresh)
    if conflicts:
        mlflow.set_tag(TAG_RESUME_CONFLICTS, json.dumps(conflicts, sort_keys=True))


@contextlib.contextmanager
def start_run(
    run_name: str,
    params: Params,
    *,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    raw_dir: str | Path | None = None,
    description: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run (or resume ``run_id``) that records the params and where code and data came from.

    A new run gets every param (flattened, ``train.lr`` style) and the provenance tags of
    :func:`provenance_tags` for ``raw_dir`` (default ``data/raw/<params.data.source>``), that folder
    as its dataset input, and ``description`` (Markdown, the run page's Description). A resumed
    run keeps its training-time provenance; it only gains ``tags``, params it did not have yet, and
    the flow run id if it had none. If :func:`configure` was not called in this process, the
    defaults and ``params.mlflow.experiment`` are used. The run ends FAILED if the body raises.
    Runs of the experiment that killed processes left RUNNING are closed first, and the run records
    its process (:mod:`fkp.safety.stale_runs`) so a later start can tell whether it is still alive.
    """
    if _configured_experiment_id is None:
        configure(experiment=params.mlflow.experiment)
    data_dir = Path(raw_dir) if raw_dir is not None else Path("data/raw") / params.data.source
    close_dead_runs([_configured_experiment_id])  # runs that killed processes left RUNNING
    # a new run is born with its owner's tags: killed at any moment after this, a later start can tell
    # its process is gone and close it (set afterwards, a run killed in between stayed RUNNING for ever)
    with mlflow.start_run(
        run_id=run_id,
        run_name=None if run_id else run_name,
        description=description,
        tags=None if run_id else owner_tags(),
    ) as run:
        resumed = run_id is not None
        if resumed:
            extra = {}
            if TAG_FLOW_RUN not in run.data.tags and (flow := flow_run_id()) is not None:
                extra[TAG_FLOW_RUN] = flow
        else:
            extra = provenance_tags(data_dir)
            log_raw_dataset(data_dir, name=params.data.source)
        mlflow.set_tags({**extra, **owner_tags(), **{k: str(v) for k, v in (tags or {}).items()}})
        _log_params(run.info.run_id, run_params(params), resumed)
        yield run


def run_params(params: Params) -> dict[str, Any]:
    """The params a run records: every knob of ``params.yaml``, flattened, without input bounds."""
    return {k: v for k, v in flatten(params).items() if not k.startswith(UNLOGGED_PARAM_SECTIONS)}


def tidy(number: float) -> float:
    """``number`` as the run page and tables show it: :data:`METRIC_DECIMALS` decimals, like
    ``metrics.json`` (15.8586 stays 15.8586, not 15.859), or :data:`METRIC_DIGITS` significant digits
    below 1 (a learning rate of 0.0018234 stays 0.0018234)."""
    if abs(number) >= 1:
        return round(number, METRIC_DECIMALS)
    return float(f"{number:.{METRIC_DIGITS}g}")


def log_values(values: Mapping[str, Any]) -> None:
    """Record single figures of the active run (best epoch, training time) as tags.

    A metric logged once is drawn as a chart of one point on the run page; a tag is shown as a
    value, and the runs table can still show it as a column.
    """
    mlflow.set_tags({k: str(tidy(v) if isinstance(v, float) else v) for k, v in values.items()})


def _flat_numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_numbers(value, f"{name}."))
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[name] = tidy(number)
    return out


def log_metrics_dict(
    metrics: Mapping[str, Any], step: int | None = None, model_id: str | None = None
) -> dict[str, float]:
    """Log the finite numbers of a (possibly nested) metrics dict to the active run; return them.

    Nested keys are joined with ``.`` (``{"rmse": {"left_eye_center_x": 1.2}}`` gives
    ``rmse.left_eye_center_x``); strings, ``None`` and NaN are skipped since MLflow metrics are
    numeric series. With ``model_id`` they are also the metrics of that logged model (its page and
    the registry show them).
    """
    numbers = _flat_numbers(metrics)
    if numbers:
        mlflow.log_metrics(numbers, step=step, model_id=model_id)
    return numbers


def log_split(split_path: str | Path) -> None:
    """Attach the train/validation split file to the active run under ``split/``."""
    mlflow.log_artifact(str(split_path), artifact_path="split")


def log_pictures(paths: Iterable[str | Path]) -> None:
    """Attach plots, pictures and small tables at the active run's artifact root.

    The root is where MLflow's Compare view looks for artifacts the selected runs share.
    """
    for path in paths:
        mlflow.log_artifact(str(path))


# --------------------------------------------------------------------------- run hand-over


def write_run_id(path: str | Path, run_id: str, **details: str) -> None:
    """Record ``run_id`` (plus ``details`` such as the model URI; JSON, atomic) for later stages."""
    atomic.write_text(path, json.dumps({"run_id": run_id, **details}, indent=2) + "\n")


def read_handoff(path: str | Path) -> dict[str, Any]:
    """Read what :func:`write_run_id` wrote; a clear error names the file otherwise."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no MLflow run id recorded (run the train stage first)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    run_id = payload.get("run_id") if isinstance(payload, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"{path}: field 'run_id' is missing or not a non-empty string")
    return payload


def model_id_of(handoff: Mapping[str, Any]) -> str | None:
    """The logged model's id in a hand-over: its ``model_id``, or the id in a ``models:/m-...`` URI."""
    if handoff.get("model_id"):
        return str(handoff["model_id"])
    uri = str(handoff.get("model_uri") or "")
    tail = uri.removeprefix("models:/")
    return tail if tail != uri and tail.startswith("m-") and "/" not in tail else None


def read_run_id(path: str | Path) -> str:
    """The run id recorded by :func:`write_run_id`."""
    return read_handoff(path)["run_id"]
