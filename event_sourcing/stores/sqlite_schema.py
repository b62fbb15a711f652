"""The SQLite store's schema (v7), its migrations from every older version, and how ids and
times are stored: an event id as its UUID's 16 bytes, a time (created_at, and occurred_at
when given) as INTEGER microseconds since 1970-01-01 UTC, and a stream type, event type or
metadata as the number of its text in `event_texts` (event_sourcing.stores.sqlite_texts).
All decode back to the same values (a str UUID, a tz-aware datetime, the text), and to the
exact text the hashes cover (docs/integrity.md), so the hash definition is unchanged.

A value the migration could not turn into its compact form exactly (an id that is not
canonical UUID text, a time that is not the store's ISO text) stays text; every decoder
takes both.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from event_sourcing.integrity.hashing import GENESIS, chain_hash, content_hash, timestamp_text
from event_sourcing.privacy.keys import DDL as KEY_TABLE_DDL

SCHEMA_VERSION = 7

# The table as v5 made it (the v5 migration rebuilds into it; v6 adds occurred_at).
_EVENT_STORE_V5 = """
CREATE TABLE IF NOT EXISTS event_store (
    position       INTEGER PRIMARY KEY,
    id             BLOB NOT NULL UNIQUE,  -- the UUID's 16 bytes
    stream_id      TEXT NOT NULL,
    stream_type    TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL DEFAULT '{}',
    created_at     INTEGER NOT NULL,  -- microseconds since 1970-01-01T00:00:00Z
    correlation_id TEXT,
    causation_id   TEXT,
    content_hash   BLOB,  -- integrity: docs/integrity.md
    chain_hash     BLOB,
    UNIQUE (stream_id, version)
);
"""
_OCCURRED_AT = (
    "occurred_at    INTEGER"  # business time if given; NULL: created_at (docs/temporal.md)
)
# v7: stream type, event type and metadata are numbers of texts in event_texts.
_EVENT_STORE = """
CREATE TABLE IF NOT EXISTS event_store (
    position       INTEGER PRIMARY KEY,
    id             BLOB NOT NULL UNIQUE,  -- the UUID's 16 bytes
    stream_id      TEXT NOT NULL,
    stream_type    INTEGER NOT NULL,  -- event_texts.id
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_type     INTEGER NOT NULL,  -- event_texts.id
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       INTEGER NOT NULL,  -- event_texts.id
    created_at     INTEGER NOT NULL,  -- microseconds since 1970-01-01T00:00:00Z
    correlation_id TEXT,
    causation_id   TEXT,
    content_hash   BLOB,  -- integrity: docs/integrity.md
    chain_hash     BLOB,
    """ + _OCCURRED_AT + """,
    UNIQUE (stream_id, version)
);
"""
# Texts events share (stream types, event types, metadata), each stored once; an event
# row holds their numbers (event_sourcing.stores.sqlite_texts). Append-only like the log.
_EVENT_TEXTS = """
CREATE TABLE IF NOT EXISTS event_texts (
    id   INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS mlevents_schema (
    version     INTEGER PRIMARY KEY,
    applied_at  TEXT NOT NULL,
    description TEXT NOT NULL
);
-- One row per stream, written by its first append; its version is its events' highest.
CREATE TABLE IF NOT EXISTS streams (
    stream_id   TEXT PRIMARY KEY CHECK (length(stream_id) BETWEEN 1 AND 255),
    stream_type TEXT NOT NULL,
    created_at  TEXT NOT NULL
);""" + _EVENT_TEXTS + _EVENT_STORE + """
-- Every index has a query that needs it (bench/bench_storage.py prints them); reads by
-- time filter the position range they scan, so created_at has none.
CREATE INDEX IF NOT EXISTS idx_event_store_type ON event_store (event_type, position);
CREATE INDEX IF NOT EXISTS idx_event_store_correlation ON event_store (correlation_id)
    WHERE correlation_id IS NOT NULL;
-- Dated events (business time given) in business-time order: bitemporal reads
-- (stores.business_time); it holds only the dated rows.
CREATE INDEX IF NOT EXISTS idx_event_store_occurred ON event_store (occurred_at, position)
    WHERE occurred_at IS NOT NULL;
-- Where the last successful `mlevents verify` got to (event_sourcing.integrity.audit).
CREATE TABLE IF NOT EXISTS mlevents_integrity_checkpoint (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    seal_version  BIGINT NOT NULL,
    seal_chain    TEXT NOT NULL,
    seal_to       BIGINT NOT NULL,
    head_position BIGINT NOT NULL,
    head_chain    TEXT NOT NULL,
    verified_at   TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS event_store_no_update BEFORE UPDATE ON event_store
BEGIN
    SELECT RAISE(ABORT, 'event_store is append-only: events cannot be updated');
END;
CREATE TRIGGER IF NOT EXISTS event_store_no_delete BEFORE DELETE ON event_store
BEGIN
    SELECT RAISE(ABORT, 'event_store is append-only: events cannot be deleted');
END;
CREATE TRIGGER IF NOT EXISTS event_texts_no_update BEFORE UPDATE ON event_texts
BEGIN
    SELECT RAISE(ABORT, 'event_texts is append-only: texts cannot be updated');
END;
CREATE TRIGGER IF NOT EXISTS event_texts_no_delete BEFORE DELETE ON event_texts
BEGIN
    SELECT RAISE(ABORT, 'event_texts is append-only: texts cannot be deleted');
END;
CREATE TRIGGER IF NOT EXISTS event_texts_no_replace BEFORE INSERT ON event_texts
WHEN EXISTS (SELECT 1 FROM event_texts WHERE id = NEW.id)
    OR EXISTS (SELECT 1 FROM event_texts WHERE text = NEW.text)
BEGIN
    SELECT RAISE(ABORT, 'event_texts is append-only: an insert may not replace a text');
END;
-- REPLACE (INSERT OR REPLACE, REPLACE INTO, an upsert) deletes the rows an insert collides
-- with and fires no DELETE trigger: refuse any insert that collides, or that would slip an
-- event in below the head (positions only grow). Three index seeks per event.
CREATE TRIGGER IF NOT EXISTS event_store_no_replace BEFORE INSERT ON event_store
WHEN NEW.position <= (SELECT max(position) FROM event_store)
    OR EXISTS (SELECT 1 FROM event_store WHERE id = NEW.id)
    OR EXISTS (SELECT 1 FROM event_store
               WHERE stream_id = NEW.stream_id AND version = NEW.version)
BEGIN
    SELECT RAISE(ABORT, 'event_store is append-only: an insert may not replace an event');
END;
"""
# The subject key table (event_sourcing.privacy.keys), created with the store so that a role
# without CREATE (`mlevents grant ... appender`) can append personal data.
SCHEMA += f"{KEY_TABLE_DDL};\n"

DESCRIPTIONS = {
    1: "event_store, streams, append-only triggers",
    2: "streams without a version counter",
    3: "inserts cannot replace events or precede the head",
    4: "per-stream hash chains (content_hash, chain_hash)",
    5: "ids as 16-byte UUIDs, times as integer microseconds, no created_at index",
    6: "business time (occurred_at)",
    7: "stream types, event types and metadata stored once (event_texts)",
}


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (so they can run in our transaction:
    executescript would commit it first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


def holds_a_store(path: str) -> bool:
    """Whether the file at `path` exists and holds a store, looked at read-only (so a file
    that is not a store is left exactly as it was). Unreadable: let the real open say why."""
    if not Path(path).is_file():
        return False
    try:
        probe = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return True
    try:
        return probe.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mlevents_schema'"
        ).fetchone() is not None
    except sqlite3.Error:
        return True
    finally:
        probe.close()


# -- ids and times -------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def id_value(event_id: str) -> bytearray:
    """A canonical UUID text (what the store writes) as stored: its 16 bytes (a bytearray,
    which sqlite3 binds without looking for an adapter, unlike bytes)."""
    return bytearray.fromhex(event_id.replace("-", ""))


def id_param(event_id: str) -> bytes | str:
    """Any id a caller looks up, as stored (text that is no UUID cannot match)."""
    try:
        return uuid.UUID(event_id).bytes
    except ValueError:
        return event_id


def id_text(value: bytes | str) -> str:
    """A stored id as canonical UUID text."""
    if type(value) is not bytes:
        return str(value)
    h = value.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def time_value(value: datetime) -> int:
    """A UTC datetime as stored: microseconds since the Unix epoch."""
    return (value - _EPOCH) // _MICROSECOND


def time_of(value: int | str) -> datetime:
    """A stored time as a UTC datetime."""
    if type(value) is int:
        return _EPOCH + timedelta(microseconds=value)
    return datetime.fromisoformat(str(value))


def time_text(value: int | str) -> str:
    """A stored time as the text its hash covers (hashing.timestamp_text)."""
    return timestamp_text(time_of(value)) if type(value) is int else str(value)


def _compact_id(value: bytes | str) -> bytes | str:
    if type(value) is not str:
        return value
    try:
        compact = uuid.UUID(value).bytes
    except ValueError:
        return value
    return compact if id_text(compact) == value else value


def _compact_time(value: int | str) -> int | str:
    if type(value) is not str:
        return value
    try:
        compact = time_value(datetime.fromisoformat(value))
    except (ValueError, TypeError, OverflowError):
        return value
    return compact if time_text(compact) == value else value


# -- migrations ---------------------------------------------------------------------------------
# What a database at each older version needs before SCHEMA brings it up to date.
MIGRATIONS = {
    # v2: a stream's version is its events' highest, not a counter updated by every append.
    1: """
    ALTER TABLE streams DROP COLUMN version;
    ALTER TABLE streams DROP COLUMN updated_at;
    """,
    # v3: the event_store_no_replace trigger (created by SCHEMA).
    2: "",
    # v4: content and chain hashes (tamper evidence); _add_hashes computes them in order.
    3: "DROP TRIGGER IF EXISTS event_store_no_update;",
    # v5: the table is rebuilt (_compact) with ids and times in their compact form.
    4: """
    DROP TRIGGER IF EXISTS event_store_no_update;
    DROP TRIGGER IF EXISTS event_store_no_delete;
    DROP TRIGGER IF EXISTS event_store_no_replace;
    DROP INDEX IF EXISTS idx_event_store_type;
    DROP INDEX IF EXISTS idx_event_store_time;
    DROP INDEX IF EXISTS idx_event_store_correlation;
    ALTER TABLE event_store RENAME TO event_store_v4;
    """,
    # v6: business time; _add_occurred_at adds the column (its partial index: SCHEMA).
    5: "",
    # v7: the table is rebuilt (_share_texts) with its shared texts in event_texts.
    6: """
    DROP TRIGGER IF EXISTS event_store_no_update;
    DROP TRIGGER IF EXISTS event_store_no_delete;
    DROP TRIGGER IF EXISTS event_store_no_replace;
    DROP INDEX IF EXISTS idx_event_store_type;
    DROP INDEX IF EXISTS idx_event_store_correlation;
    DROP INDEX IF EXISTS idx_event_store_occurred;
    ALTER TABLE event_store RENAME TO event_store_v6;
    """,
}
_COPIED = (
    "position, id, stream_id, stream_type, version, event_type, schema_version, payload, "
    "metadata, created_at, correlation_id, causation_id, content_hash, chain_hash"
)


def _add_hashes(connection: sqlite3.Connection) -> None:
    """Migration to v4: add the hash columns and compute every chain in position order
    (the update trigger is dropped by the SQL step; the schema script recreates it)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(event_store)")}
    for name in ("content_hash", "chain_hash"):
        if name not in columns:
            connection.execute(f"ALTER TABLE event_store ADD COLUMN {name} BLOB")
    heads: dict[str, bytes] = {}
    updates = []
    for row in connection.execute(
        "SELECT position, id, stream_id, stream_type, version, event_type, schema_version, "
        "CAST(payload AS BLOB), CAST(metadata AS BLOB), created_at, correlation_id, "
        "causation_id FROM event_store ORDER BY position"
    ):
        content = content_hash(
            id_text(row[1]), row[2], row[5], row[6], row[7], row[8], time_text(row[9]),
            row[10], row[11],
        )
        chain = chain_hash(heads.get(row[2], GENESIS), row[4], row[3], content)
        heads[row[2]] = chain
        updates.append((content, chain, row[0]))
    connection.executemany(
        "UPDATE event_store SET content_hash = ?, chain_hash = ? WHERE position = ?", updates
    )


def _compact(connection: sqlite3.Connection) -> None:
    """Migration to v5: copy every event, in position order, into the new table with its id
    and time in compact form (exact: each decodes to the text it was hashed as)."""
    connection.create_function("mlevents_compact_id", 1, _compact_id, deterministic=True)
    connection.create_function("mlevents_compact_time", 1, _compact_time, deterministic=True)
    connection.execute(_EVENT_STORE_V5)
    copied = _COPIED.replace(" id,", " mlevents_compact_id(id),").replace(
        " created_at,", " mlevents_compact_time(created_at),"
    )
    connection.execute(
        f"INSERT INTO event_store ({_COPIED}) SELECT {copied} FROM event_store_v4 "
        "ORDER BY position"
    )
    connection.execute("DROP TABLE event_store_v4")


def _add_occurred_at(connection: sqlite3.Connection) -> None:
    """Migration to v6: the occurred_at column (NULL for every event recorded before)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(event_store)")}
    if "occurred_at" not in columns:  # (SQLite has no ADD COLUMN IF NOT EXISTS)
        connection.execute(f"ALTER TABLE event_store ADD COLUMN {_OCCURRED_AT}")


def _share_texts(connection: sqlite3.Connection) -> None:
    """Migration to v7: each distinct stream type, event type and metadata text stored once
    in event_texts, and every event copied, in position order, with their numbers. (A
    value no text matches, which the v6 table could not hold, would be kept as it was.)"""
    connection.execute(_EVENT_TEXTS)
    connection.execute(
        "INSERT INTO event_texts (text) SELECT stream_type FROM event_store_v6 "
        "UNION SELECT event_type FROM event_store_v6 UNION SELECT metadata FROM event_store_v6"
    )
    connection.execute(_EVENT_STORE)
    connection.execute(
        f"INSERT INTO event_store ({_COPIED}, occurred_at) SELECT o.position, o.id, "
        "o.stream_id, coalesce(s.id, o.stream_type), o.version, coalesce(t.id, o.event_type), "
        "o.schema_version, o.payload, coalesce(m.id, o.metadata), o.created_at, "
        "o.correlation_id, o.causation_id, o.content_hash, o.chain_hash, o.occurred_at "
        "FROM event_store_v6 AS o "
        "LEFT JOIN event_texts AS s ON s.text = o.stream_type "
        "LEFT JOIN event_texts AS t ON t.text = o.event_type "
        "LEFT JOIN event_texts AS m ON m.text = o.metadata ORDER BY o.position"
    )
    copied, kept = connection.execute(
        "SELECT (SELECT count(*) FROM event_store), (SELECT count(*) FROM event_store_v6)"
    ).fetchone()
    if copied != kept:  # (cannot happen: every row is copied; never drop one unnoticed)
        raise sqlite3.DatabaseError(f"migration to v7 copied {copied} of {kept} events")
    connection.execute("DROP TABLE event_store_v6")


# Python run after a version's SQL
MIGRATION_STEPS = {3: _add_hashes, 4: _compact, 5: _add_occurred_at, 6: _share_texts}


def write_schema(connection: sqlite3.Connection, found: int | None) -> None:
    """In the caller's write transaction: a database at schema version `found` (None: a new
    one) migrated to SCHEMA_VERSION, the current schema's objects created where missing
    and the version recorded."""
    for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
        for statement in statements(MIGRATIONS[version]):
            connection.execute(statement)
        if version in MIGRATION_STEPS:
            MIGRATION_STEPS[version](connection)
    for statement in statements(SCHEMA):
        connection.execute(statement)
    connection.execute(
        "INSERT INTO mlevents_schema VALUES (?, datetime('now'), ?)",
        (SCHEMA_VERSION, DESCRIPTIONS[SCHEMA_VERSION]),
    )


# sqlite3 binds int, str and bytearray directly but looks for an adapter for bytes and None
# (~0.3 us a value): hashes are bound as bytearrays, and a batch without a correlation or
# causation id, or without any occurred_at, has NULL in its statement (the key: whether
# each is given).
INSERT = {
    (correlated, caused, dated): (
        "INSERT INTO event_store (position, id, stream_id, stream_type, version, event_type, "
        "schema_version, payload, metadata, created_at, correlation_id, causation_id, "
        "content_hash, chain_hash, occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        f"{'?' if correlated else 'NULL'}, {'?' if caused else 'NULL'}, ?, ?, "
        f"{'?' if dated else 'NULL'})"
    )
    for correlated in (False, True)
    for caused in (False, True)
    for dated in (False, True)
}
