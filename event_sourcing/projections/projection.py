"""What a projection is and how its events are applied: the Projection definition, typed
handlers, and applying a page at once with a savepoint per event when the page fails.
"""

from __future__ import annotations

import traceback as traceback_module
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from event_sourcing.catalog import DomainEvent, EventRegistry
from event_sourcing.errors import EventStoreError
from event_sourcing.events import RecordedEvent
from event_sourcing.stores.identifiers import check_table_name, quote
from event_sourcing.stores.recorder import SqlTransaction

__all__ = [
    "ApplyOutcome",
    "BatchHandler",
    "DeadLetter",
    "Handler",
    "Projection",
    "ProjectionError",
    "ReadModelMissingError",
    "apply_event",
    "apply_page",
    "insert_rows",
    "iso",
    "on",
    "table_exists",
]

Handler = Callable[[SqlTransaction, RecordedEvent, DomainEvent | None], None]
"""A projection handler: (transaction, recorded envelope, typed upcast event or None)."""
BatchHandler = Callable[[SqlTransaction, Sequence[tuple[RecordedEvent, DomainEvent | None]]], None]
"""A projection's handler of a page of events at once."""
E = TypeVar("E", bound=DomainEvent)



class ProjectionError(EventStoreError):
    """A projection is unknown, misdefined, or its read model cannot be used."""


class ReadModelMissingError(ProjectionError, LookupError):
    """A read-model table does not exist yet: the projection has never run on this store."""


