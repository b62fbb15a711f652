"""Event counts by type and the number of streams, kept beside the log and brought up to
date on each question by counting only the events appended since the last one (those of
them archived, docs/archive.md, from the archive's files).
"""

from __future__ import annotations

from dataclasses import dataclass

from event_sourcing.errors import AccessDeniedError
from event_sourcing.projections.projection import table_exists
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.sqlite_texts import text_of
from event_sourcing.stores.store import EventStore

__all__ = ["LogCounts", "log_counts"]

_LOCK = 0x6D6C6374  # "mlct": serializes the first creation on PostgreSQL
_DDL = (
    """CREATE TABLE IF NOT EXISTS event_counts (
        event_type TEXT PRIMARY KEY,
        events     BIGINT NOT NULL
    )""",
    # One row: the position counted up to, and the streams seen (events of version 1).
    """CREATE TABLE IF NOT EXISTS event_counts_through (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        position BIGINT NOT NULL,
        streams  BIGINT NOT NULL
    )""",
)


@dataclass(frozen=True)
class LogCounts:
    """The log up to `position`: events by type and number of streams."""

    position: int
    streams: int
    by_type: dict[str, int]


def log_counts(store: EventStore) -> LogCounts:
    """Counts of the whole log, costing what the events appended since the last call cost
    (a count over the log's positions after the last one counted). A role that may only
    read (`mlevents grant --reader`) gets the same answer; it adds what is new in memory
    and writes nothing."""
    try:
        return _update_counts(store)
    except AccessDeniedError:
        return _read_counts(store)


def _new_counts(
    store: EventStore, tx: SqlTransaction, through: int, head: int
) -> list[tuple[str, int, int]]:
    """(event type, events, new streams) of the positions after `through` up to `head`.

    On PostgreSQL, positions of that range may be archived (docs/archive.md): the same
    statement lists the archive's files holding some of them, in its own snapshot (the
    rows of a partition dropped after it are counted from the table, those dropped before
    from the files), and those files' rows in the range are counted. Past the archive (the
    usual case) that is one look at the manifest's few rows, and no file is read."""
    # (SQLite stores a type's number: sqlite_texts)
    name = text_of("event_type") if store.dialect == "sqlite" else "event_type"
    query = (
        f"SELECT {name}, count(*), sum(CASE WHEN version = 1 THEN 1 ELSE 0 END) "
        "FROM event_store WHERE position > ? AND position <= ? GROUP BY event_type"
    )
    if store.dialect == "postgresql":
        from event_sourcing.stores.postgres_archive_files import archived_files

        query += f" UNION ALL {archived_files(through, head, 3)}"
    rows = tx.execute(query, (through, head)).fetchall()
    found = [
        (event_type, int(events), int(first))
        for event_type, events, first in rows if event_type is not None
    ]
    lowers = {int(lower) for event_type, lower, _ in rows if event_type is None}
    if lowers:
        archived = store.recorder.archived_counts(through, head, lowers)
        found += [(name, events, first) for name, (events, first) in archived.items()]
    return found


def _read_counts(store: EventStore) -> LogCounts:
    head = store.head_position()
    with store.transaction(read_only=True) as tx:
        through, streams, counts = 0, 0, {}
        if table_exists(tx, "event_counts_through"):
            row = tx.execute(
                "SELECT position, streams FROM event_counts_through WHERE id = 1"
            ).fetchone()
            if row and int(row[0]) <= head:
                through, streams = int(row[0]), int(row[1])
                counts = {
                    name: int(n)
                    for name, n in tx.execute(
                        "SELECT event_type, events FROM event_counts"
                    ).fetchall()
                }
        for event_type, events, first in _new_counts(store, tx, through, head):
            streams += first
            counts[event_type] = counts.get(event_type, 0) + events
    return LogCounts(head, streams, dict(sorted(counts.items())))


def _update_counts(store: EventStore) -> LogCounts:
    head = store.head_position()  # every position up to it is settled (docs/ordering.md)
    with store.transaction() as tx:
        tx.lock(_LOCK)
        for statement in _DDL:
            tx.execute(statement)
        row = tx.execute(
            "SELECT position, streams FROM event_counts_through WHERE id = 1"
        ).fetchone()
        through, streams = (int(row[0]), int(row[1])) if row else (0, 0)
        if head > through:
            for event_type, events, first in _new_counts(store, tx, through, head):
                streams += first
                tx.execute(
                    "INSERT INTO event_counts (event_type, events) VALUES (?, ?) ON CONFLICT "
                    "(event_type) DO UPDATE SET events = event_counts.events + excluded.events",
                    (event_type, events),
                )
            tx.execute(
                "INSERT INTO event_counts_through (id, position, streams) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET position = excluded.position, "
                "streams = excluded.streams",
                (head, streams),
            )
            through = head
        counts = {
            name: int(n)
            for name, n in tx.execute(
                "SELECT event_type, events FROM event_counts ORDER BY event_type"
            ).fetchall()
        }
    return LogCounts(through, streams, counts)
