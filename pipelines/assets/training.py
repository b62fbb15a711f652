"""The training asset: a reproducible scikit-learn training run on the newest feature version.

Records training_started, training_progress per CV fold, then training_completed (with
model_created / model_versioned) or training_failed, through the library's TrainingService;
every event carries the Dagster run's ids in its metadata, as EventStoreResource.emit adds them.
"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from event_sourcing.dagster import (
    ArtifactStoreResource,
    EventStoreResource,
    idempotency_scope,
    run_metadata,
)
from event_sourcing.training import TrainingService, training_function
from event_sourcing.training.reproducibility import source_sha256
from pipelines.assets.features import build_feature_pipeline, features
from pipelines.dataset import DATASET_ID, FEATURE_COLUMNS, TARGET_COLUMN, split_holdout
from pipelines.state import MODEL_NAME, event_summary, latest_feature_version, model_record

__all__ = [
    "TRAINING_CODE_VERSION",
    "TrainingConfig",
    "score_model",
    "train_classifier",
    "trained_model",
]


@training_function
def train_classifier(dataset: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
    """Fit feature pipeline + scaler + logistic regression on the non-held-out rows."""
    train, _holdout = split_holdout(dataset)
    model = Pipeline(
        [
            ("features", build_feature_pipeline()),
            ("scale", StandardScaler()),
            (
                "classifier",
                LogisticRegression(
                    C=float(hyperparameters.get("C", 1.0)),
                    max_iter=int(hyperparameters.get("max_iter", 500)),
                    random_state=seed,
                ),
            ),
        ]
    )
    return model.fit(train[list(FEATURE_COLUMNS)], train[TARGET_COLUMN])


TRAINING_CODE_VERSION = source_sha256(train_classifier) or "unknown"
"""sha256 of the training function's source, as training_started.code_version records it."""


def score_model(model: Any, rows: pd.DataFrame) -> dict[str, float]:
    """accuracy, f1, roc_auc and log_loss of a fitted classifier on labelled rows."""
    inputs, labels = rows[list(FEATURE_COLUMNS)], rows[TARGET_COLUMN]
    predicted = model.predict(inputs)
    probability = model.predict_proba(inputs)[:, 1]
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "log_loss": float(log_loss(labels, probability, labels=[0, 1])),
        "rows": float(len(rows)),
    }
    if labels.nunique() == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probability))
    return metrics


class TrainingConfig(dg.Config):
    """Hyper-parameters of a training run (the run config of the trained_model asset)."""

    C: float = Field(default=1.0, description="inverse regularisation strength")
    max_iter: int = Field(default=500, description="solver iterations")
    cv_folds: int = Field(default=3, ge=2, description="cross-validation folds (progress steps)")
    seed: int = Field(default=7, description="random seed, recorded for re-runs")


