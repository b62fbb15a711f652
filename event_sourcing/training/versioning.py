"""Model registration: model_created and a gap-free model_versioned for a completed run.

Version n of a model name is the n-th event of its `model-name:` stream; ids are derived from
the model id, so registering the same model again finds what an earlier attempt wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import ModelCreated, ModelVersioned, TrainingCompleted
from event_sourcing.errors import ConcurrencyError
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.training.errors import TrainingError
from event_sourcing.training.runs import (
    MODEL_NAME_STREAM_TYPE,
    MODEL_STREAM_TYPE,
    Run,
    derived_id,
    model_name_stream,
)

if TYPE_CHECKING:
    from event_sourcing.stores import EventStore

APPEND_ATTEMPTS = 5


def model_event_ids(model_id: str) -> tuple[str, str]:
    """The ids of a model's model_created and model_versioned events."""
    return derived_id(model_id, "model_created"), derived_id(model_id, "model_versioned")


def model_registered(store: EventStore, model_id: str) -> bool:
    """True once both model events of `model_id` are recorded."""
    created_id, versioned_id = model_event_ids(model_id)
    return store.get_event(created_id) is not None and store.get_event(versioned_id) is not None


def register_model(
    store: EventStore,
    completed_event: RecordedEvent,
    run: Run,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Append model_created and model_versioned for a training_completed (idempotent)."""
    completed = TrainingCompleted.model_validate(completed_event.payload)
    name = completed.model_name or "model"
    created_id, versioned_id = model_event_ids(completed.model_id)
    created = ModelCreated(
        model_id=completed.model_id,
        training_id=run.training_id,
        model_name=name,
        artifact=completed.model_artifact,
        metrics=completed.final_metrics,
        fingerprint=completed.model_fingerprint,
    )
    # Deterministic ids make the append a no-op when an earlier attempt got this far.
    created_event = store.append(
        completed.model_id,
        [NewEvent.of(created, id=created_id)],
        stream_type=MODEL_STREAM_TYPE,
        correlation_id=run.correlation_id,
        causation_id=completed_event.id,
        metadata=metadata,
        on_duplicate="return_existing",
    )[0]
    stream = model_name_stream(name)
    for _attempt in range(APPEND_ATTEMPTS):
        if store.get_event(versioned_id) is not None:
            return
        current = store.stream_version(stream)
        versioned = ModelVersioned(
            model_id=completed.model_id,
            model_name=name,
            version=current + 1,
            training_id=run.training_id,
            artifact=completed.model_artifact,
            metrics=completed.final_metrics,
        )
        try:
            store.append(
                stream,
                [NewEvent.of(versioned, id=versioned_id)],
                expected_version=current,
                stream_type=MODEL_NAME_STREAM_TYPE,
                correlation_id=run.correlation_id,
                causation_id=created_event.id,
                metadata=metadata,
                on_duplicate="return_existing",
            )
            return
        except ConcurrencyError:
            continue  # another run took that version number; take the next one
    raise TrainingError(
        f"could not allocate a version of model {name!r} after {APPEND_ATTEMPTS} "
        f"attempts (heavy contention); call complete_training({run.training_id!r}, ...) "
        "again to finish registering the model"
    )