def iso(value: datetime | None) -> str | None:
    """Fixed-width ISO 8601 UTC text: sorts as time on every backend, parses back with
    datetime.fromisoformat."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")  # years padded to 4


# Parameters per statement: psycopg parses a statement of up to 50 once (and caches it), and
# executemany pipelines its executions on PostgreSQL; SQLite takes them as they come.
_STATEMENT_PARAMETERS = 48


def insert_rows(
    tx: SqlTransaction, into: str, rows: Sequence[Sequence[Any]], conflict: str = ""
) -> None:
    """`INSERT INTO {into} VALUES (...), (...) {conflict}` of `rows`, several rows per
    statement and the statements sent at once (executemany), so the database executes a
    few statements instead of one per row. `into` is the table and its columns, e.g.
    ``"edges (source, target)"``; `conflict` an ON CONFLICT clause. Rows must not conflict
    with each other under DO UPDATE."""
    if not rows:
        return
    width = len(rows[0])
    mark = "(" + ", ".join("?" * width) + ")"
    per_statement = max(1, _STATEMENT_PARAMETERS // width)

    def statement(count: int) -> str:
        return f"INSERT INTO {into} VALUES {', '.join([mark] * count)} {conflict}"

    def values(chunk: Sequence[Sequence[Any]]) -> list[Any]:
        return [value for row in chunk for value in row]

    whole = len(rows) - len(rows) % per_statement
    if whole:
        tx.executemany(
            statement(per_statement),
            [values(rows[at : at + per_statement]) for at in range(0, whole, per_statement)],
        )
    if whole < len(rows):
        tx.execute(statement(len(rows) - whole), values(rows[whole:]))


def table_exists(tx: SqlTransaction, table: str) -> bool:
    """Whether `table` exists where unqualified names resolve (store schema on PostgreSQL)."""
    return tx.table_exists(table)


def on(
    model: type[E], handler: Callable[[SqlTransaction, RecordedEvent, E], None]
) -> tuple[str, Handler]:
    """`(event type, handler)` for a handler of one typed event: it receives `model`'s
    instance, already parsed and upcast; an event that did not parse as `model` (its type
    is not registered so in the store's registry) fails visibly instead."""

    def typed_handler(tx: SqlTransaction, event: RecordedEvent, typed: DomainEvent | None) -> None:
        if not isinstance(typed, model):
            raise ProjectionError(
                f"event {event.id} ({event.event_type}) did not parse as {model.__name__}; "
                "is the event type registered in the store's registry?"
            )
        handler(tx, event, typed)

    return model.event_type, typed_handler


@dataclass(frozen=True)
class Projection:
    """A named read model: DDL to create it, the tables to drop, handlers by event type.

    `version` is recorded with the checkpoint; when it changes the runner rebuilds the read
    model from position 0 (bump it whenever handler logic or tables change). DDL must be
    portable (SQLite and PostgreSQL): TEXT for JSON and ISO-8601 times, `?` placeholders.
    Subclass and override `setup`/`drop` for anything DDL statements cannot express.
    """

    name: str
    handlers: Mapping[str, Handler]
    ddl: Sequence[str] = ()
    tables: Sequence[str] = ()
    version: int | str = 1
    description: str = ""
    batch: BatchHandler | None = None
    """Applies a whole page of (event, typed event) pairs at once (e.g. folding it in memory
    and writing each row once); it must do what the handlers do one event at a time, which
    the runner falls back to, with a savepoint per event, when the page fails."""
    superseded: Mapping[str, Callable[[RecordedEvent], Hashable]] = field(default_factory=dict)
    """Event types whose effect a later event of the same type and key (key function of the
    envelope) overwrites entirely: within a batch only the last of them is applied, so a
    catch-up writes each such row once per batch (e.g. training progress, by run)."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ProjectionError(
                f"projection name {self.name!r} must be letters, digits and underscores"
            )
        if not self.handlers:
            raise ProjectionError(f"projection {self.name!r} has no handlers")
        if isinstance(self.tables, str):
            raise ProjectionError(
                f"projection {self.name!r}: tables must be a list of names, not one string"
            )
        for table in self.tables:
            check_table_name(table, f"projection {self.name!r}: table name", ProjectionError)

    @property
    def event_types(self) -> list[str]:
        return sorted(self.handlers)

    def setup(self, tx: SqlTransaction) -> None:
        """Create the read model's tables (idempotent)."""
        for statement in self.ddl:
            tx.execute(statement)

    def drop(self, tx: SqlTransaction) -> None:
        """Drop the read model's tables."""
        for table in self.tables:
            tx.execute(f"DROP TABLE IF EXISTS {quote(table)}")


@dataclass(frozen=True)
class DeadLetter:
    """An event a projection's handler kept failing on, parked so the projection moved on."""

    projection: str
    event_id: str
    position: int
    event_type: str
    error: str
    traceback: str
    attempts: int
    parked_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ApplyOutcome:
    """How applying one event went: `error` is None on success."""

    error: BaseException | None = None
    attempts: int = 0
    trace: str = ""


def _parse(registry: EventRegistry, event: RecordedEvent) -> DomainEvent | None:
    return registry.parse(event) if registry.is_registered(event.event_type) else None


def _latest(projection: Projection, events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
    """`events` without those a later event of the batch supersedes."""
    if not projection.superseded:
        return list(events)
    seen: set[tuple[str, Hashable]] = set()
    kept: list[RecordedEvent] = []
    for event in reversed(events):
        key_of = projection.superseded.get(event.event_type)
        if key_of is not None:
            key = (event.event_type, key_of(event))
            if key in seen:
                continue
            seen.add(key)
        kept.append(event)
    kept.reverse()
    return kept


def apply_page(
    tx: SqlTransaction,
    projection: Projection,
    events: Sequence[RecordedEvent],
    registry: EventRegistry,
    max_attempts: int,
) -> list[tuple[RecordedEvent, ApplyOutcome]]:
    """Apply a page of events in one go (one savepoint for the whole page); if any fails,
    undo the page and apply it event by event (`apply_event`), so only the bad events fail.
    Returns the failed events with their outcomes (to park)."""
    events = _latest(projection, events)
    handlers = projection.handlers
    tx.execute("SAVEPOINT projection_page")
    try:
        if projection.batch is not None:
            projection.batch(
                tx, [(e, _parse(registry, e)) for e in events if e.event_type in handlers]
            )
        else:
            for event in events:
                handler = handlers.get(event.event_type)
                if handler is not None:
                    handler(tx, event, _parse(registry, event))
    except Exception:  # some event of the page failed: find it, one savepoint per event
        tx.execute("ROLLBACK TO SAVEPOINT projection_page")
        tx.execute("RELEASE SAVEPOINT projection_page")
        failed = []
        for event in events:
            outcome = apply_event(tx, projection, event, registry, max_attempts)
            if outcome.error is not None:
                failed.append((event, outcome))
        return failed
    tx.execute("RELEASE SAVEPOINT projection_page")
    return []


def apply_event(
    tx: SqlTransaction,
    projection: Projection,
    event: RecordedEvent,
    registry: EventRegistry,
    max_attempts: int,
) -> ApplyOutcome:
    """Run the handler of `event` inside a SAVEPOINT, up to `max_attempts` times.

    Each failed attempt is rolled back to the savepoint, so a handler's partial writes never
    survive. Returns the last error (None on success) with the attempt count.
    """
    handler = projection.handlers.get(event.event_type)
    outcome = ApplyOutcome()
    if handler is None:
        return outcome
    for attempt in range(1, max_attempts + 1):
        outcome.attempts = attempt
        tx.execute("SAVEPOINT projection_event")
        try:
            handler(tx, event, _parse(registry, event))
        except Exception as exc:  # a handler bug or bad event: retry, then park
            tx.execute("ROLLBACK TO SAVEPOINT projection_event")
            tx.execute("RELEASE SAVEPOINT projection_event")
            outcome.error = exc
            outcome.trace = "".join(traceback_module.format_exception(exc))
            continue
        tx.execute("RELEASE SAVEPOINT projection_event")
        outcome.error = None
        return outcome
    return outcome
