"""SQLite recorder: the embedded default backend (one file, WAL mode, no set-up).

Writers serialize on SQLite's own write lock (BEGIN IMMEDIATE), so positions are handed
out in commit order and a reader can never see a lower position appear later.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from event_sourcing.errors import (
    SchemaVersionError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.integrity.hashing import append_hashes, timestamp_text
from event_sourcing.stores.business_time import UNDATED, dated_page_query
from event_sourcing.stores.imports import ImportRow
from event_sourcing.stores.per_thread import PerThread
from event_sourcing.stores.recorder import (
    MAX_SEEK_BRANCHES,
    Appended,
    EventRow,
    fetch_events,
    migrating,
)
from event_sourcing.stores.sqlite_append import append_rows
from event_sourcing.stores.sqlite_errors import store_error
from event_sourcing.stores.sqlite_import import import_rows
from event_sourcing.stores.sqlite_schema import (
    SCHEMA,
    SCHEMA_VERSION,
    holds_a_store,
    id_param,
    id_text,
    statements,
    time_text,
    time_value,
    write_schema,
)
from event_sourcing.stores.sqlite_texts import COLUMNS, SharedTexts

# What is hashed, the payload as its UTF-8 bytes (no decoding).
_HASHED = (
    "position, id, stream_id, stream_type, version, event_type, schema_version, "
    "CAST(payload AS BLOB), metadata, created_at, correlation_id, causation_id, "
    "content_hash, chain_hash, occurred_at"
)


def page_query(
    after: int,
    event_types: Collection[int] | None,
    until: datetime | None,
    limit: int,
    undated_only: bool = False,
) -> tuple[str, list[Any]]:
    """The keyset query of one page of the global log: a range seek on the rowid, or with a
    type filter (`event_types`: the types' numbers, sqlite_texts) one ordered seek of the
    (event_type, position) index per type, merged."""
    time_filter = (" AND created_at <= ?" if until is not None else "") + (
        UNDATED if undated_only else ""
    )
    stamp = [time_value(until)] if until is not None else []
    types = sorted(set(event_types)) if event_types is not None else []
    if event_types is None:
        query = f"SELECT {COLUMNS} FROM event_store WHERE position > ?{time_filter}"
        params: list[Any] = [after, *stamp]
    elif len(types) > MAX_SEEK_BRANCHES:  # SQLite allows 500 terms in a compound SELECT
        marks = ", ".join("?" * len(types))
        query = (
            f"SELECT {COLUMNS} FROM event_store WHERE position > ? "
            f"AND event_type IN ({marks}){time_filter}"
        )
        params = [after, *types, *stamp]
    else:
        branches, params = [], []
        for event_type in types:
            branches.append(
                f"SELECT {COLUMNS} FROM event_store WHERE position > ? AND event_type = ?"
                f"{time_filter}"
            )
            params += [after, event_type, *stamp]
        query = " UNION ALL ".join(branches)
    params.append(limit)
    return f"{query} ORDER BY position LIMIT ?", params


class _Transaction:
    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._connection.execute(sql, params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self._connection.executemany(sql, params)

    def table_exists(self, table: str) -> bool:
        return self._connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone() is not None

    def lock(self, key: int) -> None:
        """Nothing to do: a write transaction holds SQLite's one write lock already."""


class SQLiteRecorder:
    """Events in one SQLite file. A connection per thread; `:memory:` shares one."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30000,
        create: bool = True,
    ) -> None:
        self.path = path
        self.description = f"sqlite:///{path}"
        self._memory = path == ":memory:"
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous}")
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        # A connection per thread, closed when its thread ends (or the store is closed).
        self._per_thread = PerThread(self._open, sqlite3.Connection.close)
        self._lock = threading.RLock()  # only used for :memory:, which has one connection
        self._shared: sqlite3.Connection | None = None
        self._closed = False
        self._create = create
        self._texts = SharedTexts()  # stream types, event types and metadata, numbered
        if not create and (self._memory or not holds_a_store(path)):
            raise StoreNotFoundError(f"no event store at {self.description}")
        if not self._memory:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot create the folder for sqlite:///{path}: {exc}"
                ) from exc
        try:
            with self._connection() as connection:
                self._create_schema(connection)
        except BaseException:
            self.close()
            raise

    # -- connections --------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = None
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
            if connection is not None:
                connection.close()
            raise StoreUnavailableError(
                f"cannot open SQLite database sqlite:///{self.path}: {exc}; check the path "
                "exists and is writable"
            ) from exc
        return connection

    def _shared_connection(self) -> sqlite3.Connection:
        """The one connection of `:memory:` (call with self._lock held)."""
        if self._shared is None:
            self._shared = self._open()
        return self._shared

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (`:memory:`: the one shared, under a lock). A sqlite3
        error escaping the block is raised as an EventStoreError."""
        if self._closed:
            raise StoreUnavailableError(f"the store {self.description} is closed")
        try:
            if self._memory:
                with self._lock:
                    yield self._shared_connection()
            else:
                yield self._per_thread.get()
        except sqlite3.Error as exc:
            raise store_error(exc, self.description) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:  # SQLite may have rolled back already
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _found_version(self, connection: sqlite3.Connection) -> int | None:
        if connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mlevents_schema'"
        ).fetchone():
            found = connection.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0]
            return None if found is None else int(found)
        return None

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        """Bring the database to SCHEMA_VERSION; no write at all when it is there already."""
        try:
            if self._found_version(connection) == SCHEMA_VERSION:
                return
            connection.execute("BEGIN IMMEDIATE")
            found = self._found_version(connection)
            if found is None and not self._create:
                connection.execute("ROLLBACK")
                raise StoreNotFoundError(f"no event store at {self.description}")
            if found is not None and found > SCHEMA_VERSION:
                connection.execute("ROLLBACK")
                raise SchemaVersionError(
                    f"database {self.description} has schema version {found}, newer than this "
                    f"mlevents knows ({SCHEMA_VERSION}); upgrade mlevents"
                )
            if not found:
                write_schema(connection, None)
            elif found != SCHEMA_VERSION:  # (else migrated meanwhile, by another connection)
                head = connection.execute(
                    "SELECT coalesce(max(position), 0) FROM event_store"
                ).fetchone()[0]
                with migrating(self.description, found, SCHEMA_VERSION, head):
                    write_schema(connection, found)
                    connection.execute("COMMIT")
                return
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise StoreUnavailableError(
                f"cannot create the event store schema in {self.description}: {exc}"
            ) from exc

    def close(self) -> None:
        self._closed = True
        self._per_thread.close_all()
        if self._shared is not None:
            self._shared.close()
            self._shared = None

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
        stamp = timestamp_text(created_at)  # hashed as text, stored as microseconds
        contents, _ = append_hashes(rows, stream_id, stamp, correlation_id, causation_id)
        # What _write() does, written out: its two generator context managers cost more
        # than the rest of a single event's Python here.
        if self._closed:
            raise StoreUnavailableError(f"the store {self.description} is closed")
        lock = self._lock if self._memory else None
        if lock is not None:
            lock.acquire()
        try:
            connection = self._shared_connection() if lock is not None else self._per_thread.get()
            connection.execute("BEGIN IMMEDIATE")
            fresh: dict[str, int] = {}  # texts numbered by this transaction
            try:
                appended = append_rows(
                    connection, self._texts, stream_id, stream_type, expected_version, rows,
                    created_at, correlation_id, causation_id, stamp, contents, fresh,
                )
            except BaseException:
                if connection.in_transaction:  # SQLite may have rolled back already
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            if fresh:
                self._texts.learn(fresh)
            return appended
        except sqlite3.Error as exc:
            raise store_error(exc, self.description) from exc
        finally:
            if lock is not None:
                lock.release()

    def import_rows(self, rows: Sequence[ImportRow], created_at: datetime) -> None:
        """Write a bulk-import batch in one transaction (event_sourcing.stores.sqlite_import)."""
        fresh: dict[str, int] = {}  # texts numbered by this transaction
        with self._write() as connection:
            import_rows(connection, self._texts, fresh, rows, created_at)
        self._texts.learn(fresh)

    # -- integrity (event_sourcing.integrity) ---------------------------------------------
    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        """Rows (position order) as hashed: position, id, stream, stream type, version, type,
        schema version, payload, metadata (UTF-8 bytes), time, correlation, causation,
        content hash, chain hash, occurred_at (or NULL); the id and times as the text hashed
        (sqlite_schema)."""
        with self._connection() as connection:
            rows = connection.execute(
                f"SELECT {_HASHED} FROM event_store WHERE position > ? "
                "AND position <= ? ORDER BY position LIMIT ?",
                (after, through, limit),
            ).fetchall()
            # The texts as stored now, not as this recorder cached them: an edit of
            # event_texts made since must show in what verify recomputes.
            stored = SharedTexts()
            stream_types = stored.texts(connection, [row[3] for row in rows])
            event_types = stored.texts(connection, [row[5] for row in rows])
            metadatas = stored.utf8(connection, [row[8] for row in rows])
        texts: dict[Any, str] = {}  # a batch's events share their time
        out = []
        for row, stream_type, event_type, metadata in zip(
            rows, stream_types, event_types, metadatas, strict=True
        ):
            stamp = texts.get(row[9])
            if stamp is None:
                stamp = texts[row[9]] = time_text(row[9])
            out.append((
                row[0], id_text(row[1]), row[2], stream_type, row[4], event_type, row[6],
                row[7], metadata, stamp, *row[10:14],
                None if row[14] is None else time_text(row[14]),
            ))
        return out

    # -- the archive: SQLite has none (docs/archive.md) ---------------------------------------
    def archived_chain(self, stream_id: str, version: int) -> bytes | None:
        return None

    def archived_counts(
        self, after: int, through: int, lowers: Collection[int]
    ) -> dict[str, tuple[int, int]]:
        return {}

    def archived_containing(
        self, needles: Sequence[str]
    ) -> dict[str, list[tuple[int, str, str]]]:
        return {needle: [] for needle in needles}

    def restore_triggers(self) -> tuple[list[str], str | None]:
        """Recreate missing append-only triggers: (what was wrong, why it could not be
        fixed or None)."""
        expected = re.findall(
            r"CREATE\s+(?:TEMP\w*\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", SCHEMA,
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
                for statement in statements(SCHEMA):
                    connection.execute(statement)
        except sqlite3.Error as exc:
            return found, str(exc)
        return found, None

    # -- reading ------------------------------------------------------------------------
    def _select(self, sql: str, params: Sequence[Any]) -> list[RecordedEvent]:
        with self._connection() as connection:
            return fetch_events(
                connection.execute(sql, params).fetchall, self._texts.page(connection)
            )

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {COLUMNS} FROM event_store WHERE stream_id = ? AND version >= ? "
            "AND version <= ? ORDER BY version",
            (stream_id, from_version, to_version if to_version is not None else 2**62),
        )

    def read_page(
        self,
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
        undated_only: bool = False,
    ) -> list[RecordedEvent]:
        if event_types is not None and not event_types:
            return []
        with self._connection() as connection:
            numbers = None if event_types is None else sorted(
                self._texts.known_numbers(connection, set(event_types)).values()
            )
            if numbers is not None and not numbers:  # no event has any of these types
                return []
            return fetch_events(
                connection.execute(*page_query(after, numbers, until, limit, undated_only))
                .fetchall,
                self._texts.page(connection),
            )

    def read_dated_page(
        self,
        after: tuple[datetime, int] | None,
        occurred_until: datetime,
        recorded_until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        return self._select(*dated_page_query(
            COLUMNS, "?", time_value, after, occurred_until, recorded_until, limit
        ))

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {COLUMNS} FROM event_store WHERE correlation_id = ? ORDER BY position",
            (correlation_id,),
        )

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {COLUMNS} FROM event_store WHERE id IN ({','.join('?' * len(ids))}) "
            "ORDER BY position",
            [id_param(event_id) for event_id in ids],
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
                "SELECT event_type, count(*) FROM event_store GROUP BY event_type"
            ).fetchall()
            names = self._texts.texts(connection, [row[0] for row in rows])
        counts: dict[str, int] = {}
        for name, (_, events) in zip(names, rows, strict=True):
            counts[name] = counts.get(name, 0) + events
        return dict(sorted(counts.items()))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read of a table beside the log (`?` placeholders), on this
        thread's connection (inside its open transaction, if any)."""
        with self._connection() as connection:
            return connection.execute(sql, params).fetchall()

    def checkpoint(self) -> bool:
        """Copy the WAL into the database file and empty it; False if readers kept part of
        it (after a secure delete, the WAL still holds the old pages until this succeeds)."""
        with self._connection() as connection:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return not busy

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[_Transaction]:
        if not read_only:
            with self._write() as connection:
                yield _Transaction(connection)
            return
        # A deferred transaction that only reads takes no write lock: appends go on (WAL).
        with self._connection() as connection:
            connection.execute("BEGIN DEFERRED")
            try:
                yield _Transaction(connection)
            finally:
                connection.execute("ROLLBACK")
