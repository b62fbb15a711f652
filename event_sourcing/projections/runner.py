"""The projection runner: checkpoints, exactly-once batches, dead letters, rebuild, lag.

A projection's read-model writes and its checkpoint commit in one transaction per batch.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from event_sourcing.events import RecordedEvent
from event_sourcing.projections.pages import read_page
from event_sourcing.projections.projection import (
    ApplyOutcome,
    BatchHandler,
    DeadLetter,
    Handler,
    Projection,
    ProjectionError,
    ReadModelMissingError,
    apply_event,
    apply_page,
    insert_rows,
    iso,
    on,
    table_exists,
)
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = [
    "ApplyOutcome",
    "BatchHandler",
    "DeadLetter",
    "Handler",
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "ProjectionStatus",
    "ReadModelMissingError",
    "RunStats",
    "apply_event",
    "apply_page",
    "catch_up",
    "insert_rows",
    "iso",
    "on",
    "table_exists",
]

log = logging.getLogger("event_sourcing.projections")

DEFAULT_BATCH_SIZE = 2000
DEFAULT_MAX_ATTEMPTS = 3
# A page is read as a range of the log (all types, filtered here) while at least one event
# in this many of the last page's span was of interest to the projection.
_SCAN_DENSITY = 3
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
        self._scan: dict[str, bool] = {}  # read the next page as a range of the log
        self._read: dict[str, int] = {}  # checkpoints just read or set, for the next run

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
        tx.lock(_SETUP_LOCK)  # CREATE TABLE IF NOT EXISTS races between sessions
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
        checkpoint = "SELECT version, position FROM projection_checkpoints WHERE name = ?"
        with self.store.transaction(read_only=True) as tx:  # set up before: nothing to write
            row = None
            if tx.table_exists("projection_checkpoints"):
                row = tx.execute(checkpoint, (projection.name,)).fetchone()
        if row is not None and row[0] == str(projection.version):
            self._ready.add(projection.name)
            self._read[projection.name] = int(row[1])
            return False
        reset = False
        with self.store.transaction() as tx:
            self._lock_ddl(tx)
            row = tx.execute(checkpoint, (projection.name,)).fetchone()
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
        self._read[projection.name] = 0 if row is None or reset else int(row[1])
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
            # The checkpoint is read once per run (by _ensure, the first time); each batch's
            # claim checks it still holds.
            checkpoint = self._read.pop(projection.name, None)
            if checkpoint is None:
                checkpoint = self._checkpoint_of(projection)
            while (checkpoint := self._batch(projection, batch_size, stats, checkpoint)) >= 0:
                if progress is not None:
                    progress(stats)
            if progress is not None:
                progress(stats)
            results[projection.name] = stats
        return results

    def _batch(
        self, projection: Projection, batch_size: int, stats: RunStats, checkpoint: int
    ) -> int:
        """Apply one batch after `checkpoint` in one transaction; return the checkpoint to
        read the next batch after, or -1 when the read came back short (caught up).

        The events are read before the transaction (which stays short, and needs no second
        connection); it then claims the checkpoint and applies them only if no other runner
        moved the checkpoint meanwhile (otherwise it reads again after that runner's)."""
        # Every position up to this head is visible now (positions become visible in order),
        # so once a filtered read comes back short, the checkpoint may move up to it.
        scan = self._scan.get(projection.name, True)
        page = read_page(self.store, checkpoint, projection.event_types, batch_size, scan=scan)
        if checkpoint >= page.head:
            stats.checkpoint = checkpoint
            return -1  # nothing to do: no write transaction (no fsync, no lock)
        # Read the next page as a range of the log while most of its events are of interest.
        span = page.cursor - checkpoint
        self._scan[projection.name] = len(page.events) * _SCAN_DENSITY >= span
        events = page.events
        with self.store.transaction() as tx:
            # Claiming the row (a no-op update) serializes runners of one projection.
            row = tx.execute(
                "UPDATE projection_checkpoints SET position = position WHERE name = ? "
                "RETURNING position",
                (projection.name,),
            ).fetchone()
            if row is None:
                raise ProjectionError(
                    f"projection {projection.name!r} lost its checkpoint row (rebuilt or dropped "
                    "by another process?); run it again"
                )
            if int(row[0]) != checkpoint:
                return int(row[0])  # another runner applied a batch meanwhile: read after it
            failed = apply_page(tx, projection, events, self.store.registry, self.max_attempts)
            for event, outcome in failed:
                self._park(tx, projection, event, outcome)
            parked = len(failed)
            full, position = page.full, max(page.cursor, checkpoint)
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
        return position if full else -1

    def _checkpoint_of(self, projection: Projection) -> int:
        """The checkpoint as last committed (-1 if the row is gone: the claim then says so)."""
        with self.store.transaction(read_only=True) as tx:
            row = tx.execute(
                "SELECT position FROM projection_checkpoints WHERE name = ?", (projection.name,)
            ).fetchone()
        return -1 if row is None else int(row[0])

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
        self._read[projection.name] = 0
        stats = self.run(name, batch_size, progress)[name]
        stats.rebuilt = True
        return stats

    # -- inspection -----------------------------------------------------------------------
    def checkpoint(self, name: str) -> int:
        """The position `name` has applied up to (0 if it never ran)."""
        self.get(name)
        with self.store.transaction(read_only=True) as tx:
            if not tx.table_exists("projection_checkpoints"):
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
        with self.store.transaction(read_only=True) as tx:
            if tx.table_exists("projection_checkpoints"):
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
        with self.store.transaction(read_only=True) as tx:
            if not tx.table_exists("projection_dead_letters"):
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
        self._read.pop(name, None)  # for a run, not for this
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


_RUNNERS: weakref.WeakKeyDictionary[EventStore, dict[str, ProjectionRunner]] = (
    weakref.WeakKeyDictionary()
)


def catch_up(store: EventStore, projection: Projection) -> None:
    """Bring one read model up to the head of the log before it is read, for queries that
    must be as fresh as the log (one short batch when nothing new arrived)."""
    runners = _RUNNERS.setdefault(store, {})
    runner = runners.get(projection.name)
    if runner is None:
        runner = runners[projection.name] = ProjectionRunner(store, [projection])
    runner.run()
