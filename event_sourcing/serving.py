"""Serving from the log: which model is deployed where, loading it, and scoring batches with it.

Predictions (and feedback, when labels are known) are logged through training.inference.

The deployed model is found in the deployments read model, caught up with the log on every
question, so it is always as fresh as the log. The model itself comes from the artifact named
by its model_created event, hash-checked on load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import (
    DEFAULT_ENVIRONMENT,
    ArtifactRef,
    EventTypes,
    ModelCreated,
    ModelDeployed,
)
from event_sourcing.errors import EventStoreError
from event_sourcing.events import RecordedEvent
from event_sourcing.training.inference import log_feedback, log_prediction

if TYPE_CHECKING:
    from event_sourcing.stores import EventStore

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "Deployment",
    "LoadedModel",
    "ModelNotFoundError",
    "NoDeployedModelError",
    "ScoringError",
    "ScoringResult",
    "ServingError",
    "current_deployment",
    "deployments",
    "load_deployed_model",
    "load_model",
    "score_batch",
]



class ServingError(EventStoreError):
    """A model could not be found, loaded or used for scoring."""


class NoDeployedModelError(ServingError, LookupError):
    """No model is deployed in the requested environment."""


class ModelNotFoundError(ServingError, LookupError):
    """A model id has no model_created event (so no artifact to load)."""


class ScoringError(ServingError, ValueError):
    """A batch cannot be scored by the model (missing columns, bad values)."""


@dataclass(frozen=True)
class Deployment:
    """A model version serving in an environment, as the last model_deployed says."""

    model_id: str
    model_name: str
    version: int
    environment: str
    deployed_event: RecordedEvent

    @property
    def deployed_at(self) -> datetime:
        payload = ModelDeployed.model_validate(self.deployed_event.payload)
        return payload.deployed_at or self.deployed_event.occurred_at


def deployments(store: EventStore) -> dict[tuple[str, str], Deployment]:
    """What serves now, by (environment, model name): the open rows of the deployments read
    model, caught up with the log first (so always as fresh as the log)."""
    from event_sourcing.projections import deployments_projection, list_deployments
    from event_sourcing.projections.runner import catch_up

    catch_up(store, deployments_projection())
    serving = {  # in position order: the latest deployment of a name wins
        (row["environment"], row["model_name"]): row
        for row in list_deployments(store, active_only=True)
    }
    found = {}
    for key, row in serving.items():
        event = store.get_event(row["deployment_id"])
        if event is None:
            raise ServingError(
                f"deployment {row['deployment_id']} of the read model is not in the log; "
                "is the read model from another store? Rebuild it (`mlevents project --rebuild "
                "deployments`)"
            )
        found[key] = Deployment(
            model_id=row["model_id"], model_name=row["model_name"], version=int(row["version"]),
            environment=row["environment"], deployed_event=event,
        )
    return found


def current_deployment(
    store: EventStore, environment: str = DEFAULT_ENVIRONMENT, model_name: str | None = None
) -> Deployment | None:
    """The model serving in `environment` (of `model_name`, if given), or None.

    With several model names serving in one environment and no `model_name`, the most
    recently deployed one is returned.
    """
    candidates = [
        deployment
        for (env, name), deployment in deployments(store).items()
        if env == environment and (model_name is None or name == model_name)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: d.deployed_event.position)


@dataclass
class LoadedModel:
    """A deployed model, loaded and ready to predict."""

    deployment: Deployment
    model: Any
    artifact: ArtifactRef
    created: ModelCreated

    @property
    def feature_columns(self) -> list[str] | None:
        """The input columns the model was fitted on, when the estimator records them."""
        names = getattr(self.model, "feature_names_in_", None)
        return None if names is None else [str(name) for name in names]


def load_model(
    store: EventStore, artifacts: ArtifactStore, model_id: str
) -> tuple[Any, ModelCreated]:
    """Load a model by id from the artifact its model_created event names (hash-checked).

    Security: models are pickles; only load them from artifact stores you trust.
    """
    for event in store.read_stream(model_id):
        if event.event_type == EventTypes.MODEL_CREATED:
            created = ModelCreated.model_validate(event.payload)
            return artifacts.get_model(created.artifact), created
    raise ModelNotFoundError(
        f"model {model_id!r} has no model_created event in its stream, so there is no "
        "artifact to load; check the id (see the model catalog) or complete its training run"
    )


def load_deployed_model(
    store: EventStore,
    artifacts: ArtifactStore,
    environment: str = DEFAULT_ENVIRONMENT,
    model_name: str | None = None,
) -> LoadedModel:
    """The model serving in `environment`, loaded from the artifact store."""
    deployment = current_deployment(store, environment, model_name)
    if deployment is None:
        which = f"model {model_name!r}" if model_name else "any model"
        raise NoDeployedModelError(
            f"{which} is not deployed in {environment!r}: no model_deployed event without a "
            "later model_retired. Run the pipeline up to its deployment step first "
            "(e.g. materialize the deployed_model asset in Dagster)"
        )
    model, created = load_model(store, artifacts, deployment.model_id)
    return LoadedModel(deployment, model, created.artifact, created)


@dataclass
class ScoringResult:
    """What `score_batch` did: one prediction per row, plus feedback counts when labelled."""

    model_id: str
    model_name: str
    model_version: int
    predictions: list[Any]
    inference_ids: list[str] = field(default_factory=list)
    feedback: int = 0
    correct: int = 0
    latency_ms: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """Share of correct predictions among the labelled rows, or None without labels."""
        return self.correct / self.feedback if self.feedback else None


def _inputs(frame: pd.DataFrame, loaded: LoadedModel, drop: set[str]) -> pd.DataFrame:
    columns = loaded.feature_columns or [c for c in frame.columns if c not in drop]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoringError(
            f"the batch lacks {len(missing)} column(s) model {loaded.deployment.model_id} "
            f"needs, e.g. {missing[:3]}; give a table with the columns it was trained on"
        )
    inputs = frame[columns]
    if inputs.isna().to_numpy().any():
        raise ScoringError(
            "the batch has missing values in the model's input columns; fill or drop those "
            "rows first"
        )
    return inputs


def score_batch(
    store: EventStore,
    artifacts: ArtifactStore,
    frame: pd.DataFrame,
    *,
    environment: str = DEFAULT_ENVIRONMENT,
    model_name: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    log: bool = True,
    correlation_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> ScoringResult:
    """Score every row of `frame` with the deployed model; log each prediction and its feedback.

    `label_column`: when present in `frame`, each row's true label is logged as
    inference_feedback right after its prediction. `id_column` is kept out of the inputs and
    recorded in each prediction's metadata. `log=False` only predicts. All events of one call
    share `correlation_id` (e.g. the Dagster run id) when it is given.
    """
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise ScoringError("score_batch needs a non-empty pandas DataFrame of rows to score")
    loaded = load_deployed_model(store, artifacts, environment, model_name)
    deployment = loaded.deployment
    labelled = label_column is not None and label_column in frame.columns
    drop = {c for c in (label_column, id_column) if c}
    inputs = _inputs(frame, loaded, drop)

    started = time.perf_counter()
    predictions = np.asarray(loaded.model.predict(inputs))
    probabilities = None
    if hasattr(loaded.model, "predict_proba"):
        probabilities = np.asarray(loaded.model.predict_proba(inputs))
    latency_ms = (time.perf_counter() - started) * 1000.0
    classes = [str(c) for c in getattr(loaded.model, "classes_", [])]

    result = ScoringResult(
        model_id=deployment.model_id,
        model_name=deployment.model_name,
        model_version=deployment.version,
        predictions=[p.item() if isinstance(p, np.generic) else p for p in predictions],
        latency_ms=latency_ms,
    )
    if not log:
        if labelled:
            assert label_column is not None
            actual = frame[label_column].tolist()
            result.feedback = len(actual)
            pairs = zip(result.predictions, actual, strict=True)
            result.correct = sum(1 for predicted, true in pairs if predicted == true)
        return result

    per_row_ms = latency_ms / len(frame)
    for row in range(len(frame)):
        row_metadata: dict[str, Any] = {**(metadata or {}), "row": row}
        if id_column and id_column in frame.columns:
            row_metadata[id_column] = _plain(frame[id_column].iloc[row])
        probs = None
        if probabilities is not None and len(classes) == probabilities.shape[1]:
            probs = {cls: float(p) for cls, p in zip(classes, probabilities[row], strict=True)}
        inference_id = log_prediction(
            store,
            deployment.model_id,
            deployment.version,
            inputs.iloc[row],
            result.predictions[row],
            probabilities=probs,
            latency_ms=per_row_ms,
            correlation_id=correlation_id,
            causation_id=deployment.deployed_event.id,
            metadata=row_metadata,
            clock=clock,
            environment=deployment.environment,
        )
        result.inference_ids.append(inference_id)
        if labelled:
            assert label_column is not None
            feedback = log_feedback(
                store,
                inference_id,
                _plain(frame[label_column].iloc[row]),
                metadata=metadata,
            )
            result.feedback += 1
            result.correct += bool(feedback.payload.get("correct"))
    return result


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
