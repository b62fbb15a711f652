"""Inference logging: one stream per prediction (requested, completed, then any feedback).

Feeds the inference_quality read model and `explain`; owns streams of type ``inference``.

A prediction's stream id is its inference id. inference_requested and inference_completed
are appended in one atomic batch and share a correlation id (the inference id unless one is
given); inference_feedback goes on the same stream, caused by the inference_completed event
(the prediction being judged) and carrying the same correlation id.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd

from event_sourcing.artifacts import URI_PREFIX, ArtifactError, parse_artifact_id
from event_sourcing.catalog import (
    ArtifactRef,
    EventTypes,
    InferenceCompleted,
    InferenceFeedback,
    InferenceRequested,
)
from event_sourcing.errors import EventValidationError
from event_sourcing.events import RecordedEvent
from event_sourcing.training.errors import InferenceNotFoundError

if TYPE_CHECKING:
    from event_sourcing.stores import EventStore

__all__ = ["INFERENCE_STREAM_TYPE", "log_feedback", "log_prediction", "to_json_value"]

INFERENCE_STREAM_TYPE = "inference"

Inputs: TypeAlias = Mapping[str, Any] | pd.Series | ArtifactRef | str | Sequence[Any] | np.ndarray


def to_json_value(value: Any) -> Any:
    """`value` with NumPy/pandas scalars and arrays turned into plain JSON values."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventValidationError(f"{value} has no JSON form; record a missing value as None")
        return value
    if isinstance(value, np.generic):
        return to_json_value(value.item())
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist())
    if isinstance(value, pd.Series):
        return to_json_value(value.to_dict())
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    raise EventValidationError(
        f"cannot record a {type(value).__name__} in an inference event; use plain JSON "
        "values, or store large inputs with ArtifactStore and pass the ArtifactRef"
    )


def _inputs(inputs_or_ref: Inputs) -> tuple[dict[str, Any] | None, ArtifactRef | None]:
    if isinstance(inputs_or_ref, ArtifactRef):
        return None, inputs_or_ref
    if isinstance(inputs_or_ref, str):
        if not inputs_or_ref.startswith(URI_PREFIX):
            raise EventValidationError(
                f"inputs {inputs_or_ref!r} is a string but not an '{URI_PREFIX}<hex>' URI; "
                "pass features as a mapping or an ArtifactRef"
            )
        try:
            digest = parse_artifact_id(inputs_or_ref)
        except ArtifactError as exc:
            raise EventValidationError(str(exc)) from None
        return None, ArtifactRef(uri=URI_PREFIX + digest, sha256=digest)
    if isinstance(inputs_or_ref, Mapping | pd.Series):
        return to_json_value(inputs_or_ref), None
    if isinstance(inputs_or_ref, np.ndarray | list | tuple):
        return {"features": to_json_value(inputs_or_ref)}, None
    raise EventValidationError(
        f"inputs must be a mapping of features, a pandas Series, a list/array of feature "
        f"values or an ArtifactRef, got {type(inputs_or_ref).__name__}"
    )


def log_prediction(
    store: EventStore,
    model_id: str,
    version: int,
    inputs_or_ref: Inputs,
    prediction: Any,
    *,
    probabilities: Mapping[Any, Any] | None = None,
    latency_ms: float | None = None,
    inference_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] | None = None,
    environment: str | None = None,
) -> str:
    """Record that model `model_id` at `version` predicted `prediction`; return the inference id.

    `inputs_or_ref`: small feature values inline (mapping, Series, list/array), or an
    ArtifactRef / artifact URI for large inputs. `probabilities`: class label -> probability.
    `environment`: the deployment environment that served the request (e.g. ``production``),
    recorded on inference_requested so `explain` can name the deployment; None when the model
    was called outside any deployment.
    Both events are written atomically; re-using an `inference_id` raises ConcurrencyError.
    """
    inputs, inputs_ref = _inputs(inputs_or_ref)
    now = (clock or getattr(store, "clock", None) or (lambda: datetime.now(UTC)))()
    inference_id = str(inference_id or uuid.uuid4())
    requested = InferenceRequested(
        model_id=model_id,
        model_version=version,
        inputs=inputs,
        inputs_ref=inputs_ref,
        requested_at=now,
        environment=environment,
    )
    completed = InferenceCompleted(
        model_id=model_id,
        model_version=version,
        prediction=to_json_value(prediction),
        probabilities=(
            {str(to_json_value(k)): float(v) for k, v in probabilities.items()}
            if probabilities is not None
            else None
        ),
        latency_ms=latency_ms,
    )
    store.append(
        inference_id,
        [requested, completed],
        expected_version=0,
        stream_type=INFERENCE_STREAM_TYPE,
        correlation_id=correlation_id or inference_id,
        causation_id=causation_id,
        metadata=metadata,
    )
    return inference_id


def _is_label(value: Any) -> bool:
    if isinstance(value, bool | int | str):
        return True
    return isinstance(value, float) and value.is_integer()


def log_feedback(
    store: EventStore,
    inference_id: str,
    actual: Any,
    *,
    correct: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RecordedEvent:
    """Record the true outcome of a logged prediction; return the inference_feedback event.

    `correct` defaults to ``prediction == actual`` when both are labels (bool, int, str or
    integral floats); for continuous predictions it stays None (judge them by error).
    """
    events = store.read_stream(str(inference_id))
    completed_event = next(
        (e for e in events if e.event_type == EventTypes.INFERENCE_COMPLETED), None
    )
    if completed_event is None:
        raise InferenceNotFoundError(
            f"no logged prediction {inference_id!r}: its stream has no inference_completed "
            "event. Use the id log_prediction returned"
        )
    completed = InferenceCompleted.model_validate(completed_event.payload)
    actual_value = to_json_value(actual)
    if correct is None and _is_label(completed.prediction) and _is_label(actual_value):
        correct = completed.prediction == actual_value
    feedback = InferenceFeedback(
        inference_id=str(inference_id),
        model_id=completed.model_id,
        model_version=completed.model_version,
        actual=actual_value,
        correct=correct,
    )
    return store.append(
        str(inference_id),
        [feedback],
        stream_type=INFERENCE_STREAM_TYPE,
        correlation_id=completed_event.correlation_id or str(inference_id),
        causation_id=completed_event.id,
        metadata=metadata,
    )[0]
