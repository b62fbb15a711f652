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
from itertools import count, repeat
from pathlib import Path
from typing import Any

from event_sourcing.errors import (
    AccessDeniedError,
    ConcurrencyError,
    EventStoreError,
    SchemaVersionError,
    StoreNotFoundError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.integrity.hashing import GENESIS, append_hashes, fold_chain, timestamp_text
from event_sourcing.stores.business_time import UNDATED, dated_page_query
from event_sourcing.stores.imports import ImportRow
from event_sourcing.stores.per_thread import PerThread
from event_sourcing.stores.recorder import (
    MAX_SEEK_BRANCHES,
    AlreadyRecorded,
    Appended,
    EventRow,
    fetch_events,
)
from event_sourcing.stores.sqlite_import import import_rows
from event_sourcing.stores.sqlite_schema import (
    DESCRIPTIONS,
    INSERT,
    MIGRATION_STEPS,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    id_param,
    id_text,
    id_value,
    ids_and_times,
    time_of,
    time_text,
    time_value,
)

# RecordedEvent's fields (the last is recorded_schema_version), payload and metadata as
# their UTF-8 bytes (decoded a page at a time: recorder.fetch_events; ids and times by
# sqlite_schema.ids_and_times).
_COLUMNS = (
    "id, stream_id, stream_type, version, position, event_type, schema_version, "
    "CAST(payload AS BLOB), CAST(metadata AS BLOB), created_at, correlation_id, causation_id, "
    "schema_version, occurred_at"
)
# What is hashed, payload and metadata as their UTF-8 bytes (no decoding).
_HASHED = (
    "position, id, stream_id, stream_type, version, event_type, schema_version, "
    "CAST(payload AS BLOB), CAST(metadata AS BLOB), created_at, correlation_id, causation_id, "
    "content_hash, chain_hash, occurred_at"
)


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


def _store_error(exc: sqlite3.Error, where: str) -> EventStoreError:
    """The EventStoreError a user sees for a sqlite3 error on `where` (as on PostgreSQL:
    event_sourcing.stores.postgres_errors)."""
    detail = str(exc)
    if "append-only" in detail:  # the immutability triggers
        return AccessDeniedError(f"{where} refused a statement: {detail}")
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in detail or "busy" in detail):
        return StoreTimeoutError(
            f"{where} stayed locked by another connection past the busy timeout ({detail}); "
            "nothing was written. Retry; find the process holding a long write transaction."
        )
    if "no such table" in detail:
        return StoreUnavailableError(
            f"{where} found no such object ({detail}): was the file replaced or the table "
            "dropped while the store was open?"
        )
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailableError(
            f"{where} failed: {detail}. Check the file, its folder's permissions and free "
            "disk space."
        )
    return EventStoreError(
        f"{where} failed with a database error ({type(exc).__name__}): {detail}"
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


def _holds_a_store(path: str) -> bool:
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


def page_query(
    after: int,
    event_types: Collection[str] | None,
    until: datetime | None,
    limit: int,
    undated_only: bool = False,
) -> tuple[str, list[Any]]:
    """The keyset query of one page of the global log: a range seek on the rowid, or with a
    type filter one ordered seek of the (event_type, position) index per type, merged."""
    time_filter = (" AND created_at <= ?" if until is not None else "") + (
        UNDATED if undated_only else ""
    )
    stamp = [time_value(until)] if until is not None else []
    types = sorted(set(event_types)) if event_types is not None else []
    if event_types is None:
        query = f"SELECT {_COLUMNS} FROM event_store WHERE position > ?{time_filter}"
        params: list[Any] = [after, *stamp]
    elif len(types) > MAX_SEEK_BRANCHES:  # SQLite allows 500 terms in a compound SELECT
        marks = ", ".join("?" * len(types))
        query = (
            f"SELECT {_COLUMNS} FROM event_store WHERE position > ? "
            f"AND event_type IN ({marks}){time_filter}"
        )
        params = [after, *types, *stamp]
    else:
        branches, params = [], []
        for event_type in types:
            branches.append(
                f"SELECT {_COLUMNS} FROM event_store WHERE position > ? AND event_type = ?"
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
        if not create and (self._memory or not _holds_a_store(path)):
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
            raise _store_error(exc, self.description) from exc

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
            if found != SCHEMA_VERSION:
                for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
                    for statement in _statements(MIGRATIONS[version]):
                        connection.execute(statement)
                    if version in MIGRATION_STEPS:
                        MIGRATION_STEPS[version](connection)
                for statement in _statements(SCHEMA):
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO mlevents_schema VALUES (?, datetime('now'), ?)",
                    (SCHEMA_VERSION, DESCRIPTIONS[SCHEMA_VERSION]),
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
            try:
                appended = self._append(
                    connection, stream_id, stream_type, expected_version, rows, created_at,
                    correlation_id, causation_id, stamp, contents,
                )
            except BaseException:
                if connection.in_transaction:  # SQLite may have rolled back already
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return appended
        except sqlite3.Error as exc:
            raise _store_error(exc, self.description) from exc
        finally:
            if lock is not None:
                lock.release()

    def _append(
        self,
        connection: sqlite3.Connection,
        stream_id: str,
        stream_type: str | None,
        expected_version: int | None,
        rows: Sequence[EventRow],
        created_at: datetime,
        correlation_id: str | None,
        causation_id: str | None,
        stamp: str,
        contents: list[bytes],
    ) -> Appended:
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
        if latest is not None and latest > now:  # the clock went back: never record that
            now, created_at = latest, time_of(latest)
            stamp = timestamp_text(created_at)
            contents, _ = append_hashes(
                rows, stream_id, stamp, correlation_id, causation_id
            )
        kind = kind or stream_type or "default"
        if expected_version is not None and current != expected_version:
            self._raise_if_recorded(connection, rows, head)
            raise ConcurrencyError(stream_id, expected_version, current)
        chains = fold_chain(chain or GENESIS, current, kind, contents)
        given = [repeat(value) for value in (correlation_id, causation_id) if value is not None]
        event_ids, types, versions, payloads, metadatas, _, _, occurred_at = zip(*rows, strict=True)
        occurred = _occurred_values(occurred_at)
        # Each row's values, in C: (position, id (its 16 bytes, sqlite_schema.id_value),
        # stream, stream type, version, type, schema version, payload, metadata, time,
        # [correlation], [causation], hashes (bytearray: bound without an adapter lookup),
        # [occurred_at])
        values = list(zip(
            count(head + 1), map(bytearray.fromhex, map(str.replace, event_ids, _DASH, _NONE)),
            repeat(stream_id), repeat(kind), count(current + 1), types, versions, payloads,
            metadatas, repeat(now), *given, map(bytearray, contents), map(bytearray, chains),
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
            self._raise_if_recorded(connection, rows, head)
            raise
        if not current:
            connection.execute(
                "INSERT OR IGNORE INTO streams (stream_id, stream_type, created_at) "
                "VALUES (?, ?, ?)",
                (stream_id, kind, stamp),
            )
        return Appended(kind, current + 1, range(head + 1, head + 1 + len(rows)), created_at)

    def import_rows(self, rows: Sequence[ImportRow], created_at: datetime) -> None:
        """Write a bulk-import batch in one transaction (event_sourcing.stores.sqlite_import)."""
        with self._write() as connection:
            import_rows(connection, rows, created_at)

    def _raise_if_recorded(
        self, connection: sqlite3.Connection, rows: Sequence[EventRow], head: int
    ) -> None:
        # Only events recorded before this append (position <= head): the rows this failed
        # append inserted before its conflict are visible here until the rollback.
        marks = ",".join("?" * len(rows))
        found = connection.execute(
            f"SELECT {_COLUMNS} FROM event_store WHERE id IN ({marks}) AND position <= ? "
            "ORDER BY position",
            [*(id_value(row.id) for row in rows), head],
        ).fetchall()
        if found:
            raise AlreadyRecorded(fetch_events(lambda: found, ids_and_times))

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
        texts: dict[Any, str] = {}  # a batch's events share their time
        out = []
        for row in rows:
            stamp = texts.get(row[9])
            if stamp is None:
                stamp = texts[row[9]] = time_text(row[9])
            out.append((
                row[0], id_text(row[1]), *row[2:9], stamp, *row[10:14],
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
                for statement in _statements(SCHEMA):
                    connection.execute(statement)
        except sqlite3.Error as exc:
            return found, str(exc)
        return found, None

    # -- reading ------------------------------------------------------------------------
    def _select(self, sql: str, params: Sequence[Any]) -> list[RecordedEvent]:
        with self._connection() as connection:
            return fetch_events(connection.execute(sql, params).fetchall, ids_and_times)

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
        undated_only: bool = False,
    ) -> list[RecordedEvent]:
        if event_types is not None and not event_types:
            return []
        return self._select(*page_query(after, event_types, until, limit, undated_only))

    def read_dated_page(
        self,
        after: tuple[datetime, int] | None,
        occurred_until: datetime,
        recorded_until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        return self._select(*dated_page_query(
            _COLUMNS, "?", time_value, after, occurred_until, recorded_until, limit
        ))

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE correlation_id = ? ORDER BY position",
            (correlation_id,),
        )

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE id IN ({','.join('?' * len(ids))}) "
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
                "SELECT event_type, count(*) FROM event_store GROUP BY event_type ORDER BY 1"
            ).fetchall()
        return dict(rows)

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
