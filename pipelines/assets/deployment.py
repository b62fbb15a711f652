"""Evaluation and deployment assets: champion vs candidate on held-out rows, then promotion.

Every verdict is recorded as model_evaluated on the deployment stream. A candidate at least as
good as the champion is then deployed (model_deployed, caused by that verdict, and
model_retired for the champion it replaces); otherwise a warning check repeats why not.
"""

from typing import Any

import dagster as dg
import pandas as pd

from event_sourcing.catalog import ModelDeployed, ModelRetired, TrainingStarted
from event_sourcing.catalog.ml_events import ModelEvaluated
from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource
from event_sourcing.errors import ConcurrencyError
from event_sourcing.serving import current_deployment, load_model
from pipelines.assets.training import score_model, trained_model
from pipelines.code_versions import module_code_version
from pipelines.dataset import split_holdout
from pipelines.state import (
    DEPLOYMENT_STREAM_TYPE,
    ENVIRONMENT,
    MODEL_NAME,
    deployment_stream,
    event_summary,
    latest_model,
    model_record,
)

__all__ = ["PRIMARY_METRIC", "decide", "deployed_model", "model_evaluation"]

CODE_VERSION = module_code_version(__file__)
PRIMARY_METRIC = "accuracy"
"""Promotion compares this held-out metric; ties go to the candidate (at least as good)."""


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None) -> tuple[bool, str]:
    """(promote?, why) for a candidate and the champion (None: nothing serves yet)."""
    if champion is None:
        return True, "no model is deployed yet"
    if candidate["model_id"] == champion["model_id"]:
        return False, "the candidate is already the deployed model"
    if candidate.get("fingerprint") and candidate["fingerprint"] == champion.get("fingerprint"):
        return False, "the candidate is identical to the champion (same fingerprint)"
    new, old = candidate["metrics"][PRIMARY_METRIC], champion["metrics"][PRIMARY_METRIC]
    if new >= old:
        return True, f"held-out {PRIMARY_METRIC} {new:.4f} >= champion's {old:.4f}"
    return False, f"held-out {PRIMARY_METRIC} {new:.4f} < champion's {old:.4f}"


def _fingerprint(store: Any, training_id: str) -> str | None:
    for event in reversed(store.read_stream(training_id)):
        if event.event_type == "training_completed":
            return event.payload.get("model_fingerprint")
    return None


