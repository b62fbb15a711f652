"""The relay loop and its checkpoint: every event, in global order, to a Sink, at least once.

A page is published, its acks awaited, then its last position committed to `relay_checkpoints`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from event_sourcing.errors import EventValidationError
from event_sourcing.events import RecordedEvent
from event_sourcing.relay.sink import RelayError, Sink
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_PAGE_SIZE",
    "Relay",
    "RelayStats",
    "read_checkpoint",
    "relay_lag",
    "set_checkpoint",
]

log = logging.getLogger("event_sourcing.relay")

DEFAULT_PAGE_SIZE = 2000
DEFAULT_INTERVAL = 0.2
_SETUP_LOCK = 0x6D6C726C  # advisory lock key ("mlrl"): serializes the DDL on PostgreSQL
_DDL = """CREATE TABLE IF NOT EXISTS relay_checkpoints (
    name       TEXT PRIMARY KEY,
    position   BIGINT NOT NULL CHECK (position >= 0),
    updated_at TEXT NOT NULL
)"""
# Never backwards: a lagging second relay of the same name cannot undo the first's progress.
_ADVANCE = (
    "INSERT INTO relay_checkpoints (name, position, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
    "updated_at = excluded.updated_at WHERE relay_checkpoints.position < excluded.position"
)
_SET = (
    "INSERT INTO relay_checkpoints (name, position, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
    "updated_at = excluded.updated_at"
)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise EventValidationError(f"relay name must be 1-255 characters, got {name!r}")
    return name


def _setup(tx: SqlTransaction) -> None:
    if tx.dialect == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_SETUP_LOCK,))
    tx.execute(_DDL)


def _now(store: EventStore) -> str:
    return store.clock().isoformat()


def read_checkpoint(store: EventStore, name: str) -> int:
    """The last global position relay `name` published and saw acknowledged (0: none)."""
    _check_name(name)
    with store.transaction() as tx:
        _setup(tx)
        row = tx.execute(
            "SELECT position FROM relay_checkpoints WHERE name = ?", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def set_checkpoint(store: EventStore, name: str, position: int) -> None:
    """Move relay `name` to `position`, backwards too. The relay resumes after this position,
    or after the last event its destination already holds if that is further: rewinding
    fills a new (or purged) stream, and never duplicates what a stream holds."""
    _check_name(name)
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise EventValidationError(f"position must be an int >= 0, got {position!r}")
    with store.transaction() as tx:
        _setup(tx)
        tx.execute(_SET, (name, position, _now(store)))


def relay_lag(store: EventStore, name: str) -> tuple[int, int]:
    """(head position, checkpoint) of relay `name`; their difference is how far it lags."""
    head = store.head_position()
    return head, read_checkpoint(store, name)


@dataclass
class RelayStats:
    """What one `Relay.run` did: events published, how many the broker already had."""

    name: str
    published: int = 0
    duplicates: int = 0
    pages: int = 0
    checkpoint: int = 0
    caught_up: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Relay:
    """Publishes the store's global log to `sink`, page by page, resuming at its checkpoint
    (or after the last event the broker holds, if that is further).

    At least once to the broker: a page in flight when the relay dies is published again;
    the broker drops the repeats by message id (the event id).
    """

    def __init__(
        self,
        store: EventStore,
        sink: Sink,
        *,
        name: str,
        page_size: int = DEFAULT_PAGE_SIZE,
        interval: float = DEFAULT_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(page_size, int) or page_size < 1:
            raise EventValidationError(f"page_size must be an int >= 1, got {page_size!r}")
        if not interval > 0:
            raise EventValidationError(f"interval must be > 0 seconds, got {interval!r}")
        self.store = store
        self.sink = sink
        self.name = _check_name(name)
        self.page_size = page_size
        self.interval = interval
        self._monotonic = monotonic

    def checkpoint(self) -> int:
        return read_checkpoint(self.store, self.name)

    def _resume_position(self) -> int:
        """The checkpoint, moved up to the last position the broker already holds (a page
        acknowledged before a crash, whose checkpoint commit never happened)."""
        checkpoint = self.checkpoint()
        held = self.sink.last_position()
        if held is None or held <= checkpoint:
            return checkpoint
        head = self.store.head_position()
        if held > head:
            raise RelayError(
                f"{self.sink.description} already holds position {held}, beyond this store's "
                f"head ({head}): another store publishes there. Give each store its own "
                "subject prefix (and stream)."
            )
        log.info("relay %s: the broker holds up to position %d, past checkpoint %d",
                 self.name, held, checkpoint)
        with self.store.transaction() as tx:
            tx.execute(_ADVANCE, (self.name, held, _now(self.store)))
        return held

    def _read(self, after: int) -> list[RecordedEvent]:
        return list(self.store.read_all(after=after, limit=self.page_size))

    def _publish(self, page: list[RecordedEvent], stats: RelayStats) -> int:
        """Publish a page, wait for every ack, then commit its last position."""
        acks = self.sink.publish(page)
        if len(acks) != len(page):
            raise RelayError(
                f"{self.sink.description} acknowledged {len(acks)} of {len(page)} "
                "messages; nothing of this page was checkpointed"
            )
        position = page[-1].position
        with self.store.transaction() as tx:
            tx.execute(_ADVANCE, (self.name, position, _now(self.store)))
        stats.published += len(page)
        stats.duplicates += sum(ack.duplicate for ack in acks)
        stats.pages += 1
        stats.checkpoint = position
        return position

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        max_seconds: float | None = None,
        until_caught_up: bool = False,
    ) -> RelayStats:
        """Publish until `stop` is set, `max_seconds` pass, or (with `until_caught_up`) a read
        comes back short of a full page. An interrupted run loses nothing: the page in flight
        is published again by the next run."""
        stop = stop or threading.Event()
        started = self._monotonic()
        deadline = None if max_seconds is None else started + max_seconds
        stats = RelayStats(self.name)
        position = stats.checkpoint = self._resume_position()
        log.info("relay %s starts after position %d to %s", self.name, position,
                 self.sink.description)
        # While a page is published, the next one is read on a second thread: with a backlog,
        # a relay costs about max(read, publish) per page instead of their sum.
        with ThreadPoolExecutor(1, thread_name_prefix="relay-read") as reader:
            ahead: Future[list[RecordedEvent]] | None = None
            while not stop.is_set():
                page = ahead.result() if ahead is not None else self._read(position)
                full = len(page) == self.page_size
                ahead = reader.submit(self._read, page[-1].position) if full else None
                if page:
                    position = self._publish(page, stats)
                if not full and until_caught_up:
                    stats.caught_up = True
                    break
                now = self._monotonic()
                if deadline is not None and now >= deadline:
                    break
                if not full:
                    wait = self.interval if deadline is None else min(self.interval,
                                                                      deadline - now)
                    stop.wait(wait)
        stats.seconds = self._monotonic() - started
        return stats
