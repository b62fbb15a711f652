"""Training a model spec as a recorded, resumable training run: cross-validation folds as
progress steps, the final model fit on the dataset version, scored on its held-out rows.
No dagster.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from event_sourcing.catalog import FeatureVersioned
from event_sourcing.ml.spec import ModelSpec
from event_sourcing.training import TrainingService

__all__ = ["TrainingOutcome", "train_model"]


@dataclass(frozen=True)
class TrainingOutcome:
    """What `train_model` recorded, or found recorded by an earlier attempt."""

    training_id: str
    model_id: str
    metrics: dict[str, float]
    training_rows: int
    resumed: bool
    """The training run was started by an earlier attempt with the same idempotency key."""
    reused: bool
    """That attempt had completed it: its model is returned, nothing was trained."""


def train_model(
    service: TrainingService,
    spec: ModelSpec,
    feature_version: FeatureVersioned,
    *,
    hyperparameters: dict[str, Any],
    seed: int,
    cv_folds: int = 3,
    idempotency_key: str | None = None,
    config: dict[str, Any] | None = None,
    correlation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    user_id: str | None = None,
) -> TrainingOutcome:
    """Train `spec` on the dataset version behind `feature_version`, recording the run.

    With an `idempotency_key`, a second call with the same key resumes the training run the
    first left open (steps already recorded are returned, not recorded again), reuses its model
    if it completed, or closes it with training_failed if the inputs changed. Any error closes
    the run with training_failed and is raised again.
    """
    dataset = spec.dataset
    table = service.artifacts.get_table(feature_version.dataset_version)
    assert isinstance(table, pd.DataFrame)
    earlier = service.keyed_run(idempotency_key) if idempotency_key else None
    training_id = service.start_training(
        {
            "model_name": spec.name,
            **spec.training_config,
            "cv_folds": cv_folds,
            "holdout": f"sha256({dataset.id_column}) bucket 0 of {dataset.holdout_buckets}",
            **(config or {}),
        },
        feature_version.dataset_version,
        dataset_id=dataset.dataset_id,
        feature_version=feature_version.feature_version,
        hyperparameters=hyperparameters,
        seed=seed,
        train_fn=spec.train,
        model_name=spec.name,
        user_id=user_id,
        correlation_id=correlation_id,
        metadata=metadata,
        idempotency_key=idempotency_key,
    )
    resumed = training_id == earlier
    train_rows, holdout = dataset.split_holdout(table)
    reused = service.completed_model(training_id, metadata=metadata)
    if reused is not None:
        metrics = service.replay_training(training_id)["final_metrics"] or {}
        return TrainingOutcome(training_id, reused, metrics, len(train_rows), resumed, True)
    primary = spec.promotion.metric
    try:
        folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
        scores = []
        for step, (fit, test) in enumerate(
            folds.split(train_rows, train_rows[dataset.target_column]), start=1
        ):
            fold = spec.train(train_rows.iloc[fit].reset_index(drop=True), hyperparameters, seed)
            fold_metrics = spec.metrics(fold, train_rows.iloc[test])
            scores.append(fold_metrics[primary])
            step_data: dict[str, Any] = {"step": step, "metrics": fold_metrics}
            if "log_loss" in fold_metrics:
                step_data["loss"] = fold_metrics["log_loss"]
            # A step recorded by an earlier attempt is returned, not recorded twice.
            service.record_training_step(training_id, step_data, metadata=metadata)
        model = spec.train(table, hyperparameters, seed)
        metrics = spec.metrics(model, holdout)
        metrics[f"cv_{primary}"] = float(np.mean(scores))
        model_id = service.complete_training(
            training_id,
            model,
            metrics,
            X_eval=holdout[list(dataset.feature_columns)],
            model_name=spec.name,
            metadata=metadata,
        )
    except Exception as exc:
        service.fail_training(training_id, exc, metadata=metadata)
        raise
    return TrainingOutcome(training_id, model_id, metrics, len(train_rows), resumed, False)
