"""Training runs read back: the stream names, a run folded from its events, and its replay.

Everything here only reads the store; recording lives in service.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from event_sourcing.catalog import (
    EventTypes,
    TrainingCompleted,
    TrainingFailed,
    TrainingStarted,
    TrainingVerified,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.training.errors import TrainingError, TrainingNotFoundError

if TYPE_CHECKING:
    from event_sourcing.stores import EventStore

__all__ = [
    "MODEL_NAME_STREAM_PREFIX",
    "MODEL_NAME_STREAM_TYPE",
    "MODEL_STREAM_TYPE",
    "TRAINING_STREAM_TYPE",
    "TrainingOutcome",
    "load_run",
    "model_name_stream",
    "replay",
    "run_ends",
]

TRAINING_STREAM_TYPE = "training_run"
MODEL_STREAM_TYPE = "model"
MODEL_NAME_STREAM_TYPE = "model_name"
MODEL_NAME_STREAM_PREFIX = "model-name:"
TERMINAL = frozenset(
    {EventTypes.TRAINING_COMPLETED, EventTypes.TRAINING_FAILED, EventTypes.TRAINING_VERIFIED}
)
# Fixed namespace of the deterministic ids the training package derives (model events,
# steps, keyed runs): a retry finds, instead of duplicating, what an earlier attempt wrote.
ID_NAMESPACE = uuid.UUID("6f1d4c1e-8a57-4f6e-9a49-6d6c6576656e")


def derived_id(*parts: str) -> str:
    """A deterministic event or stream id (UUIDv5) from its parts."""
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(parts)))


def model_name_stream(model_name: str) -> str:
    """The stream that holds the model_versioned events of `model_name`."""
    return MODEL_NAME_STREAM_PREFIX + model_name


@dataclass(frozen=True)
class TrainingOutcome:
    """What `TrainingService.train` produced."""

    training_id: str
    model_id: str
    model: Any
    metrics: dict[str, float]
    fingerprint: str


@dataclass
class Run:
    """A training run folded from its stream."""

    training_id: str
    events: list[RecordedEvent]
    started: TrainingStarted
    started_event: RecordedEvent
    steps: list[RecordedEvent] = field(default_factory=list)
    completed: TrainingCompleted | None = None
    completed_event: RecordedEvent | None = None
    failed: TrainingFailed | None = None
    verifications: list[TrainingVerified] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.events[-1].version

    @property
    def correlation_id(self) -> str:
        return self.started_event.correlation_id or self.training_id

    @property
    def status(self) -> str:
        if self.completed is not None:
            return "completed"
        return "failed" if self.failed is not None else "running"


def not_found(training_id: str) -> TrainingNotFoundError:
    return TrainingNotFoundError(
        f"no training run {training_id!r}: its stream has no training_started event. "
        "Check the id (start_training returns it)"
    )


def run_ends(store: EventStore, training_id: str) -> tuple[int, RecordedEvent, RecordedEvent]:
    """(version, last event, first event) of a run, without reading the whole stream."""
    version = store.stream_version(training_id)
    if version == 0:
        raise not_found(training_id)
    first = store.read_stream(training_id, 1, 1)[0]
    if first.event_type != EventTypes.TRAINING_STARTED:
        raise not_found(training_id)
    last = first if version == 1 else store.read_stream(training_id, version, version)[0]
    return version, last, first


def load_run(store: EventStore, training_id: str) -> Run:
    """The run's stream folded into a `Run`; TrainingNotFoundError if there is none."""
    events = store.read_stream(str(training_id))
    if not events or events[0].event_type != EventTypes.TRAINING_STARTED:
        raise not_found(training_id)
    run = Run(
        training_id=str(training_id),
        events=events,
        started=TrainingStarted.model_validate(events[0].payload),
        started_event=events[0],
    )
    for event in events[1:]:
        if event.event_type == EventTypes.TRAINING_PROGRESS:
            run.steps.append(event)
        elif event.event_type == EventTypes.TRAINING_COMPLETED:
            run.completed = TrainingCompleted.model_validate(event.payload)
            run.completed_event = event
        elif event.event_type == EventTypes.TRAINING_FAILED:
            run.failed = TrainingFailed.model_validate(event.payload)
        elif event.event_type == EventTypes.TRAINING_VERIFIED:
            run.verifications.append(TrainingVerified.model_validate(event.payload))
    return run


def replay(store: EventStore, training_id: str) -> dict[str, Any]:
    """The run's state rebuilt from its events alone (see `TrainingService.replay_training`)."""
    run = load_run(store, training_id)
    started = run.started
    return {
        "config": started.config,
        "dataset_id": started.dataset_id,
        "steps": [dict(event.payload) for event in run.steps],
        "final_metrics": run.completed.final_metrics if run.completed else None,
        "training_id": training_id,
        "status": run.status,
        "dataset_version": started.dataset_version,
        "dataset_uri": started.dataset_uri,
        "feature_version": started.feature_version,
        "hyperparameters": started.hyperparameters,
        "seed": started.seed,
        "training_function": started.training_function,
        "code_version": (
            started.code_version.model_dump(mode="json") if started.code_version else None
        ),
        "environment": (
            started.environment.model_dump(mode="json") if started.environment else None
        ),
        "model_id": run.completed.model_id if run.completed else None,
        "model_name": run.completed.model_name if run.completed else started.model_name,
        "model_fingerprint": run.completed.model_fingerprint if run.completed else None,
        "error": run.failed.error if run.failed else None,
        "verifications": [v.model_dump(mode="json") for v in run.verifications],
    }


# -- value helpers shared by recording and verification ----------------------------------------


def optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def check_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`metrics` as name -> finite float; TrainingError names the first bad one."""
    if not isinstance(metrics, Mapping):
        raise TrainingError(f"metrics must be a mapping of name -> number, got {metrics!r}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TrainingError(
                f"metric {key!r} is {value!r}, not a number; metrics map names to numbers"
            ) from None
        if not np.isfinite(number):
            raise TrainingError(
                f"metric {key!r} is {number}; JSON has no NaN/inf, so record it as a "
                "finite number or leave it out"
            )
        out[str(key)] = number
    return out
