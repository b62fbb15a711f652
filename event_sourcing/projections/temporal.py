"""Temporal queries: any projection evaluated as of a time or a position, into memory.

As of a time T is by business time (occurred_at): the events whose facts occurred at or
before T, applied in business-time order; `known_at=K` adds the record-time bound (what
the log held at K), which makes it bitemporal. As of a position is by record order.
The live read models are never touched; the same handlers run against an in-memory SQLite.
See docs/temporal.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from event_sourcing.catalog import DEFAULT_ENVIRONMENT
from event_sourcing.errors import EventValidationError
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.read_models import (
    builtin_projections,
    current_deployment,
    get_training_summary,
    list_models,
)
from event_sourcing.projections.runner import (
    DEFAULT_MAX_ATTEMPTS,
    DeadLetter,
    Projection,
    ProjectionError,
    apply_page,
    iso,
)
from event_sourcing.stores import connect
from event_sourcing.stores.store import EventStore

__all__ = [
    "ReadModelSnapshot",
    "as_of",
    "deployed_model_at",
    "model_catalog_at",
    "training_summary_at",
]


_PAGE = 200  # events read per query, applied per savepoint


class ReadModelSnapshot:
    """A projection's read model as it was at `at`, held in an in-memory SQLite database.

    `position` is the highest global position the snapshot includes; `dead_letters` lists
    events its handlers could not apply (nothing is skipped silently). Close it when done.
    """

    def __init__(
        self,
        projection: Projection,
        at: datetime | int,
        memory: EventStore,
        position: int,
        applied: int,
        dead_letters: list[DeadLetter],
        known_at: datetime | None = None,
    ) -> None:
        self.projection = projection
        self.at = at
        self.known_at = known_at
        self.position = position
        self.applied = applied
        self.dead_letters = dead_letters
        self._memory = memory

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of `sql` (SQLite dialect, `?` placeholders) as dicts."""
        with self._memory.transaction() as tx:
            cursor = tx.execute(sql, params)
            columns = [d[0] for d in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        self._memory.close()

    def __enter__(self) -> ReadModelSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name, at, known = self.projection.name, self.at, self.known_at
        known_text = "" if known is None else f", known_at={known!r}"
        return f"ReadModelSnapshot({name!r}, at={at!r}{known_text}, position={self.position})"


def _projection(projection: Projection | str) -> Projection:
    if isinstance(projection, Projection):
        return projection
    for candidate in builtin_projections():
        if candidate.name == projection:
            return candidate
    names = ", ".join(p.name for p in builtin_projections())
    raise ProjectionError(f"no built-in projection named {projection!r}; known: {names}")


def _events(
    store: EventStore, projection: Projection, at: datetime | int, known_at: datetime | None
) -> Iterator[RecordedEvent]:
    types = projection.event_types
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise EventValidationError(
                f"as-of time {at!r} is naive; give a timezone-aware time (UTC)"
            )
        return store.read_as_of(at, known_at, types)
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise EventValidationError(
            f"as-of must be a timezone-aware datetime or a position >= 0, got {at!r}"
        )
    if known_at is not None:
        raise EventValidationError(
            "known_at goes with an as-of time, not a position: a position already says "
            "what had been recorded"
        )
    return _up_to(store, types, at)


def _up_to(store: EventStore, types: list[str], at: int) -> Iterator[RecordedEvent]:
    """The events of `types` at or below position `at`, read in short pages so that what
    lies beyond `at` is never read (the cost is that of the events before it)."""
    after, size = 0, 16  # pages grow from 16 events: the first ones cost what `at` holds
    while True:
        page = list(store.read_all(after=after, event_types=types, limit=size))
        yield from itertools.takewhile(lambda e: e.position <= at, page)
        if len(page) < size or page[-1].position >= at:
            return
        after, size = page[-1].position, min(size * 2, _PAGE)


def as_of(
    store: EventStore,
    projection: Projection | str,
    at: datetime | int,
    *,
    known_at: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> ReadModelSnapshot:
    """Evaluate `projection` (or a built-in one by name) over the events up to `at`: those
    that occurred at or before a datetime (business time, applied in occurred_at order),
    or recorded at or below a global position. `known_at` (with a datetime `at`): only
    the events recorded at or before it, i.e. what the log said about `at` back then."""
    projection = _projection(projection)
    memory = connect("sqlite:///:memory:", registry=store.registry, validate=False)
    position, applied = 0, 0
    parked: list[DeadLetter] = []
    try:
        with memory.transaction() as tx:
            projection.setup(tx)
            events = _events(store, projection, at, known_at)
            while page := list(itertools.islice(events, _PAGE)):
                failed = apply_page(tx, projection, page, store.registry, max_attempts)
                position = max(position, *(event.position for event in page))
                applied += len(page) - len(failed)
                parked.extend(
                    DeadLetter(
                        projection.name, event.id, event.position, event.event_type,
                        f"{type(outcome.error).__name__}: {outcome.error}", outcome.trace,
                        outcome.attempts, iso(store.clock()) or "",
                    )
                    for event, outcome in failed
                )
    except BaseException:
        memory.close()
        raise
    if isinstance(at, int):
        position = at
    return ReadModelSnapshot(projection, at, memory, position, applied, parked, known_at)


def deployed_model_at(
    store: EventStore,
    model_name: str,
    at: datetime | int,
    environment: str = DEFAULT_ENVIRONMENT,
    *,
    known_at: datetime | None = None,
) -> dict[str, Any] | None:
    """The deployment of `model_name` that served in `environment` at `at` (None if none),
    as the log recorded it by `known_at` (None: now)."""
    with as_of(store, "deployments", at, known_at=known_at) as snapshot:
        return current_deployment(snapshot, model_name, environment)


def model_catalog_at(
    store: EventStore, at: datetime | int, *, known_at: datetime | None = None
) -> list[dict[str, Any]]:
    """The model catalog as it was at `at` (as known at `known_at`)."""
    with as_of(store, "model_catalog", at, known_at=known_at) as snapshot:
        return list_models(snapshot)


def training_summary_at(
    store: EventStore, training_id: str, at: datetime | int, *, known_at: datetime | None = None
) -> dict[str, Any] | None:
    """A training run's summary as it was at `at`, as known at `known_at` (None if it had
    not started)."""
    with as_of(store, "training_summaries", at, known_at=known_at) as snapshot:
        return get_training_summary(snapshot, training_id)
