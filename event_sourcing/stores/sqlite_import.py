"""The SQLite bulk import (event_sourcing.stores.imports): a batch written in the caller's
write transaction, versions in order per stream after each stream's head and hash chains
extended, each row stored as an append stores it (the same statement, the same values).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from event_sourcing.errors import DuplicateEventError
from event_sourcing.integrity.hashing import timestamp_text
from event_sourcing.stores.imports import ImportRow, content_hashes, place_rows
from event_sourcing.stores.sqlite_schema import INSERT, id_value, time_value


def _given_ids(placed: tuple[int, tuple[ImportRow, Any, Any]]) -> tuple[bool, bool, bool]:
    """Which of an imported row's correlation id, causation id and occurred_at are given
    (its INSERT)."""
    imported = placed[1][0]
    return (imported.correlation_id is not None, imported.causation_id is not None,
            imported.row.occurred_at is not None)


def import_rows(
    connection: sqlite3.Connection, rows: Sequence[ImportRow], created_at: datetime
) -> None:
    """Write one import batch on `connection`, inside its write transaction."""
    stamp = timestamp_text(created_at)  # hashed as text, stored as microseconds
    contents = content_hashes(rows, stamp, False)
    now = time_value(created_at)
    head = connection.execute(
        "SELECT coalesce(max(position), 0) FROM event_store"
    ).fetchone()[0]
    heads = {}
    streams = list(dict.fromkeys(row.stream_id for row in rows))
    for stream_id in streams:
        version, kind, chain = connection.execute(
            "SELECT max(version), stream_type, chain_hash FROM event_store "
            "WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        if version:
            heads[stream_id] = (kind, version, chain)
    new = [stream_id for stream_id in streams if stream_id not in heads]
    placed = enumerate(zip(rows, contents, place_rows(rows, contents, heads),
                           strict=True), start=head + 1)
    try:
        # one statement per run of rows with the same correlation/causation/occurred_at presence
        for given, group in groupby(placed, _given_ids):
            connection.executemany(INSERT[given], [
                (position, id_value(imported.row.id), imported.stream_id, kind, version,
                 imported.row.event_type, imported.row.schema_version,
                 imported.row.payload_json, imported.row.metadata_json, now,
                 *(given_id for given_id in (imported.correlation_id, imported.causation_id)
                   if given_id is not None),
                 bytearray(content), bytearray(chain),
                 *(() if imported.row.occurred_at is None
                   else (time_value(datetime.fromisoformat(imported.row.occurred_at)),)))
                for position, (imported, content, (kind, version, chain)) in group
            ])
    except sqlite3.IntegrityError as exc:
        raise DuplicateEventError(
            f"an event of this batch was recorded meanwhile (is another import of "
            f"the same input running?); nothing of the batch was written ({exc})"
        ) from None
    connection.executemany(
        "INSERT OR IGNORE INTO streams (stream_id, stream_type, created_at) "
        "VALUES (?, ?, ?)",
        [(stream_id, heads[stream_id][0], stamp) for stream_id in new],
    )
