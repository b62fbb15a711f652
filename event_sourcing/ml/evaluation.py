"""Evaluation, promotion and retirement as services: champion vs candidate on held-out rows,
the verdict (model_evaluated) and the deployment it implies (model_retired + model_deployed).
No dagster.
"""

from datetime import datetime
from typing import Any

import pandas as pd

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import ModelDeployed, ModelRetired, TrainingStarted
from event_sourcing.catalog.ml_events import ModelEvaluated
from event_sourcing.ml.history import latest_model, model_record
from event_sourcing.ml.promotion import Decision
from event_sourcing.ml.spec import ModelSpec
from event_sourcing.privacy.redaction import erased_versions
from event_sourcing.serving import current_deployment, load_model

__all__ = [
    "NoCandidateError", "deployment_events", "erasure_decision", "evaluate", "verdict_event",
]


class NoCandidateError(es.EventStoreError):
    """The model has no version to evaluate yet."""


def _fingerprint(store: es.EventStore, training_id: str) -> str | None:
    for event in reversed(store.read_stream(training_id)):
        if event.event_type == "training_completed":
            return event.payload.get("model_fingerprint")
    return None


def evaluate(store: es.EventStore, artifacts: ArtifactStore, spec: ModelSpec) -> dict[str, Any]:
    """The newest version of the model (candidate) and the one serving (champion), scored on
    the held-out rows of the candidate's dataset version, with the policy's verdict.

    Returns a JSON-able dict: holdout_dataset_version, holdout_rows, candidate, champion
    (None when nothing serves), promote, reason, and `seen_version`: the deployment stream's
    version before the champion was read (append the verdict there: a deployment landing
    meanwhile then fails the append instead of invalidating the verdict).
    """
    candidate = latest_model(store, spec.name)
    if candidate is None:
        raise NoCandidateError(
            f"no version of {spec.name} exists yet: train one (materialize trained_model) first"
        )
    started = _started(store, candidate.training_id)
    erased = erased_versions(store)
    if started.dataset_version in erased:
        raise NoCandidateError(
            f"the newest {spec.name} ({candidate.model_id}) was trained on dataset version "
            f"{started.dataset_version[:12]}, which held data erased by "
            f"{erased[started.dataset_version]}: retrain it (materialize trained_model)"
        )
    dataset = artifacts.get_table(started.dataset_version)
    assert isinstance(dataset, pd.DataFrame)
    _train, holdout = spec.dataset.split_holdout(dataset)
    seen_version = store.stream_version(spec.deployment_stream)
    candidate_model, _ = load_model(store, artifacts, candidate.model_id)
    evaluation: dict[str, Any] = {
        "holdout_dataset_version": started.dataset_version,
        "holdout_rows": len(holdout),
        "candidate": {
            "model_id": candidate.model_id,
            "version": candidate.version,
            "training_id": candidate.training_id,
            "fingerprint": _fingerprint(store, candidate.training_id),
            "metrics": spec.metrics(candidate_model, holdout),
            "versioned_event_id": candidate.versioned_event.id,
        },
        "champion": None,
        "seen_version": seen_version,
    }
    deployment = current_deployment(store, spec.environment, spec.name)
    if deployment is not None:
        champion_model, _ = load_model(store, artifacts, deployment.model_id)
        record = model_record(store, deployment.model_id, spec.name)
        evaluation["champion"] = {
            "model_id": deployment.model_id,
            "version": deployment.version,
            "training_id": record.training_id if record else None,
            "fingerprint": _fingerprint(store, record.training_id) if record else None,
            "metrics": spec.metrics(champion_model, holdout),
            "deployed_event_id": deployment.deployed_event.id,
        }
        if record is not None:
            champion_data = _started(store, record.training_id).dataset_version
            evaluation["champion"]["erased_by"] = erased.get(champion_data)
    decision = erasure_decision(evaluation["champion"]) or spec.promotion.decide(
        evaluation["candidate"], evaluation["champion"]
    )
    evaluation.update(promote=decision.promote, reason=decision.reason)
    return evaluation


def _started(store: es.EventStore, training_id: str) -> TrainingStarted:
    return TrainingStarted.model_validate(store.read_stream(training_id, 1, 1)[0].payload)


def erasure_decision(champion: dict[str, Any] | None) -> Decision | None:
    """A champion trained on data an erasure removed is replaced by the candidate (trained
    without it: `evaluate` refuses candidates trained on erased data) whatever the policy's
    metric says: a model may not keep serving what it memorised of a forgotten subject."""
    if champion is None or not champion.get("erased_by"):
        return None
    return Decision(
        True, f"the deployed model was trained on data erased by {champion['erased_by']}; "
        "replaced by a model trained without it (erasure overrides the promotion policy)",
    )


def verdict_event(spec: ModelSpec, evaluation: dict[str, Any], now: datetime) -> ModelEvaluated:
    """The model_evaluated that records an evaluation's verdict."""
    candidate, champion = evaluation["candidate"], evaluation["champion"]
    return ModelEvaluated(
        model_id=candidate["model_id"],
        model_name=spec.name,
        version=candidate["version"],
        environment=spec.environment,
        champion_model_id=champion["model_id"] if champion else None,
        dataset_version=evaluation["holdout_dataset_version"],
        metrics=candidate["metrics"],
        champion_metrics=champion["metrics"] if champion else None,
        promoted=evaluation["promote"],
        reason=evaluation["reason"],
        evaluated_at=now,
    )


def deployment_events(
    spec: ModelSpec, evaluation: dict[str, Any], now: datetime
) -> list[ModelRetired | ModelDeployed]:
    """What a promoting verdict implies: the champion retired (if any), the candidate deployed.

    Append them in one batch right after the verdict (its metrics and reason live there), so
    two deployments racing cannot both win.
    """
    candidate, champion = evaluation["candidate"], evaluation["champion"]
    events: list[ModelRetired | ModelDeployed] = []
    if champion is not None:
        events.append(
            ModelRetired(
                model_id=champion["model_id"],
                model_name=spec.name,
                version=champion["version"],
                environment=spec.environment,
                retired_at=now,
                reason=f"replaced by {candidate['model_id']}: {evaluation['reason']}",
                replaced_by_model_id=candidate["model_id"],
            )
        )
    events.append(
        ModelDeployed(
            model_id=candidate["model_id"],
            model_name=spec.name,
            version=candidate["version"],
            environment=spec.environment,
            deployed_at=now,
            replaces_model_id=champion["model_id"] if champion else None,
            reason=evaluation["reason"],
        )
    )
    return events
