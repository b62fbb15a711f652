"""A model's assets: features, a reproducible training run, the evaluation (champion vs
candidate), the deployment it decides, and the deployed model's lineage.

The decisions live in `event_sourcing.ml` and `event_sourcing.training`; each asset records
them (keyed, so a retried step states each fact once) and reports.
"""

from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

import event_sourcing as es
from event_sourcing.catalog import FeatureComputed, FeatureVersioned
from event_sourcing.dagster.artifact_store import ArtifactStoreResource
from event_sourcing.dagster.event_store import (
    EventStoreResource,
    idempotency_scope,
    run_metadata,
)
from event_sourcing.dagster.ml.names import Names
from event_sourcing.errors import ConcurrencyError
from event_sourcing.ml.evaluation import (
    NoCandidateError,
    deployment_events,
    evaluate,
    verdict_event,
)
from event_sourcing.ml.history import (
    DEPLOYMENT_STREAM_TYPE,
    FEATURE_STREAM_TYPE,
    dataset_history,
    event_summary,
    latest_feature_version,
    model_record,
)
from event_sourcing.ml.spec import ModelSpec
from event_sourcing.ml.training import train_model
from event_sourcing.serving import current_deployment
from event_sourcing.training import TrainingService

__all__ = ["TrainingConfig", "compute_features", "model_assets"]


class TrainingConfig(dg.Config):
    """Hyper-parameters of a training run (the run config of a trained_model asset)."""

    C: float = Field(default=1.0, description="inverse regularisation strength")
    max_iter: int = Field(default=500, description="solver iterations")
    cv_folds: int = Field(default=3, ge=2, description="cross-validation folds (progress steps)")
    seed: int = Field(default=7, description="random seed, recorded for re-runs")


def compute_features(spec: ModelSpec, table: pd.DataFrame) -> pd.DataFrame:
    """The feature table of a dataset version: row id, computed features, target."""
    dataset = spec.dataset
    inputs = table[list(dataset.feature_columns)]
    if spec.features is not None:
        inputs = spec.features().fit_transform(inputs)
        assert isinstance(inputs, pd.DataFrame), "the feature code must output pandas"
    features = inputs.reset_index(drop=True)
    features.insert(0, dataset.id_column, table[dataset.id_column].to_numpy())
    features[dataset.target_column] = table[dataset.target_column].to_numpy()
    return features


