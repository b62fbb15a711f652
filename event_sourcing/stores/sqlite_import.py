"""The SQLite bulk import (event_sourcing.stores.imports): a batch written in the caller's
write transaction, versions in order per stream after each stream's head and hash chains
extended, each row stored as an append stores it (the same statement, the same values).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from itertools import groupby

from event_sourcing.errors import DuplicateEventError
from event_sourcing.integrity.hashing import timestamp_text
from event_sourcing.stores.imports import ImportRow, content_hashes, place_rows
from event_sourcing.stores.sqlite_schema import INSERT, id_value, time_of, time_value
from event_sourcing.stores.sqlite_texts import SharedTexts


def import_rows(
    connection: sqlite3.Connection,
    texts: SharedTexts,
    fresh: dict[str, int],
    rows: Sequence[ImportRow],
    created_at: datetime,
) -> None:
    """Write one import batch on `connection`, inside its write transaction, recorded at
    `created_at` or, if the store holds a later time, at that (the clock never goes back,
    as for appends). Texts it numbers go to `fresh` (SharedTexts.numbers)."""
    head, latest = connection.execute(
        "SELECT coalesce(max(position), 0), "
        "(SELECT created_at FROM event_store ORDER BY position DESC LIMIT 1) FROM event_store"
    ).fetchone()
    if latest is not None and type(latest) is not int:  # (text a migration kept)
        latest = time_value(time_of(latest))
    now = time_value(created_at)
    if latest is not None and latest > now:
        now, created_at = latest, time_of(latest)
    stamp = timestamp_text(created_at)  # hashed as text, stored as microseconds
    contents = content_hashes(rows, stamp, False)
    heads = {}
    streams = list(dict.fromkeys(row.stream_id for row in rows))
    for stream_id in streams:
        version, kind, chain = connection.execute(
            "SELECT max(version), stream_type, chain_hash FROM event_store "
            "WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        if version:
            heads[stream_id] = (texts.text(connection, kind), version, chain)
    new = [stream_id for stream_id in streams if stream_id not in heads]
    # Which of correlation id, causation id and occurred_at each row gives (its INSERT);
    # the values of a row are extended by those it gives.
    given = [
        (imported.correlation_id is not None, imported.causation_id is not None,
         imported.row.occurred_at is not None)
        for imported in rows
    ]
    placed = place_rows(rows, contents, heads)
    number = texts.numbers(connection, dict.fromkeys((
        *(kind for kind, _, _ in placed),
        *(imported.row.event_type for imported in rows),
        *(imported.row.metadata_json for imported in rows),
    )), fresh)
    values = [
        (position, id_value(row.id), imported.stream_id, number(kind), version,
         number(row.event_type), row.schema_version, row.payload_json,
         number(row.metadata_json), now, bytearray(content), bytearray(chain))
        for position, imported, row, content, (kind, version, chain) in zip(
            range(head + 1, head + 1 + len(rows)), rows, [imported.row for imported in rows],
            contents, placed, strict=True,
        )
    ]
    if given.count((False, False, False)) != len(given):
        values = [
            value if flags == (False, False, False) else (
                *value[:10],
                *(given_id for given_id in (imported.correlation_id, imported.causation_id)
                  if given_id is not None),
                *value[10:],
                *(() if imported.row.occurred_at is None
                  else (time_value(datetime.fromisoformat(imported.row.occurred_at)),)),
            )
            for value, flags, imported in zip(values, given, rows, strict=True)
        ]
    try:
        # one statement per run of rows with the same correlation/causation/occurred_at presence
        start = 0
        for flags, group in groupby(given):
            count = sum(1 for _ in group)
            connection.executemany(INSERT[flags], values[start:start + count])
            start += count
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