@dg.asset(
    deps=[features],
    group_name="training",
    code_version=TRAINING_CODE_VERSION,
    kinds={"scikitlearn"},
    description="A model trained on the newest feature version through the reproducible "
    "TrainingService; data version = the model's fingerprint.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    event_store: EventStoreResource,
    artifact_store: ArtifactStoreResource,
) -> dg.MaterializeResult:
    store = event_store.store
    artifacts = artifact_store.store
    found = latest_feature_version(store)
    if found is None:
        raise dg.Failure("no feature version recorded yet: materialize the features asset first")
    feature_version, _ = found
    dataset_version = feature_version.dataset_version
    dataset = artifacts.get_table(dataset_version)
    assert isinstance(dataset, pd.DataFrame)
    hyperparameters = {"C": config.C, "max_iter": config.max_iter}
    service = TrainingService(store, artifacts)
    metadata = run_metadata(context)
    # Keyed by the run family and step: a retry of this step (RetryPolicy, re-execution from
    # failure, run retry) resumes the training run an earlier attempt left open, or closes it
    # with training_failed if the inputs changed, instead of starting a second one.
    key = idempotency_scope(context, "training")
    earlier = service.keyed_run(key)
    training_id = service.start_training(
        {
            "model_name": MODEL_NAME,
            "estimator": "StandardScaler+LogisticRegression",
            "cv_folds": config.cv_folds,
            "holdout": "sha256(sample_id) bucket 0 of 5",
            "dagster_root_run_id": context.run.root_run_id or context.run.run_id,
        },
        dataset_version,
        dataset_id=DATASET_ID,
        feature_version=feature_version.feature_version,
        hyperparameters=hyperparameters,
        seed=config.seed,
        train_fn=train_classifier,
        model_name=MODEL_NAME,
        user_id="dagster",
        correlation_id=context.run.run_id,
        metadata=metadata,
        idempotency_key=key,
    )
    train_rows, holdout = split_holdout(dataset)
    reused_model = service.completed_model(training_id, metadata=metadata)
    if training_id == earlier:
        context.log.info(
            f"training run {training_id} was started by an earlier attempt of this step; "
            + ("reusing its model" if reused_model else "resuming it")
        )
    if reused_model is not None:
        model_id = reused_model
        metrics = service.replay_training(training_id)["final_metrics"] or {}
    else:
        try:
            folds = StratifiedKFold(
                n_splits=config.cv_folds, shuffle=True, random_state=config.seed
            )
            cv_accuracy = []
            for step, (fit_index, test_index) in enumerate(
                folds.split(train_rows, train_rows[TARGET_COLUMN]), start=1
            ):
                fold_model = train_classifier(
                    train_rows.iloc[fit_index].reset_index(drop=True),
                    hyperparameters,
                    config.seed,
                )
                fold_metrics = score_model(fold_model, train_rows.iloc[test_index])
                cv_accuracy.append(fold_metrics["accuracy"])
                # A step recorded by an earlier attempt is returned, not recorded twice.
                service.record_training_step(
                    training_id,
                    {"step": step, "metrics": fold_metrics, "loss": fold_metrics["log_loss"]},
                    metadata=metadata,
                )
            model = train_classifier(dataset, hyperparameters, config.seed)
            metrics = score_model(model, holdout)
            metrics["cv_accuracy"] = float(np.mean(cv_accuracy))
            model_id = service.complete_training(
                training_id,
                model,
                metrics,
                X_eval=holdout[list(FEATURE_COLUMNS)],
                model_name=MODEL_NAME,
                metadata=metadata,
            )
        except Exception as exc:
            service.fail_training(training_id, exc, metadata=metadata)
            context.log.error(f"training run {training_id} failed: {exc}")
            raise
    run = service.replay_training(training_id)
    record = model_record(store, model_id)
    events = store.read_stream(training_id) + store.read_stream(model_id)
    if record is not None:
        events.append(record.versioned_event)
    return dg.MaterializeResult(
        metadata={
            "training_id": training_id,
            "model_id": model_id,
            "model_name": MODEL_NAME,
            "model_version": dg.MetadataValue.int(record.version if record else 0),
            "model_fingerprint": run["model_fingerprint"],
            "dataset_version": dataset_version,
            "feature_version": feature_version.feature_version,
            "code_source_sha256": TRAINING_CODE_VERSION,
            "git_commit": (run["code_version"] or {}).get("git_commit") or "",
            "hyperparameters": dg.MetadataValue.json({**hyperparameters, "seed": config.seed}),
            "metrics": dg.MetadataValue.json(metrics),
            "holdout_accuracy": dg.MetadataValue.float(metrics["accuracy"]),
            "cv_accuracy": dg.MetadataValue.float(metrics["cv_accuracy"]),
            "training_rows": dg.MetadataValue.int(len(train_rows)),
            "events": dg.MetadataValue.json(event_summary(events)),
        },
        data_version=dg.DataVersion(run["model_fingerprint"]),
    )
