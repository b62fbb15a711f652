"""The SQLite append: one batch to one stream, in the caller's write transaction (the one
write lock orders it): the stream's head and the store's latest time read, the expected
version checked, hashes chained, the shared texts numbered (sqlite_texts) and the rows
inserted in one statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from itertools import count, repeat

from event_sourcing.errors import ConcurrencyError
from event_sourcing.integrity.hashing import GENESIS, append_hashes, fold_chain, timestamp_text
from event_sourcing.stores.recorder import AlreadyRecorded, Appended, EventRow, fetch_events
from event_sourcing.stores.sqlite_schema import INSERT, id_value, time_of, time_value
from event_sourcing.stores.sqlite_texts import COLUMNS, SharedTexts

_DASH, _NONE = repeat("-"), repeat("")  # (str.replace's arguments, for map)


def _occurred_values(texts: Sequence[str | None]) -> list[int | None] | None:
    """Each row's occurred_at (`texts`: as hashed) as stored (microseconds; None: NULL),
    or None when no row of the batch gives one (its statement then has a NULL literal)."""
    if texts.count(None) == len(texts):
        return None
    stored: dict[str, int] = {}  # (a batch usually shares one)
    return [
        None if text is None else (
            stored[text] if text in stored
            else stored.setdefault(text, time_value(datetime.fromisoformat(text)))
        )
        for text in texts
    ]


def append_rows(
    connection: sqlite3.Connection,
    texts: SharedTexts,
    stream_id: str,
    stream_type: str | None,
    expected_version: int | None,
    rows: Sequence[EventRow],
    created_at: datetime,
    correlation_id: str | None,
    causation_id: str | None,
    stamp: str,
    contents: list[bytes],
    fresh: dict[str, int],
) -> Appended:
    """Write one append's rows on `connection`, inside its write transaction (`contents`:
    their content hashes at `stamp`, the text of `created_at`); texts it numbers go to
    `fresh` (SharedTexts.numbers). Raises ConcurrencyError, or AlreadyRecorded when
    events of the batch were recorded before."""
    now = time_value(created_at)
    # (SQLite gives the bare columns of the row holding max(version).) The latest
    # time recorded is the head's: times never go back in position order, and there
    # is no created_at index to take a max() from.
    head, current, kind, chain, latest = connection.execute(
        "SELECT (SELECT coalesce(max(position), 0) FROM event_store), "
        "coalesce(max(version), 0), stream_type, chain_hash, "
        "(SELECT created_at FROM event_store ORDER BY position DESC LIMIT 1) "
        "FROM event_store WHERE stream_id = ?",
        (stream_id,),
    ).fetchone()
    if latest is not None and type(latest) is not int:  # (text a migration kept)
        latest = time_value(time_of(latest))
    if kind is not None:
        kind = texts.text(connection, kind)
    if latest is not None and latest > now:  # the clock went back: never record that
        now, created_at = latest, time_of(latest)
        stamp = timestamp_text(created_at)
        contents, _ = append_hashes(
            rows, stream_id, stamp, correlation_id, causation_id
        )
    kind = kind or stream_type or "default"
    if expected_version is not None and current != expected_version:
        raise_if_recorded(connection, texts, rows, head)
        raise ConcurrencyError(stream_id, expected_version, current)
    chains = fold_chain(chain or GENESIS, current, kind, contents)
    given = [repeat(value) for value in (correlation_id, causation_id) if value is not None]
    event_ids, types, versions, payloads, metadatas, _, _, occurred_at = zip(*rows, strict=True)
    occurred = _occurred_values(occurred_at)
    # (texts new to the store numbered in the order they come: the same history numbers
    # them alike, imported or appended)
    number = texts.numbers(
        connection, (kind, *dict.fromkeys(types), *dict.fromkeys(metadatas)), fresh
    )
    # Each row's values, in C: (position, id (its 16 bytes, sqlite_schema.id_value),
    # stream, stream type, version, type, schema version, payload, metadata (the shared
    # texts' numbers), time, [correlation], [causation], hashes (bytearray: bound
    # without an adapter lookup), [occurred_at])
    values = list(zip(
        count(head + 1), map(bytearray.fromhex, map(str.replace, event_ids, _DASH, _NONE)),
        repeat(stream_id), repeat(number(kind)), count(current + 1), map(number, types),
        versions, payloads, map(number, metadatas), repeat(now), *given,
        map(bytearray, contents), map(bytearray, chains),
        *(() if occurred is None else (occurred,)),
    ))
    try:
        connection.executemany(
            INSERT[
                correlation_id is not None, causation_id is not None,
                occurred is not None,
            ],
            values,
        )
    except sqlite3.IntegrityError:
        raise_if_recorded(connection, texts, rows, head)
        raise
    if not current:
        connection.execute(
            "INSERT OR IGNORE INTO streams (stream_id, stream_type, created_at) "
            "VALUES (?, ?, ?)",
            (stream_id, kind, stamp),
        )
    return Appended(kind, current + 1, range(head + 1, head + 1 + len(rows)), created_at)


def raise_if_recorded(
    connection: sqlite3.Connection, texts: SharedTexts, rows: Sequence[EventRow], head: int
) -> None:
    """Raise AlreadyRecorded with the events of `rows` recorded before this append
    (position <= head: the rows a failed append inserted before its conflict are visible
    here until the rollback)."""
    marks = ",".join("?" * len(rows))
    found = connection.execute(
        f"SELECT {COLUMNS} FROM event_store WHERE id IN ({marks}) AND position <= ? "
        "ORDER BY position",
        [*(id_value(row.id) for row in rows), head],
    ).fetchall()
    if found:
        raise AlreadyRecorded(fetch_events(lambda: found, texts.page(connection)))