@dg.asset(
    deps=[trained_model],
    group_name="deployment",
    code_version=CODE_VERSION,
    kinds={"scikitlearn"},
    description="The newest model (candidate) and the deployed one (champion) scored on the "
    "held-out rows of the candidate's dataset version, and the promotion decision "
    "(recorded as model_evaluated).",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    event_store: EventStoreResource,
    artifact_store: ArtifactStoreResource,
) -> dg.MaterializeResult:
    store = event_store.store
    artifacts = artifact_store.store
    candidate = latest_model(store, MODEL_NAME)
    if candidate is None:
        raise dg.Failure(f"no version of {MODEL_NAME} exists yet: materialize trained_model first")
    first = store.read_stream(candidate.training_id, 1, 1)[0]
    started = TrainingStarted.model_validate(first.payload)
    dataset = artifacts.get_table(started.dataset_version)
    assert isinstance(dataset, pd.DataFrame)
    _train, holdout = split_holdout(dataset)

    stream = deployment_stream(ENVIRONMENT)
    # The verdict is appended at the stream version seen before reading the champion, so a
    # deployment that lands meanwhile fails the append instead of invalidating the verdict.
    seen_version = store.stream_version(stream)
    candidate_model, _ = load_model(store, artifacts, candidate.model_id)
    evaluation: dict[str, Any] = {
        "holdout_dataset_version": started.dataset_version,
        "holdout_rows": len(holdout),
        "candidate": {
            "model_id": candidate.model_id,
            "version": candidate.version,
            "training_id": candidate.training_id,
            "fingerprint": _fingerprint(store, candidate.training_id),
            "metrics": score_model(candidate_model, holdout),
            "versioned_event_id": candidate.versioned_event.id,
        },
        "champion": None,
    }
    deployment = current_deployment(store, ENVIRONMENT, MODEL_NAME)
    if deployment is not None:
        champion_model, _ = load_model(store, artifacts, deployment.model_id)
        record = model_record(store, deployment.model_id)
        evaluation["champion"] = {
            "model_id": deployment.model_id,
            "version": deployment.version,
            "training_id": record.training_id if record else None,
            "fingerprint": _fingerprint(store, record.training_id) if record else None,
            "metrics": score_model(champion_model, holdout),
            "deployed_event_id": deployment.deployed_event.id,
        }
    promote, reason = decide(evaluation["candidate"], evaluation["champion"])
    champion = evaluation["champion"]
    verdict = ModelEvaluated(
        model_id=candidate.model_id,
        model_name=MODEL_NAME,
        version=candidate.version,
        environment=ENVIRONMENT,
        champion_model_id=champion["model_id"] if champion else None,
        dataset_version=started.dataset_version,
        metrics=evaluation["candidate"]["metrics"],
        champion_metrics=champion["metrics"] if champion else None,
        promoted=promote,
        reason=reason,
        evaluated_at=store.clock(),
    )
    try:
        (evaluated,) = event_store.emit(
            context,
            stream,
            [verdict],
            expected_version=seen_version,
            stream_type=DEPLOYMENT_STREAM_TYPE,
            causation_id=candidate.versioned_event.id,
            key="model_evaluated",
        )
    except ConcurrencyError:
        raise dg.Failure(
            f"the {ENVIRONMENT} deployment stream changed while the evaluation ran (another "
            "run deployed or evaluated); re-materialize model_evaluation and deployed_model"
        ) from None
    if evaluated.payload["model_id"] != candidate.model_id:
        raise dg.Failure(
            f"an earlier attempt of this step evaluated {evaluated.payload['model_id']}, but the "
            f"newest model is now {candidate.model_id}; launch a new retrain run"
        )
    # The first record wins: a retried step reports the verdict an earlier attempt recorded.
    promote, reason = bool(evaluated.payload["promoted"]), str(evaluated.payload["reason"])
    evaluation.update(
        promote=promote,
        reason=reason,
        evaluated_event_id=evaluated.id,
        evaluated_stream_version=evaluated.version,
    )
    context.log.info(f"promote={promote}: {reason}")
    metadata: dict[str, Any] = {
        "candidate_model_id": candidate.model_id,
        "candidate_version": dg.MetadataValue.int(candidate.version),
        f"candidate_{PRIMARY_METRIC}": dg.MetadataValue.float(
            evaluation["candidate"]["metrics"][PRIMARY_METRIC]
        ),
        "holdout_dataset_version": started.dataset_version,
        "holdout_rows": dg.MetadataValue.int(len(holdout)),
        "promote": promote,
        "reason": reason,
        "evaluated_event_id": evaluated.id,
        "evaluated_event_position": dg.MetadataValue.int(evaluated.position),
        "evaluation": dg.MetadataValue.json(evaluation),
    }
    if champion is not None:
        metadata["champion_model_id"] = champion["model_id"]
        metadata[f"champion_{PRIMARY_METRIC}"] = dg.MetadataValue.float(
            champion["metrics"][PRIMARY_METRIC]
        )
    return dg.MaterializeResult(
        value=evaluation,
        metadata=metadata,
        data_version=dg.DataVersion(
            f"{candidate.model_id}:{champion['model_id'] if champion else '-'}"
        ),
    )


