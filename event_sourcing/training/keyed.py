"""Keyed training runs: what a retried step resumes, closes or reuses instead of starting anew.

Runs of one idempotency key are numbered (ids derive from key and number); failed ones are history.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import TrainingStarted
from event_sourcing.errors import ConcurrencyError
from event_sourcing.training.errors import TrainingError
from event_sourcing.training.runs import TRAINING_STREAM_TYPE, Run, derived_id, load_run
from event_sourcing.training.versioning import APPEND_ATTEMPTS

if TYPE_CHECKING:
    from event_sourcing.stores import EventStore
    from event_sourcing.training.service import TrainingService

__all__ = ["keyed_run", "start_keyed"]


def _keyed_runs(store: EventStore, key: str) -> Iterator[tuple[str, Run | None]]:
    """(id, run) of each run of `key` in order, then (the next free id, None)."""
    for attempt in itertools.count(1):
        training_id = derived_id("training", key, str(attempt))
        if store.stream_version(training_id) == 0:
            yield training_id, None
            return
        yield training_id, load_run(store, training_id)


def keyed_run(store: EventStore, key: str) -> str | None:
    """The open or completed run of `key`, or None (see `TrainingService.keyed_run`)."""
    for training_id, run in _keyed_runs(store, key):
        if run is None:
            return None
        if run.status != "failed":
            return training_id
    raise AssertionError("unreachable")


def same_inputs(recorded: TrainingStarted, new: TrainingStarted) -> bool:
    """True if two training_started record the same run (all but times and environment)."""
    ignored = {"started_at", "environment", "code_version"}
    same_code = (recorded.code_version and recorded.code_version.source_sha256) == (
        new.code_version and new.code_version.source_sha256
    )
    return same_code and recorded.model_dump(exclude=ignored) == new.model_dump(exclude=ignored)


def start_keyed(
    service: TrainingService,
    key: str,
    event: TrainingStarted,
    correlation_id: str | None,
    metadata: Mapping[str, Any] | None,
) -> str:
    """Resume the open run of `key` if its inputs are `event`'s (or return its completed
    run); else close an open one with training_failed and start the next. Returns its id."""
    store = service.store
    for _attempt in range(APPEND_ATTEMPTS):
        for training_id, run in _keyed_runs(store, key):
            if run is None:
                break
            if run.status == "failed":
                continue
            if run.status == "completed" or same_inputs(run.started, event):
                return training_id  # resumed: the retry carries on where it stopped
            service.fail_training(
                training_id,
                "superseded: a retry under the same idempotency key started with other "
                "inputs (config, dataset, hyper-parameters, seed or code)",
                metadata=metadata,
            )
        try:
            store.append(
                training_id,
                [event],
                expected_version=0,
                stream_type=TRAINING_STREAM_TYPE,
                correlation_id=correlation_id or training_id,
                metadata=metadata,
            )
            return training_id
        except ConcurrencyError:
            continue  # another attempt of the same key started it meanwhile: look again
    raise TrainingError(
        f"training runs of idempotency key {key!r} kept changing while starting one; retry"
    )
