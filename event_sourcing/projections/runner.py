"""Projections and their runner: checkpoints, exactly-once batches, dead letters, rebuild, lag.

A projection's read-model writes and its checkpoint commit in one transaction per batch.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback as traceback_module
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from event_sourcing.catalog import DomainEvent, EventRegistry
from event_sourcing.errors import EventStoreError
from event_sourcing.events import RecordedEvent
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = [
    "ApplyOutcome",
    "DeadLetter",
    "Handler",
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "ProjectionStatus",
    "ReadModelMissingError",
    "RunStats",
    "apply_event",
    "iso",
    "table_exists",
]

log = logging.getLogger("event_sourcing.projections")

Handler = Callable[[SqlTransaction, RecordedEvent, DomainEvent | None], None]
"""A projection handler: (transaction, recorded envelope, typed upcast event or None)."""

DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_ATTEMPTS = 3
_SETUP_LOCK = 0x6D6C7072  # advisory lock key ("mlpr"): serializes concurrent DDL on PostgreSQL

_RUNNER_DDL = (
    """CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name       TEXT PRIMARY KEY,
        position   BIGINT NOT NULL,
        version    TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS projection_dead_letters (
        projection TEXT NOT NULL,
        event_id   TEXT NOT NULL,
        position   BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        error      TEXT NOT NULL,
        traceback  TEXT NOT NULL,
        attempts   INTEGER NOT NULL,
        parked_at  TEXT NOT NULL,
        PRIMARY KEY (projection, event_id)
    )""",
)


class ProjectionError(EventStoreError):
    """A projection is unknown, misdefined, or its read model cannot be used."""


class ReadModelMissingError(ProjectionError, LookupError):
    """A read-model table does not exist yet: the projection has never run on this store."""


def iso(value: datetime | None) -> str | None:
    """Fixed-width ISO 8601 UTC text: sorts as time on every backend, parses back with
    datetime.fromisoformat."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def table_exists(tx: SqlTransaction, table: str) -> bool:
    """Whether `table` exists where unqualified names resolve (store schema on PostgreSQL)."""
    if tx.dialect == "postgresql":
        row = tx.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()
    else:
        row = tx.execute(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
    return bool(row and row[0])


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

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ProjectionError(
                f"projection name {self.name!r} must be letters, digits and underscores"
            )
        if not self.handlers:
            raise ProjectionError(f"projection {self.name!r} has no handlers")

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
            tx.execute(f"DROP TABLE IF EXISTS {table}")


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
class RunStats:
    """What a run (or retry) did for one projection. Every event read is counted once:
    `read` = `applied` + `parked` (+ `failed` for retries)."""

    projection: str
    read: int = 0
    applied: int = 0
    parked: int = 0
    retried: int = 0
    failed: int = 0
    batches: int = 0
    checkpoint: int = 0
    rebuilt: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    version: str
    checkpoint: int
    head: int
    lag: int
    dead_letters: int
    updated_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ApplyOutcome:
    """How applying one event went: `error` is None on success."""

    error: BaseException | None = None
    attempts: int = 0
    trace: str = ""


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
            typed = registry.parse(event) if registry.is_registered(event.event_type) else None
            handler(tx, event, typed)
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


class ProjectionRunner:
    """Catches projections up with the log of `store`, writing read models beside it.

    Batches are exactly-once: a batch's read-model writes, its dead letters and its
    checkpoint commit in one `store.transaction()`. Safe to run the same projection from
    several processes: they serialize on the checkpoint row.
    """

    def __init__(
        self,
        store: EventStore,
        projections: Iterable[Projection],
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if max_attempts < 1:
            raise ProjectionError(f"max_attempts must be >= 1, got {max_attempts}")
        self.store = store
        self.max_attempts = max_attempts
        self.projections: dict[str, Projection] = {}
        for projection in projections:
            if projection.name in self.projections:
                raise ProjectionError(f"two projections are named {projection.name!r}")
            self.projections[projection.name] = projection
        self._ready: set[str] = set()

    # -- selection & setup ----------------------------------------------------------------
    def get(self, name: str) -> Projection:
        try:
            return self.projections[name]
        except KeyError:
            raise ProjectionError(
                f"no projection named {name!r}; known: {', '.join(sorted(self.projections))}"
            ) from None

    def _selected(self, name: str | None) -> list[Projection]:
        return list(self.projections.values()) if name is None else [self.get(name)]

    def _now(self) -> str:
        return iso(self.store.clock()) or ""

    def _lock_ddl(self, tx: SqlTransaction) -> None:
        if tx.dialect == "postgresql":  # CREATE TABLE IF NOT EXISTS races between sessions
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_SETUP_LOCK,))
        for statement in _RUNNER_DDL:
            tx.execute(statement)

    def _reset(self, tx: SqlTransaction, projection: Projection) -> None:
        projection.drop(tx)
        projection.setup(tx)
        tx.execute("DELETE FROM projection_dead_letters WHERE projection = ?", (projection.name,))
        tx.execute(
            "INSERT INTO projection_checkpoints (name, position, version, updated_at) "
            "VALUES (?, 0, ?, ?) ON CONFLICT (name) DO UPDATE SET position = 0, "
            "version = excluded.version, updated_at = excluded.updated_at",
            (projection.name, str(projection.version), self._now()),
        )

    def _ensure(self, projection: Projection) -> bool:
        """Create tables and the checkpoint row; rebuild if the version changed. True if reset."""
        if projection.name in self._ready:
            return False
        reset = False
        with self.store.transaction() as tx:
            self._lock_ddl(tx)
            row = tx.execute(
                "SELECT version FROM projection_checkpoints WHERE name = ?", (projection.name,)
            ).fetchone()
            if row is None or row[0] != str(projection.version):
                if row is not None:
                    log.warning(
                        "projection %s: version %s -> %s, rebuilding from position 0",
                        projection.name, row[0], projection.version,
                    )
                self._reset(tx, projection)
                reset = row is not None
            else:
                projection.setup(tx)
        self._ready.add(projection.name)
        return reset

    # -- catching up ----------------------------------------------------------------------
    def run(
        self,
        name: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[RunStats], None] | None = None,
    ) -> dict[str, RunStats]:
        """Catch up every projection (or `name`) with the log; return stats by name.
        `progress` is called with the running stats after each batch."""
        if batch_size < 1:
            raise ProjectionError(f"batch_size must be >= 1, got {batch_size}")
        results = {}
        for projection in self._selected(name):
            stats = RunStats(projection.name, rebuilt=self._ensure(projection))
            while self._batch(projection, batch_size, stats):
                if progress is not None:
                    progress(stats)
            if progress is not None:
                progress(stats)
            results[projection.name] = stats
        return results

    def _batch(self, projection: Projection, batch_size: int, stats: RunStats) -> bool:
        """Apply one batch in one transaction; True if a full batch was read (more may wait)."""
        # Every position up to this head is visible now (positions become visible in order),
        # so once a filtered read comes back short, the checkpoint may move up to it.
        head = self.store.head_position()
        registry = self.store.registry
        with self.store.transaction() as tx:
            lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
            row = tx.execute(
                f"SELECT position FROM projection_checkpoints WHERE name = ?{lock}",
                (projection.name,),
            ).fetchone()
            if row is None:
                raise ProjectionError(
                    f"projection {projection.name!r} lost its checkpoint row (rebuilt or dropped "
                    "by another process?); run it again"
                )
            checkpoint = int(row[0])
            events = list(
                self.store.read_all(
                    after=checkpoint, event_types=projection.event_types, limit=batch_size
                )
            )
            parked = 0
            for event in events:
                outcome = apply_event(tx, projection, event, registry, self.max_attempts)
                if outcome.error is not None:
                    self._park(tx, projection, event, outcome)
                    parked += 1
            full = len(events) == batch_size
            last = events[-1].position if events else checkpoint
            position = last if full else max(last, head, checkpoint)
            if position != checkpoint:
                tx.execute(
                    "UPDATE projection_checkpoints SET position = ?, updated_at = ? "
                    "WHERE name = ?",
                    (position, self._now(), projection.name),
                )
        stats.read += len(events)
        stats.applied += len(events) - parked
        stats.parked += parked
        stats.batches += 1
        stats.checkpoint = position
        return full

    def _park(
        self,
        tx: SqlTransaction,
        projection: Projection,
        event: RecordedEvent,
        outcome: ApplyOutcome,
    ) -> None:
        log.error(
            "projection %s: parked event %s (%s at position %d) after %d attempt(s): %s",
            projection.name, event.id, event.event_type, event.position, outcome.attempts,
            outcome.error,
        )
        tx.execute(
            "INSERT INTO projection_dead_letters (projection, event_id, position, event_type, "
            "error, traceback, attempts, parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (projection, event_id) DO UPDATE SET error = excluded.error, "
            "traceback = excluded.traceback, "
            "attempts = projection_dead_letters.attempts + excluded.attempts, "
            "parked_at = excluded.parked_at",
            (
                projection.name, event.id, event.position, event.event_type,
                f"{type(outcome.error).__name__}: {outcome.error}", outcome.trace,
                outcome.attempts, self._now(),
            ),
        )

    def follow(
        self,
        poll_interval: float = 1.0,
        stop_event: threading.Event | None = None,
        max_idle: float | None = None,
        name: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, RunStats]:
        """Keep catching up, polling every `poll_interval` seconds, until `stop_event` is set
        or no event arrived for `max_idle` seconds (0: return once caught up)."""
        stop = stop_event or threading.Event()
        totals: dict[str, RunStats] = {}
        idle_since = time.monotonic()
        while not stop.is_set():
            read = 0
            for key, stats in self.run(name, batch_size).items():
                total = totals.setdefault(key, RunStats(key))
                for attr in ("read", "applied", "parked", "batches"):
                    setattr(total, attr, getattr(total, attr) + getattr(stats, attr))
                total.checkpoint, total.rebuilt = stats.checkpoint, total.rebuilt or stats.rebuilt
                read += stats.read
            if read:
                idle_since = time.monotonic()
            elif max_idle is not None and time.monotonic() - idle_since >= max_idle:
                break
            stop.wait(poll_interval)
        return totals

    def rebuild(
        self,
        name: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[RunStats], None] | None = None,
    ) -> RunStats:
        """Drop the read model, its dead letters and checkpoint; replay it from position 0
        (`progress` as for `run`)."""
        projection = self.get(name)
        with self.store.transaction() as tx:
            self._lock_ddl(tx)
            self._reset(tx, projection)
        self._ready.add(projection.name)
        stats = self.run(name, batch_size, progress)[name]
        stats.rebuilt = True
        return stats

    # -- inspection -----------------------------------------------------------------------
    def checkpoint(self, name: str) -> int:
        """The position `name` has applied up to (0 if it never ran)."""
        self.get(name)
        with self.store.transaction() as tx:
            if not table_exists(tx, "projection_checkpoints"):
                return 0
            row = tx.execute(
                "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def lag(self, name: str) -> int:
        """head position - checkpoint: how many positions `name` has yet to look at."""
        checkpoint = self.checkpoint(name)
        return max(0, self.store.head_position() - checkpoint)

    def status(self) -> list[ProjectionStatus]:
        head = self.store.head_position()
        rows: dict[str, tuple[Any, ...]] = {}
        parked: dict[str, int] = {}
        with self.store.transaction() as tx:
            if table_exists(tx, "projection_checkpoints"):
                for row in tx.execute(
                    "SELECT name, position, version, updated_at FROM projection_checkpoints"
                ).fetchall():
                    rows[row[0]] = row
                for name, count in tx.execute(
                    "SELECT projection, count(*) FROM projection_dead_letters GROUP BY projection"
                ).fetchall():
                    parked[name] = int(count)
        out = []
        for name, projection in self.projections.items():
            row = rows.get(name)
            checkpoint = int(row[1]) if row else 0
            out.append(
                ProjectionStatus(
                    name=name,
                    version=str(projection.version),
                    checkpoint=checkpoint,
                    head=head,
                    lag=max(0, head - checkpoint),
                    dead_letters=parked.get(name, 0),
                    updated_at=row[3] if row else None,
                )
            )
        return out

    # -- dead letters ---------------------------------------------------------------------
    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Parked events of `name` (or of every projection), in position order."""
        if name is not None:
            self.get(name)
        with self.store.transaction() as tx:
            if not table_exists(tx, "projection_dead_letters"):
                return []
            sql = (
                "SELECT projection, event_id, position, event_type, error, traceback, attempts, "
                "parked_at FROM projection_dead_letters"
            )
            params: tuple[Any, ...] = ()
            if name is not None:
                sql, params = sql + " WHERE projection = ?", (name,)
            rows = tx.execute(sql + " ORDER BY projection, position", params).fetchall()
        return [
            DeadLetter(r[0], r[1], int(r[2]), r[3], r[4], r[5], int(r[6]), r[7]) for r in rows
        ]

    def retry_dead_letters(
        self, name: str, event_ids: Collection[str] | None = None
    ) -> RunStats:
        """Re-apply `name`'s parked events (or those of `event_ids`) in position order, one
        transaction each. A success removes the dead letter; a failure keeps it with the new
        error and attempt count.

        Retried events are applied after later ones: handlers should tolerate that.
        """
        projection = self.get(name)
        self._ensure(projection)
        stats = RunStats(name, checkpoint=self.checkpoint(name))
        for letter in self.dead_letters(name):
            if event_ids is not None and letter.event_id not in event_ids:
                continue
            event = self.store.get_event(letter.event_id)
            with self.store.transaction() as tx:
                stats.retried += 1
                if event is None:
                    raise ProjectionError(
                        f"dead letter {letter.event_id} of {name!r} names an event the store "
                        "does not have; is the runner pointed at the right store?"
                    )
                outcome = apply_event(tx, projection, event, self.store.registry, self.max_attempts)
                if outcome.error is None:
                    tx.execute(
                        "DELETE FROM projection_dead_letters WHERE projection = ? AND event_id = ?",
                        (name, event.id),
                    )
                    stats.applied += 1
                else:
                    self._park(tx, projection, event, outcome)
                    stats.failed += 1
        return stats