@dg.asset(
    group_name="deployment",
    code_version=CODE_VERSION,
    check_specs=[
        dg.AssetCheckSpec(
            "candidate_promoted",
            asset="deployed_model",
            description="the newest model was deployed (warns, with the reason, when it was not)",
        )
    ],
    description="The model serving in production: model_deployed (+ model_retired for the one "
    "it replaces) when the evaluation says promote; data version = the serving model id.",
)
def deployed_model(
    context: dg.AssetExecutionContext,
    model_evaluation: dict[str, Any],
    event_store: EventStoreResource,
) -> dg.MaterializeResult:
    store = event_store.store
    candidate, champion = model_evaluation["candidate"], model_evaluation["champion"]
    stream = deployment_stream(ENVIRONMENT)
    recorded = []
    if model_evaluation["promote"]:
        if "evaluated_event_id" not in model_evaluation:
            raise dg.Failure(
                "this evaluation was stored before verdicts were recorded as model_evaluated "
                "events; re-materialize model_evaluation and deployed_model"
            )
        current = current_deployment(store, ENVIRONMENT, MODEL_NAME)
        already = event_store.emitted(context, "deploy")  # by an earlier attempt of this step
        if not already and (current.model_id if current else None) != (
            champion["model_id"] if champion else None
        ):
            raise dg.Failure(
                "the deployed model changed since the evaluation ran; re-materialize "
                "model_evaluation and deployed_model"
            )
        now = store.clock()
        events: list[Any] = []
        if champion is not None:
            events.append(
                ModelRetired(
                    model_id=champion["model_id"],
                    model_name=MODEL_NAME,
                    version=champion["version"],
                    environment=ENVIRONMENT,
                    retired_at=now,
                    reason=f"replaced by {candidate['model_id']}: {model_evaluation['reason']}",
                    replaced_by_model_id=candidate["model_id"],
                )
            )
        events.append(
            ModelDeployed(
                model_id=candidate["model_id"],
                model_name=MODEL_NAME,
                version=candidate["version"],
                environment=ENVIRONMENT,
                deployed_at=now,
                replaces_model_id=champion["model_id"] if champion else None,
                reason=model_evaluation["reason"],
            )
        )
        # Retire and deploy in one atomic batch right after the verdict that decided it (the
        # metrics and reason live there): nothing may have reached the stream in between, so
        # two deployments racing cannot both win.
        try:
            recorded = event_store.emit(
                context,
                stream,
                events,
                expected_version=model_evaluation["evaluated_stream_version"],
                stream_type=DEPLOYMENT_STREAM_TYPE,
                causation_id=model_evaluation["evaluated_event_id"],
                key="deploy",
            )
        except ConcurrencyError:
            raise dg.Failure(
                f"the {ENVIRONMENT} deployment stream changed since the evaluation "
                f"{model_evaluation['evaluated_event_id']}; re-materialize model_evaluation "
                "and deployed_model"
            ) from None
        if not already:
            context.log.info(f"deployed {candidate['model_id']} v{candidate['version']}")
    serving = current_deployment(store, ENVIRONMENT, MODEL_NAME)
    promoted = model_evaluation["promote"] or (
        serving is not None and serving.model_id == candidate["model_id"]
    )
    return dg.MaterializeResult(
        metadata={
            "serving_model_id": serving.model_id if serving else "",
            "serving_version": dg.MetadataValue.int(serving.version if serving else 0),
            "environment": ENVIRONMENT,
            "promoted": model_evaluation["promote"],
            "reason": model_evaluation["reason"],
            "evaluated_event_id": model_evaluation.get("evaluated_event_id", ""),
            "deployed_event_id": serving.deployed_event.id if serving else "",
            "deployed_event_position": dg.MetadataValue.int(
                serving.deployed_event.position if serving else 0
            ),
            "events": dg.MetadataValue.json(event_summary(recorded)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="candidate_promoted",
                passed=promoted,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"{candidate['model_id']} not deployed: {model_evaluation['reason']}"
                if not promoted
                else model_evaluation["reason"],
            )
        ],
        data_version=dg.DataVersion(serving.model_id) if serving else None,
    )
