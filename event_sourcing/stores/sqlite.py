"""SQLite recorder: the embedded default backend (one file, WAL mode, no set-up).

Writers serialize on SQLite's own write lock (BEGIN IMMEDIATE), so positions are handed
out in commit order and a reader can never see a lower position appear later.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from event_sourcing.errors import ConcurrencyError, SchemaVersionError, StoreUnavailableError
from event_sourcing.events import RecordedEvent
from event_sourcing.integrity.hashing import (
    GENESIS,
    append_hashes,
    chain_hash,
    content_hash,
    fold_chain,
    timestamp_text,
)
from event_sourcing.stores.recorder import AlreadyRecorded, Appended, EventRow

SCHEMA_VERSION = 3

_SCHEMA = """
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
);
CREATE TABLE IF NOT EXISTS event_store (
    position       INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    stream_id      TEXT NOT NULL,
    stream_type    TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL,
    correlation_id TEXT,
    causation_id   TEXT,
    content_hash   BLOB,  -- integrity: docs/integrity.md
    chain_hash     BLOB,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS idx_event_store_type ON event_store (event_type, position);
CREATE INDEX IF NOT EXISTS idx_event_store_time ON event_store (created_at);
CREATE INDEX IF NOT EXISTS idx_event_store_correlation ON event_store (correlation_id)
    WHERE correlation_id IS NOT NULL;
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
"""

_COLUMNS = (
    "id, stream_id, stream_type, version, position, event_type, schema_version, "
    "payload, metadata, created_at, correlation_id, causation_id"
)
# What a database at each older schema version needs before _SCHEMA brings it up to date.
_MIGRATIONS = {
    # v2: a stream's version is its events' highest, not a counter updated by every append.
    1: """
    ALTER TABLE streams DROP COLUMN version;
    ALTER TABLE streams DROP COLUMN updated_at;
    """,
    # v3: content and chain hashes (tamper evidence); _add_hashes computes them in order.
    2: "DROP TRIGGER IF EXISTS event_store_no_update;",
}
_DESCRIPTIONS = {
    1: "event_store, streams, append-only triggers",
    2: "streams without a version counter",
    3: "per-stream hash chains (content_hash, chain_hash)",
}
_HASHED = (
    "position, id, stream_id, stream_type, version, event_type, schema_version, payload, "
    "metadata, created_at, correlation_id, causation_id, content_hash, chain_hash"
)
# The same, with payload and metadata as their UTF-8 bytes (what is hashed; no decoding).
_HASHED_BYTES = _HASHED.replace(
    "payload, metadata,", "CAST(payload AS BLOB), CAST(metadata AS BLOB),"
)


def _add_hashes(connection: sqlite3.Connection) -> None:
    """Migration to v3: add the hash columns and compute every chain in position order
    (the update trigger is dropped by the SQL step; the schema script recreates it)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(event_store)")}
    for name in ("content_hash", "chain_hash"):
        if name not in columns:
            connection.execute(f"ALTER TABLE event_store ADD COLUMN {name} BLOB")
    heads: dict[str, bytes] = {}
    updates = []
    for row in connection.execute(f"SELECT {_HASHED} FROM event_store ORDER BY position"):
        content = content_hash(*row[1:3], *row[5:12])
        chain = chain_hash(heads.get(row[2], GENESIS), row[4], row[3], content)
        heads[row[2]] = chain
        updates.append((content, chain, row[0]))
    connection.executemany(
        "UPDATE event_store SET content_hash = ?, chain_hash = ? WHERE position = ?", updates
    )


_MIGRATION_STEPS = {2: _add_hashes}  # Python run after a version's SQL


_INSERT = (
    "INSERT INTO event_store (position, id, stream_id, stream_type, version, event_type, "
    "schema_version, payload, metadata, created_at, correlation_id, causation_id, "
    "content_hash, chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Fixed-width ISO 8601 in UTC sorts as text, which `until` filters rely on.
_ts = timestamp_text


def _event(row: tuple[Any, ...]) -> RecordedEvent:
    return RecordedEvent(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6],
        json.loads(row[7]), json.loads(row[8]), datetime.fromisoformat(row[9]),
        row[10], row[11], row[6],
    )


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (so they can run in our transaction:
    executescript would commit it first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


def page_query(
    after: int, event_types: Collection[str] | None, until: datetime | None, limit: int
) -> tuple[str, list[Any]]:
    """The keyset query of one page of the global log: a range seek on the rowid."""
    where: list[str] = ["position > ?"]
    params: list[Any] = [after]
    if event_types is not None:
        where.append(f"event_type IN ({','.join('?' * len(event_types))})")
        params.extend(event_types)
    if until is not None:
        where.append("created_at <= ?")
        params.append(_ts(until))
    params.append(limit)
    query = (
        f"SELECT {_COLUMNS} FROM event_store WHERE {' AND '.join(where)} "
        "ORDER BY position LIMIT ?"
    )
    return query, params


class _Transaction:
    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._connection.execute(sql, params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self._connection.executemany(sql, params)


class SQLiteRecorder:
    """Events in one SQLite file. A connection per thread; `:memory:` shares one."""

    dialect = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30000):
        self.path = path
        self.description = f"sqlite:///{path}"
        self._memory = path == ":memory:"
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous}")
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.RLock()  # only used for :memory:, which has one connection
        self._connections: list[sqlite3.Connection] = []
        self._shared: sqlite3.Connection | None = None
        self._closed = False
        if not self._memory:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot create the folder for sqlite:///{path}: {exc}"
                ) from exc
        with self._connection() as connection:
            self._create_schema(connection)

    # -- connections --------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                # Each thread uses its own connection; close() may run on another thread.
                self.path, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if not self._memory:
                connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(
                f"cannot open SQLite database sqlite:///{self.path}: {exc}; check the path "
                "exists and is writable"
            ) from exc
        self._connections.append(connection)
        return connection

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StoreUnavailableError(f"the store {self.description} is closed")
        if self._memory:
            with self._lock:
                if self._shared is None:
                    self._shared = self._open()
                yield self._shared
            return
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open()
        yield connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("BEGIN IMMEDIATE")
            found = None
            if connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'mlevents_schema'"
            ).fetchone():
                found = connection.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                connection.execute("ROLLBACK")
                raise SchemaVersionError(
                    f"database {self.description} has schema version {found}, newer than this "
                    f"mlevents knows ({SCHEMA_VERSION}); upgrade mlevents"
                )
            if found != SCHEMA_VERSION:
                for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
                    for statement in _statements(_MIGRATIONS[version]):
                        connection.execute(statement)
                    if version in _MIGRATION_STEPS:
                        _MIGRATION_STEPS[version](connection)
                for statement in _statements(_SCHEMA):
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO mlevents_schema VALUES (?, datetime('now'), ?)",
                    (SCHEMA_VERSION, _DESCRIPTIONS[SCHEMA_VERSION]),
                )
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise StoreUnavailableError(
                f"cannot create the event store schema in {self.description}: {exc}"
            ) from exc

    def close(self) -> None:
        self._closed = True
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        self._shared = None
        self._local = threading.local()

    # -- writing ------------------------------------------------------------------------
    def append(
        self,
        stream_id: str,
        stream_type: str | None,
        expected_version: int | None,
        rows: Sequence[EventRow],
        created_at: datetime,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Appended:
        now = _ts(created_at)
        contents, _ = append_hashes(rows, stream_id, now, correlation_id, causation_id)
        with self._write() as connection:
            # (SQLite gives the bare columns of the row holding max(version).)
            head, current, kind, chain = connection.execute(
                "SELECT (SELECT coalesce(max(position), 0) FROM event_store), "
                "coalesce(max(version), 0), stream_type, chain_hash FROM event_store "
                "WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
            kind = kind or stream_type or "default"
            if expected_version is not None and current != expected_version:
                self._raise_if_recorded(connection, rows)
                raise ConcurrencyError(stream_id, expected_version, current)
            chains = fold_chain(chain or GENESIS, current, kind, contents)
            try:
                connection.executemany(
                    _INSERT,
                    [
                        (head + n, row.id, stream_id, kind, current + n, row.event_type,
                         row.schema_version, row.payload_json, row.metadata_json, now,
                         correlation_id, causation_id, content, chain)
                        for n, (row, content, chain) in enumerate(
                            zip(rows, contents, chains, strict=True), start=1
                        )
                    ],
                )
            except sqlite3.IntegrityError:
                self._raise_if_recorded(connection, rows)
                raise
            if not current:
                connection.execute(
                    "INSERT OR IGNORE INTO streams (stream_id, stream_type, created_at) "
                    "VALUES (?, ?, ?)",
                    (stream_id, kind, now),
                )
        return Appended(kind, current + 1, range(head + 1, head + 1 + len(rows)))

    def _raise_if_recorded(self, connection: sqlite3.Connection, rows: Sequence[EventRow]) -> None:
        marks = ",".join("?" * len(rows))
        found = connection.execute(
            f"SELECT {_COLUMNS} FROM event_store WHERE id IN ({marks}) ORDER BY position",
            [row.id for row in rows],
        ).fetchall()
        if found:
            raise AlreadyRecorded([_event(row) for row in found])

    # -- integrity (event_sourcing.integrity) ---------------------------------------------
    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        """Rows (position order) as hashed: position, id, stream, stream type, version, type,
        schema version, payload, metadata (UTF-8 bytes), time, correlation, causation,
        content hash, chain hash."""
        with self._connection() as connection:
            return connection.execute(
                f"SELECT {_HASHED_BYTES} FROM event_store WHERE position > ? "
                "AND position <= ? ORDER BY position LIMIT ?",
                (after, through, limit),
            ).fetchall()

    def restore_triggers(self) -> tuple[list[str], str | None]:
        """Recreate missing append-only triggers: (what was wrong, why it could not be
        fixed or None)."""
        expected = re.findall(
            r"CREATE\s+(?:TEMP\w*\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", _SCHEMA,
            re.IGNORECASE,
        )
        with self._connection() as connection:
            present = {
                row[0] for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                )
            }
        found = [f"trigger {name} was missing" for name in expected if name not in present]
        if not found:
            return [], None
        try:
            with self._write() as connection:
                for statement in _statements(_SCHEMA):
                    connection.execute(statement)
        except sqlite3.Error as exc:
            return found, str(exc)
        return found, None

    # -- reading ------------------------------------------------------------------------
    def _select(self, sql: str, params: Sequence[Any]) -> list[RecordedEvent]:
        with self._connection() as connection:
            return [_event(row) for row in connection.execute(sql, params).fetchall()]

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE stream_id = ? AND version >= ? "
            "AND version <= ? ORDER BY version",
            (stream_id, from_version, to_version if to_version is not None else 2**62),
        )

    def read_page(
        self,
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        if event_types is not None and not event_types:
            return []
        return self._select(*page_query(after, event_types, until, limit))

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE correlation_id = ? ORDER BY position",
            (correlation_id,),
        )

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE id IN ({','.join('?' * len(ids))}) "
            "ORDER BY position",
            list(ids),
        )

    def stream_version(self, stream_id: str) -> int:
        with self._connection() as connection:
            row = connection.execute(
                "SELECT coalesce(max(version), 0) FROM event_store WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
        return int(row[0])

    def head_position(self) -> int:
        with self._connection() as connection:
            row = connection.execute("SELECT coalesce(max(position), 0) FROM event_store")
            return int(row.fetchone()[0])

    def counts_by_type(self) -> dict[str, int]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT event_type, count(*) FROM event_store GROUP BY event_type ORDER BY 1"
            ).fetchall()
        return dict(rows)

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        with self._write() as connection:
            yield _Transaction(connection)
