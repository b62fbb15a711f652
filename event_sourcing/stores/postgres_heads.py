"""Why a PostgreSQL append wrote nothing, and a stream's head when its event is archived
(docs/archive.md).

An append locates its stream's head in its one statement (postgres_append): the latest
key in event_keys and that event's row in event_store. When the head's partition was
archived the row is gone, and the statement writes nothing. Only then, on the path of an
append that wrote nothing, is the stream's head read again here: from the table, or from
the archive's file holding it. The caller then appends again giving that head (its type,
version, chain hash; its time as the earliest the append may record), as when a recorder
knows a head it appended itself. An import reads its streams' archived heads the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from event_sourcing.errors import ConcurrencyError, StoreUnavailableError
from event_sourcing.stores.postgres_archive_files import ArchiveError, ArchiveFiles, Head

# A stream's latest key, and its row's type, chain hash and time if it is in the tables.
_HEAD_OF = """
    SELECT k.position, k.version, e.stream_type, e.chain_hash, e.created_at
    FROM event_keys AS k LEFT JOIN LATERAL (
        SELECT stream_type, chain_hash, created_at FROM event_store
        WHERE event_store.position = k.position OFFSET 0
    ) AS e ON true
    WHERE k.stream_id = %s ORDER BY k.version DESC LIMIT 1"""


class ClockBehind(Exception):
    """An append wrote nothing: its stream's head was recorded at a later time than its."""

    def __init__(self, latest: datetime) -> None:
        super().__init__(f"the log holds a time later than the clock's: {latest}")
        self.latest = latest


class ArchivedHead(Exception):
    """An append wrote nothing: its stream's head is archived. Append again giving it."""

    def __init__(self, head: Head) -> None:
        super().__init__(f"the stream's head (version {head.version}) is archived")
        self.head = head


class HeadMoved(Exception):
    """An append with no expectation wrote nothing, its stream's head having moved on since
    its statement looked it up (an archived head passed by another writer): send it again."""


def archived_heads(
    files: ArchiveFiles, connection: psycopg.Connection[Any], positions: Sequence[int]
) -> dict[int, Head]:
    """Position -> head of the archived events at these positions (their rows gone from
    event_store: the manifest naming their file is committed with the drop)."""
    if not files.covers(positions):
        files.load(connection)
    found = files.heads(positions)
    missing = sorted(set(positions) - found.keys())
    if missing:
        raise ArchiveError(
            f"the events at positions {missing} are neither in event_store nor in an "
            "archive file the manifest names"
        )
    return found


def stream_head(
    connection: psycopg.Connection[Any], files: ArchiveFiles, stream_id: str
) -> tuple[Head, bool] | None:
    """The stream's latest event (None: it has none), and whether it is archived."""
    row = connection.execute(_HEAD_OF, (stream_id,)).fetchone()
    if row is None:
        return None
    position, version, kind, chain, created_at = row
    if kind is not None:
        return Head(kind, int(version), bytes(chain), created_at), False
    return archived_heads(files, connection, [int(position)])[int(position)], True


def refusal(
    connection: psycopg.Connection[Any],
    files: ArchiveFiles,
    stream_id: str,
    expected_version: int | None,
    located: bool,
    now: datetime,
) -> Exception:
    """Why an append none of whose events is recorded wrote nothing, as the exception to
    raise. `located`: its statement looked the head up (no expectation, or an expected
    version without the head's chain), so an archived head made it write nothing
    (ArchivedHead: append again giving it) when it is the version expected. Else a head
    recorded after `now` (ClockBehind), a head that moved on since the statement read it
    (HeadMoved, expecting none), or the stream is not at `expected_version`."""
    found = stream_head(connection, files, stream_id)
    current = 0
    if found is not None:
        head, archived = found
        if archived and located and expected_version in (None, head.version):
            return ArchivedHead(head)
        if not archived and head.created_at > now:
            return ClockBehind(head.created_at)
        if expected_version is None:
            return HeadMoved()
        current = head.version
    if expected_version is None:
        return StoreUnavailableError(
            f"append to {stream_id!r} wrote nothing and no error was reported"
        )
    return ConcurrencyError(stream_id, expected_version, current)
