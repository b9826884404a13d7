"""Stage: register the trained model and move the ``champion`` alias only if it is better.

Only a model that beats the mean face of ``metrics.json`` (or is below ``mlflow.candidate_max_rmse``)
becomes a registry version at all.

The candidate's validation RMSE comes from ``metrics.json`` (evaluate stage). Registration holds
the registry lock, so two runs never compare against the same champion at once, and is idempotent
(a run already registered keeps its version). A champion
scored on another split is re-scored on this run's split before the comparison, so the
alias only ever moves on a like-for-like improvement.
"""

from __future__ import annotations

import json
from pathlib import Path

from fkp import atomic
from fkp.params import Params
from fkp.stages.handover import METRICS_JSON, REGISTRY_JSON, RUN_JSON
from fkp.tracking.registry_lock import REGISTRY_LOCK, file_lock


def run_register(
    params: Params,
    *,
    run_file: str | Path = RUN_JSON,
    metrics_path: str | Path = METRICS_JSON,
    prepared_dir: str | Path = "data/prepared",
    out: str | Path = REGISTRY_JSON,
) -> dict:
    """Register the run's model as a version of ``params.mlflow.registered_model``; write the decision."""
    from fkp import tracking
    from fkp.stages.evaluate import score_model_uri
    from fkp.tracking.registry import promote_if_better

    run = tracking.read_handoff(run_file)
    metrics = json.loads(Path(metrics_path).read_text())
    tracking.configure(experiment=params.mlflow.experiment)
    with file_lock(REGISTRY_LOCK, owner=f"register run {run['run_id']}", on_wait=print):
        decision = promote_if_better(
            run["model_uri"],
            run["run_id"],
            float(metrics["val_rmse"]),
            run["split_id"],
            name=params.mlflow.registered_model,
            score_champion=lambda uri: score_model_uri(uri, prepared_dir, tta_flip=params.train.tta_flip),
            mean_face_rmse=metrics.get("mean_face_rmse"),
            max_rmse=params.mlflow.candidate_max_rmse,
        )
    record = {"registered_model": params.mlflow.registered_model, **decision.to_dict()}
    atomic.write_text(out, json.dumps(record, indent=2) + "\n")
    # the decision is printed once, by fkp.tracking.registry's log line (the CLI shows fkp's INFO messages)
    return record