def model_assets(names: Names, validated_data: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    """features, trained_model, model_evaluation, deployed_model of one model."""
    spec = names.spec
    dataset = spec.dataset

    @dg.asset(
        key=names.key("features"),
        deps=[validated_data],
        group_name=names.group("features"),
        code_version=spec.feature_code_sha256,
        kinds={"scikitlearn", "pandas"},
        description=f"Features of the newest {dataset.dataset_id} version that passed "
        "validation (feature_computed + feature_versioned; version = sha256(feature code + "
        "dataset version)).",
    )
    def features(
        context: dg.AssetExecutionContext,
        event_store: EventStoreResource,
        artifact_store: ArtifactStoreResource,
    ) -> dg.MaterializeResult:
        store, artifacts = event_store.store, artifact_store.store
        version = dataset_history(store, dataset.stream).latest_passed()
        if version is None or version.ingested.artifact is None:
            raise dg.Failure(
                "no dataset version has passed validation yet: materialize raw_data and "
                "validated_data first (drop batch CSVs in the landing folder if it is empty)"
            )
        feature_version = spec.feature_version_of(version.version)
        recorded = [
            e
            for e in store.read_stream(dataset.feature_stream)
            if e.payload.get("feature_version") == feature_version
        ]
        new_events: list[es.RecordedEvent] = []
        if recorded:
            context.log.info(f"feature version {feature_version[:12]} exists already; reusing it")
        else:
            table = artifacts.get_table(version.ingested.artifact)
            assert isinstance(table, pd.DataFrame)
            feature_table = compute_features(spec, table)
            ref = artifacts.put_table(feature_table)
            kept = (dataset.id_column, dataset.target_column)
            columns = [c for c in feature_table.columns if c not in kept]
            common: dict[str, Any] = {
                "feature_set": dataset.feature_set,
                "feature_version": feature_version,
                "dataset_version": version.version,
                "features": columns,
            }
            assert version.validated_event is not None
            recorded = new_events = event_store.emit(
                context,
                dataset.feature_stream,
                [
                    FeatureComputed(**common, rows=len(feature_table), artifact=ref),
                    FeatureVersioned(**common, code_sha256=spec.feature_code_sha256),
                ],
                stream_type=FEATURE_STREAM_TYPE,
                causation_id=version.validated_event.id,
                metadata={"dataset_id": dataset.dataset_id},
                key=f"features:{feature_version}",
            )
        computed = next(e for e in recorded if e.event_type == "feature_computed")
        return dg.MaterializeResult(
            metadata={
                "feature_version": feature_version,
                "dataset_version": version.version,
                "feature_code_sha256": spec.feature_code_sha256,
                "feature_set": dataset.feature_set,
                "features": dg.MetadataValue.int(len(computed.payload["features"])),
                "rows": dg.MetadataValue.int(int(computed.payload["rows"])),
                "artifact": (computed.payload.get("artifact") or {}).get("uri") or "",
                "new_events": dg.MetadataValue.int(len(new_events)),
                "events": dg.MetadataValue.json(event_summary(recorded)),
            },
            data_version=dg.DataVersion(feature_version),
        )

    @dg.asset(
        key=names.key("trained_model"),
        deps=[features],
        group_name=names.group("training"),
        code_version=spec.training_code_sha256,
        kinds={"scikitlearn"},
        description=f"A {spec.name} trained on the newest feature version through the "
        "reproducible TrainingService; data version = the model's fingerprint.",
    )
    def trained_model(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        event_store: EventStoreResource,
        artifact_store: ArtifactStoreResource,
    ) -> dg.MaterializeResult:
        store = event_store.store
        found = latest_feature_version(store, dataset.feature_stream)
        if found is None:
            raise dg.Failure(
                "no feature version recorded yet: materialize the features asset first"
            )
        feature_version, _ = found
        service = TrainingService(store, artifact_store.store)
        # Keyed by the run family and step: a retry of this step (RetryPolicy, re-execution
        # from failure, run retry) resumes the training run an earlier attempt left open, or
        # closes it if the inputs changed, instead of starting a second one.
        try:
            outcome = train_model(
                service,
                spec,
                feature_version,
                hyperparameters={"C": config.C, "max_iter": config.max_iter},
                seed=config.seed,
                cv_folds=config.cv_folds,
                idempotency_key=idempotency_scope(context, "training"),
                config={"dagster_root_run_id": context.run.root_run_id or context.run.run_id},
                correlation_id=context.run.run_id,
                metadata=run_metadata(context),
                user_id="dagster",
            )
        except Exception as exc:
            context.log.error(f"training failed (recorded as training_failed): {exc}")
            raise
        if outcome.resumed:
            context.log.info(
                f"training run {outcome.training_id} was started by an earlier attempt of this "
                "step; " + ("reusing its model" if outcome.reused else "resuming it")
            )
        training_id, model_id, metrics = outcome.training_id, outcome.model_id, outcome.metrics
        rows = outcome.training_rows
        run = service.replay_training(training_id)
        record = model_record(store, model_id, spec.name)
        events = store.read_stream(training_id) + store.read_stream(model_id)
        if record is not None:
            events.append(record.versioned_event)
        primary = spec.promotion.metric
        metadata: dict[str, Any] = {
            "training_id": training_id,
            "model_id": model_id,
            "model_name": spec.name,
            "model_version": dg.MetadataValue.int(record.version if record else 0),
            "model_fingerprint": run["model_fingerprint"],
            "dataset_version": feature_version.dataset_version,
            "feature_version": feature_version.feature_version,
            "code_source_sha256": spec.training_code_sha256,
            "git_commit": (run["code_version"] or {}).get("git_commit") or "",
            "hyperparameters": dg.MetadataValue.json(
                {"C": config.C, "max_iter": config.max_iter, "seed": config.seed}
            ),
            "metrics": dg.MetadataValue.json(metrics),
            "training_rows": dg.MetadataValue.int(rows),
            "events": dg.MetadataValue.json(event_summary(events)),
        }
        if primary in metrics:
            metadata[f"holdout_{primary}"] = dg.MetadataValue.float(float(metrics[primary]))
        if f"cv_{primary}" in metrics:
            metadata[f"cv_{primary}"] = dg.MetadataValue.float(float(metrics[f"cv_{primary}"]))
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(run["model_fingerprint"])
        )

    @dg.asset(
        key=names.key("model_evaluation"),
        deps=[trained_model],
        group_name=names.group("deployment"),
        code_version=spec.training_code_sha256,
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
        try:
            evaluation = evaluate(store, artifact_store.store, spec)
        except NoCandidateError as exc:
            raise dg.Failure(str(exc)) from None
        candidate, champion = evaluation["candidate"], evaluation["champion"]
        try:
            (evaluated,) = event_store.emit(
                context,
                spec.deployment_stream,
                [verdict_event(spec, evaluation, store.clock())],
                expected_version=evaluation.pop("seen_version"),
                stream_type=DEPLOYMENT_STREAM_TYPE,
                causation_id=candidate["versioned_event_id"],
                key="model_evaluated",
            )
        except ConcurrencyError:
            raise dg.Failure(
                f"the {spec.environment} deployment stream changed while the evaluation ran "
                "(another run deployed or evaluated); re-materialize model_evaluation and "
                "deployed_model"
            ) from None
        if evaluated.payload["model_id"] != candidate["model_id"]:
            raise dg.Failure(
                f"an earlier attempt of this step evaluated {evaluated.payload['model_id']}, but "
                f"the newest model is now {candidate['model_id']}; launch a new retrain run"
            )
        # The first record wins: a retried step reports the verdict an earlier attempt recorded.
        evaluation.update(
            promote=bool(evaluated.payload["promoted"]),
            reason=str(evaluated.payload["reason"]),
            evaluated_event_id=evaluated.id,
            evaluated_stream_version=evaluated.version,
        )
        context.log.info(f"promote={evaluation['promote']}: {evaluation['reason']}")
        primary = spec.promotion.metric
        metadata: dict[str, Any] = {
            "candidate_model_id": candidate["model_id"],
            "candidate_version": dg.MetadataValue.int(candidate["version"]),
            f"candidate_{primary}": dg.MetadataValue.float(candidate["metrics"][primary]),
            "holdout_dataset_version": evaluation["holdout_dataset_version"],
            "holdout_rows": dg.MetadataValue.int(evaluation["holdout_rows"]),
            "promote": evaluation["promote"],
            "reason": evaluation["reason"],
            "evaluated_event_id": evaluated.id,
            "evaluated_event_position": dg.MetadataValue.int(evaluated.position),
            "evaluation": dg.MetadataValue.json(evaluation),
        }
        if champion is not None:
            metadata["champion_model_id"] = champion["model_id"]
            metadata[f"champion_{primary}"] = dg.MetadataValue.float(champion["metrics"][primary])
        return dg.MaterializeResult(
            value=evaluation,
            metadata=metadata,
            data_version=dg.DataVersion(
                f"{candidate['model_id']}:{champion['model_id'] if champion else '-'}"
            ),
        )

    deployed_key = names.key("deployed_model")

    @dg.asset(
        key=deployed_key,
        ins={"model_evaluation": dg.AssetIn(key=model_evaluation.key)},
        group_name=names.group("deployment"),
        code_version=spec.training_code_sha256,
        check_specs=[
            dg.AssetCheckSpec(
                "candidate_promoted",
                asset=deployed_key,
                description="the newest model was deployed (warns, with the reason, when not)",
            )
        ],
        description=f"The {spec.name} serving in {spec.environment}: model_deployed (+ "
        "model_retired for the one it replaces) when the evaluation says promote; data "
        "version = the serving model id.",
    )
    def deployed_model(
        context: dg.AssetExecutionContext,
        model_evaluation: dict[str, Any],
        event_store: EventStoreResource,
    ) -> dg.MaterializeResult:
        store = event_store.store
        candidate = model_evaluation["candidate"]
        recorded = _deploy(context, event_store, spec, model_evaluation)
        serving = current_deployment(store, spec.environment, spec.name)
        promoted = model_evaluation["promote"] or (
            serving is not None and serving.model_id == candidate["model_id"]
        )
        reason = model_evaluation["reason"]
        return dg.MaterializeResult(
            metadata={
                "serving_model_id": serving.model_id if serving else "",
                "serving_version": dg.MetadataValue.int(serving.version if serving else 0),
                "environment": spec.environment,
                "promoted": model_evaluation["promote"],
                "reason": reason,
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
                    description=reason
                    if promoted
                    else f"{candidate['model_id']} not deployed: {reason}",
                )
            ],
            data_version=dg.DataVersion(serving.model_id) if serving else None,
        )

    return [features, trained_model, model_evaluation, deployed_model]


