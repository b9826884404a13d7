"""Model registry: register the models worth keeping, move the ``champion`` alias only on a real improvement.

A model is a candidate only when it beats the mean face (predicting the average training face
for everyone) on the same validation rows: a trial of three epochs that does not is no version
at all, so the registry's versions, and its "latest version", are all real models.

Versions carry the numbers the decision needs as tags (``val_rmse``, ``split_id``,
``source_run_id``). RMSEs are only comparable on the same validation split, so a champion scored
on another split is re-scored on the current one (when the caller provides a scorer) instead of
being compared on stale numbers. Aliases are used, never the deprecated stages.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fkp import quiet
from fkp.params import MlflowParams

CHAMPION_ALIAS = "champion"
DEFAULT_MODEL_NAME = MlflowParams.registered_model

TAG_VAL_RMSE = "val_rmse"
TAG_SPLIT_ID = "split_id"
TAG_SOURCE_RUN = "source_run_id"
TAG_PROMOTION = "fkp.promotion"
DECISION_ARTIFACT = "registry/decision.json"

# what the store answers for "no such registered model" and "no such alias"
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of one promotion attempt, as recorded on the candidate run."""

    promoted: bool
    version: str | None  # None: not a candidate, nothing registered
    candidate_rmse: float
    champion_rmse: float | None
    champion_version_before: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_uri(name: str = DEFAULT_MODEL_NAME) -> str:
    """The MLflow URI of ``name``'s champion (``models:/<name>@champion``), the default model to serve."""
    return f"models:/{name}@{CHAMPION_ALIAS}"


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _champion_version(client: MlflowClient, name: str):
    """The version holding the champion alias, or ``None`` (also when the model is not registered)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code in _NOT_FOUND:
            return None
        raise


def champion_info(name: str = DEFAULT_MODEL_NAME, *, client: MlflowClient | None = None) -> dict | None:
    """``{"version", "run_id", "val_rmse", "split_id"}`` of the current champion, or ``None``."""
    version = _champion_version(client or MlflowClient(), name)
    if version is None:
        return None
    return {
        "version": str(version.version),
        "run_id": version.run_id or version.tags.get(TAG_SOURCE_RUN),
        "val_rmse": _float_or_none(version.tags.get(TAG_VAL_RMSE)),
        "split_id": version.tags.get(TAG_SPLIT_ID),
    }


def _champion_rmse(
    name: str,
    champion: dict,
    split_id: str,
    score_champion: Callable[[str], float] | None,
) -> tuple[float | None, str]:
    """The champion's RMSE on ``split_id`` and how it was obtained (or why it could not be)."""
    if champion["split_id"] == split_id and champion["val_rmse"] is not None:
        return champion["val_rmse"], "recorded on the same split"
    if score_champion is None:
        return None, (
            f"champion v{champion['version']} was scored on split {champion['split_id']!r}, "
            f"not {split_id!r}, and no scorer was given to re-score it"
        )
    uri = f"models:/{name}@{CHAMPION_ALIAS}"
    try:
        value = float(score_champion(uri))
    except Exception as error:  # a broken champion must not crash the pipeline; the reason is recorded
        _log.exception("re-scoring %s failed", uri)
        return None, f"re-scoring champion v{champion['version']} failed: {type(error).__name__}: {error}"
    if not math.isfinite(value):
        return None, f"re-scoring champion v{champion['version']} gave a non-finite RMSE ({value})"
    return value, f"re-scored on split {split_id!r}"


def not_a_candidate(
    candidate_rmse: float, mean_face_rmse: float | None, max_rmse: float | None = None
) -> str | None:
    """Why a model is not worth a registry version (``None``: it is): it must be below ``max_rmse``
    (``mlflow.candidate_max_rmse``), or, without one, beat the mean face."""
    if not math.isfinite(candidate_rmse):
        return f"RMSE is not finite ({candidate_rmse})"
    if max_rmse is not None:
        if not candidate_rmse < max_rmse:
            return f"RMSE {candidate_rmse:.4f} px is not below mlflow.candidate_max_rmse ({max_rmse:.4f} px)"
    elif mean_face_rmse is not None and not candidate_rmse < mean_face_rmse:
        return f"RMSE {candidate_rmse:.4f} px does not beat the mean face ({mean_face_rmse:.4f} px)"
    return None


