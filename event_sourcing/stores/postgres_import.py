"""The PostgreSQL bulk import (event_sourcing.stores.imports): a batch written with COPY in
one transaction, after the batch's streams' heads (an archived one read from its file,
postgres_heads) and the in-flight marker (docs/ordering.md); versions and hash chains
computed in Python, exactly as an append computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from event_sourcing.errors import DuplicateEventError
from event_sourcing.integrity.hashing import timestamp_text
from event_sourcing.stores.imports import ImportRow, content_hashes, place_rows, runs
from event_sourcing.stores.postgres_append import MARKER, WRITTEN
from event_sourcing.stores.postgres_archive_files import Head
from event_sourcing.stores.postgres_pool import APPEND_LOCK_TIMEOUT, Connections
from event_sourcing.stores.postgres_schema import STREAM_VERSION_KEY
from event_sourcing.stores.recorder import AlreadyRecorded, Appended, EventRow

# An import batch's streams' heads (no row for a new stream; no type, chain or time for a
# head whose partition was archived: read from its file, postgres_heads).
_HEADS = """
    SELECT s.stream_id, h.stream_type, h.version, h.chain_hash, h.created_at, h.position
    FROM unnest(%s::text[]) AS s (stream_id)
    CROSS JOIN LATERAL (
        SELECT e.stream_type, k.version, e.chain_hash, e.created_at, k.position
        FROM event_keys AS k LEFT JOIN event_store AS e ON e.position = k.position
        WHERE k.stream_id = s.stream_id ORDER BY k.version DESC LIMIT 1
    ) AS h"""
ATTEMPTS = 3  # an import batch raced by appends to its streams starts again
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_BS, _BS2, _NULL = "\\", "\\\\", "\\N"  # a backslash, doubled; COPY's NULL

Append = Callable[
    [str, str | None, int | None, Sequence[EventRow], datetime, str | None, str | None],
    Appended,
]
# The archived heads at these positions (postgres_heads.archived_heads).
ArchivedHeads = Callable[[psycopg.Connection[Any], Sequence[int]], dict[int, Head]]


def _copy_text(value: str | None) -> str:
    """A text value in COPY's text format."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_lines(
    rows: Sequence[ImportRow],
    contents: Sequence[bytes],
    placed: Sequence[tuple[str, int, bytes]],
    now: str,
) -> str:
    """The batch in COPY's text format, a line's values in WRITTEN's order. What a run of
    rows shares (stream, stream type, correlation and causation ids) and what a type
    shares (its name and schema version) is written once. JSON text holds no raw tab or
    newline (control characters are escaped in JSON already): only its backslashes are
    doubled (str.replace returns the text itself when it holds none)."""
    lines: list[str] = []
    add = lines.append
    types: dict[tuple[str, int], str] = {}
    start = 0
    for run in runs(rows):
        first = run[0]
        end = start + len(run)
        stream = f"\t{_copy_text(first.stream_id)}\t{_copy_text(placed[start][0])}\t"
        shared = (f"\t{now}\t{_copy_text(first.correlation_id)}\t"
                  f"{_copy_text(first.causation_id)}\t\\\\x")
        for imported, content, (_, version, chain) in zip(
            run, contents[start:end], placed[start:end], strict=True
        ):
            row = imported.row
            key = (row.event_type, row.schema_version)
            typed = types.get(key)
            if typed is None:
                typed = types[key] = f"{_copy_text(row.event_type)}\t{row.schema_version}\t"
            occurred = row.occurred_at
            add(
                f"{row.id}{stream}{version}\t{typed}{row.payload_json.replace(_BS, _BS2)}\t"
                f"{row.metadata_json.replace(_BS, _BS2)}{shared}{content.hex()}\t\\\\x"
                f"{chain.hex()}\t{_NULL if occurred is None else _copy_text(occurred)}\n"
            )
        start = end
    return "".join(lines)


class _Raced(Exception):
    """An import batch met an append to one of its streams."""


class _Behind(Exception):
    """A stream of the batch holds a time later than the batch's: the clock never goes back
    in a stream (as for appends), so the batch is recorded at that time instead."""

    def __init__(self, latest: datetime) -> None:
        self.latest = latest


def import_rows(
    connections: Connections, append: Append, rows: Sequence[ImportRow], created_at: datetime,
    archived: ArchivedHeads,
) -> None:
    """Write a bulk-import batch in one transaction, with COPY: the streams' heads, then the
    in-flight marker (so the no-skip order holds) before COPY takes positions. An append
    to one of the batch's streams committed in between makes the batch start again; after
    ATTEMPTS it is written as appends."""
    streams = list(dict.fromkeys(row.stream_id for row in rows))
    now = timestamp_text(created_at)
    contents = content_hashes(rows, now, True)  # PostgreSQL's hashes (canonical JSON)
    for _ in range(ATTEMPTS):
        try:
            with connections.transaction("import") as connection:
                _import_on(connection, rows, contents, streams, now, created_at, archived)
            return
        except _Raced:
            continue
        except _Behind as behind:
            created_at = behind.latest
            now = timestamp_text(created_at)
            contents = content_hashes(rows, now, True)
    # Appends keep taking the next version first: write the batch as appends, which
    # locate the head and insert in one statement (one per run of a stream's events).
    for run in runs(rows):
        first = run[0]
        try:
            append(first.stream_id, first.stream_type, None, [r.row for r in run],
                   created_at, first.correlation_id, first.causation_id)
        except AlreadyRecorded:
            raise DuplicateEventError(
                f"{first.where}: an event of this batch was recorded meanwhile (is another "
                "import of the same input running?)"
            ) from None


def _import_on(
    connection: psycopg.Connection[Any],
    rows: Sequence[ImportRow],
    contents: Sequence[bytes],
    streams: list[str],
    now: str,
    created_at: datetime,
    archived: ArchivedHeads,
) -> None:
    connection.execute(f"SET LOCAL lock_timeout = '{APPEND_LOCK_TIMEOUT}'")
    found = connection.execute(_HEADS, (streams,)).fetchall()
    gone = [row[5] for row in found if row[1] is None]  # archived heads
    from_files = archived(connection, gone) if gone else {}
    recorded = {
        stream_id: Head(kind, version, bytes(chain), time) if kind is not None
        else from_files[position]
        for stream_id, kind, version, chain, time, position in found
    }
    latest = max((head.created_at for head in recorded.values()), default=created_at)
    if latest > created_at:
        raise _Behind(latest)
    # The marker only now, before COPY takes positions: reading a head from its file (and
    # checking the file's content address, the first time) must not hold back every
    # reader's horizon. A head an append moves meanwhile makes COPY fail on its version.
    connection.execute(MARKER, {})
    heads = {stream_id: head[:3] for stream_id, head in recorded.items()}
    new = [stream_id for stream_id in streams if stream_id not in heads]
    lines = _copy_lines(rows, contents, place_rows(rows, contents, heads), now)
    try:
        with connection.cursor().copy(f"COPY event_store ({WRITTEN}) FROM STDIN") as copy:
            copy.write(lines)
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name == STREAM_VERSION_KEY:
            raise _Raced from None
        raise DuplicateEventError(
            "an event of this batch was recorded meanwhile (is another import of the same "
            "input running?); nothing of the batch was written"
        ) from None
    if new:
        connection.execute(
            "INSERT INTO streams (stream_id, stream_type, created_at) "
            "SELECT * FROM unnest(%s::text[], %s::text[]) AS n, (SELECT %s::timestamptz) AS t "
            "ON CONFLICT DO NOTHING",
            (new, [heads[stream_id][0] for stream_id in new], created_at),
        )