def _deploy(
    context: dg.AssetExecutionContext,
    event_store: EventStoreResource,
    spec: ModelSpec,
    evaluation: dict[str, Any],
) -> list[es.RecordedEvent]:
    """Carry out a promoting verdict: retire + deploy, right after the verdict, keyed."""
    if not evaluation["promote"]:
        return []
    if "evaluated_event_id" not in evaluation:
        raise dg.Failure(
            "this evaluation was stored before verdicts were recorded as model_evaluated "
            "events; re-materialize model_evaluation and deployed_model"
        )
    store = event_store.store
    champion, candidate = evaluation["champion"], evaluation["candidate"]
    current = current_deployment(store, spec.environment, spec.name)
    already = event_store.emitted(context, "deploy")  # by an earlier attempt of this step
    if not already and (current.model_id if current else None) != (
        champion["model_id"] if champion else None
    ):
        raise dg.Failure(
            "the deployed model changed since the evaluation ran; re-materialize "
            "model_evaluation and deployed_model"
        )
    try:
        recorded = event_store.emit(
            context,
            spec.deployment_stream,
            deployment_events(spec, evaluation, store.clock()),
            expected_version=evaluation["evaluated_stream_version"],
            stream_type=DEPLOYMENT_STREAM_TYPE,
            causation_id=evaluation["evaluated_event_id"],
            key="deploy",
        )
    except ConcurrencyError:
        raise dg.Failure(
            f"the {spec.environment} deployment stream changed since the evaluation "
            f"{evaluation['evaluated_event_id']}; re-materialize model_evaluation and "
            "deployed_model"
        ) from None
    if not already:
        context.log.info(f"deployed {candidate['model_id']} v{candidate['version']}")
    return recorded