def decide(
    version: str, candidate_rmse: float, champion: dict | None, champion_rmse: float | None, how: str
) -> PromotionDecision:
    before = champion["version"] if champion else None

    def decision(promoted: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promoted, version, candidate_rmse, champion_rmse, before, reason)

    if not math.isfinite(candidate_rmse):
        return decision(False, f"candidate RMSE is not finite ({candidate_rmse}); not promoted")
    if champion is None:
        return decision(True, f"no champion yet; v{version} (RMSE {candidate_rmse:.4f}) becomes champion")
    if champion_rmse is None:
        return decision(False, f"cannot compare with champion: {how}; kept v{before}")
    if candidate_rmse < champion_rmse:
        return decision(
            True,
            f"v{version} RMSE {candidate_rmse:.4f} < champion v{before} RMSE {champion_rmse:.4f} ({how})",
        )
    return decision(
        False,
        f"v{version} RMSE {candidate_rmse:.4f} is not better than champion v{before} "
        f"RMSE {champion_rmse:.4f} ({how}); kept v{before}",
    )


def _record(client: MlflowClient, name: str, run_id: str, decision: PromotionDecision) -> None:
    if decision.version is not None:
        client.update_model_version(name, decision.version, description=decision.reason)
    outcome = "promoted" if decision.promoted else "kept" if decision.version else "not registered"
    client.set_tag(run_id, TAG_PROMOTION, outcome)
    if decision.champion_rmse is not None:
        client.log_metric(run_id, "registry.champion_rmse", decision.champion_rmse)
    client.log_text(run_id, json.dumps(decision.to_dict(), indent=2) + "\n", DECISION_ARTIFACT)


def registered_version(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version of ``name`` already registered from ``run_id`` (the lowest if several), or ``None``.

    Registering is idempotent: a run registered twice (a rerun stage, a retried task) keeps one version.
    """
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as error:
        if error.error_code in _NOT_FOUND:
            return None
        raise
    versions = sorted(int(v.version) for v in found)
    return str(versions[0]) if versions else None


def promote_if_better(
    model_uri: str,
    run_id: str,
    candidate_rmse: float,
    split_id: str,
    *,
    name: str = DEFAULT_MODEL_NAME,
    score_champion: Callable[[str], float] | None = None,
    mean_face_rmse: float | None = None,
    max_rmse: float | None = None,
) -> PromotionDecision:
    """Register ``model_uri`` as a version of ``name`` and make it champion if it is strictly better.

    A model that is not below ``max_rmse`` or, without one, does not beat ``mean_face_rmse`` (the
    mean-face baseline on the same rows) is not registered: the decision (version ``None``) says
    why, on the run and in the log. A run that is already registered keeps its version (no second
    version of the same run).

    The champion's RMSE comes from its ``val_rmse`` tag when it was scored on ``split_id``; otherwise
    ``score_champion("models:/<name>@champion")`` re-scores it on the current split. Without a
    comparable number the alias stays where it is, and the decision says why. The decision is
    written to the version description and to the candidate run (tag ``fkp.promotion``, metrics
    ``registry.*``, artifact ``registry/decision.json``). Uses the current MLflow tracking URI.
    """
    candidate_rmse = float(candidate_rmse)
    client = MlflowClient()
    existing = registered_version(client, name, run_id)
    if existing is None and (why := not_a_candidate(candidate_rmse, mean_face_rmse, max_rmse)):
        champion = champion_info(name, client=client)
        before = champion["version"] if champion else None
        decision = PromotionDecision(
            False, None, candidate_rmse, None, before, f"not registered: {why}; a candidate must beat it"
        )
        _record(client, name, run_id, decision)
        _log.info("registry %s: %s", name, decision.reason)
        return decision
    if existing is None:
        tags = {TAG_VAL_RMSE: repr(candidate_rmse), TAG_SPLIT_ID: split_id, TAG_SOURCE_RUN: run_id}
        with quiet.mlflow_notices():
            version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    else:
        version = existing

    champion = champion_info(name, client=client)
    if existing is not None and champion is not None and champion["version"] == version:
        decision = PromotionDecision(
            False,
            version,
            candidate_rmse,
            champion["val_rmse"],
            version,
            f"run {run_id} is already registered as v{version}, the champion; nothing to do",
        )
        _log.info("registry %s: %s", name, decision.reason)
        return decision
    champion_rmse, how = (None, "")
    if champion is not None:
        champion_rmse, how = _champion_rmse(name, champion, split_id, score_champion)
    decision = decide(version, candidate_rmse, champion, champion_rmse, how)

    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    _record(client, name, run_id, decision)
    _log.info("registry %s: %s", name, decision.reason)
    return decision
