"""PostgreSQL recorder: the production backend, ordered by transaction id and position.

A writer takes a session-level advisory lock, and inside it gets its transaction id (its
first write) and its global positions (a sequence), then releases the lock BEFORE it
commits, so commits (and their WAL flushes) overlap. Because both are handed out inside
one critical section, transaction-id order equals position order. Readers only return
rows whose transaction id is below their snapshot's xmin (every transaction below it has
ended), so any event that becomes visible later has a higher position than anything
already returned: a single integer cursor never skips. The cost: a transaction that
has written and stays open anywhere in the cluster delays (never drops) delivery.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from event_sourcing.errors import ConcurrencyError, SchemaVersionError, StoreUnavailableError
from event_sourcing.events import RecordedEvent
from event_sourcing.stores.recorder import AppendOutcome, EventRow, redact_url

SCHEMA_VERSION = 1
# Advisory lock keys (arbitrary constants, scoped by the schema name's hash in SQL).
_SCHEMA_LOCK = 0x6D6C6576  # "mlev"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mlevents_schema (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    description text NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    stream_id   text PRIMARY KEY CHECK (length(stream_id) BETWEEN 1 AND 255),
    stream_type text NOT NULL,
    version     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
-- Handed out only under the append lock, so positions follow transaction ids.
CREATE SEQUENCE IF NOT EXISTS event_position_seq;
CREATE TABLE IF NOT EXISTS event_store (
    id             uuid PRIMARY KEY,
    stream_id      text NOT NULL,
    stream_type    text NOT NULL,
    version        bigint NOT NULL CHECK (version >= 1),
    position       bigint NOT NULL UNIQUE,
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    payload        jsonb NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL,
    correlation_id text,
    causation_id   text,
    tx             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS idx_event_store_type ON event_store (event_type, position);
CREATE INDEX IF NOT EXISTS idx_event_store_time ON event_store (created_at);
CREATE INDEX IF NOT EXISTS idx_event_store_correlation ON event_store (correlation_id)
    WHERE correlation_id IS NOT NULL;

CREATE OR REPLACE FUNCTION mlevents_reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_store is append-only: % is not allowed on recorded events', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Events are immutable history; append a compensating event instead.';
END $$;
DROP TRIGGER IF EXISTS event_store_no_update ON event_store;
CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();
DROP TRIGGER IF EXISTS event_store_no_delete ON event_store;
CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();
DROP TRIGGER IF EXISTS event_store_no_truncate ON event_store;
CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();

-- Appends one batch to one stream. Call it as the first statement of its transaction
-- (autocommit: it is the whole transaction). Returns no row when the stream is not at
-- p_expected; else (stream type, last version, first position) of the batch.
CREATE OR REPLACE FUNCTION mlevents_append(
    p_stream text, p_kind text, p_expected bigint, p_now timestamptz,
    p_correlation text, p_causation text, p_ids uuid[], p_types text[],
    p_versions integer[], p_payloads jsonb[], p_metadatas jsonb[])
RETURNS TABLE (stream_type text, last_version bigint, first_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(p_ids);
    lock_key integer := hashtext(current_schema());
    v bigint;
    k text;
    first bigint;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'mlevents_append must be the first write of its transaction';
    END IF;
    -- Session-level, so it can be released before COMMIT: commits stay concurrent.
    PERFORM pg_advisory_lock(lock_key, 1);
    BEGIN
        IF p_expected IS NULL THEN
            INSERT INTO streams AS s VALUES (p_stream, p_kind, n, p_now, p_now)
            ON CONFLICT (stream_id) DO UPDATE
                SET version = s.version + excluded.version, updated_at = excluded.updated_at
            RETURNING s.version, s.stream_type INTO v, k;
        ELSIF p_expected = 0 THEN
            INSERT INTO streams AS s VALUES (p_stream, p_kind, n, p_now, p_now)
            ON CONFLICT DO NOTHING RETURNING s.version, s.stream_type INTO v, k;
        ELSE
            UPDATE streams AS s SET version = s.version + n, updated_at = p_now
            WHERE s.stream_id = p_stream AND s.version = p_expected
            RETURNING s.version, s.stream_type INTO v, k;
        END IF;
        IF v IS NOT NULL THEN
            first := nextval('event_position_seq');
            IF n > 1 THEN
                PERFORM setval('event_position_seq', first + n - 1);
            END IF;
            INSERT INTO event_store (id, stream_id, stream_type, version, position, event_type,
                schema_version, payload, metadata, created_at, correlation_id, causation_id)
            SELECT u.id, p_stream, k, v - n + u.i, first + u.i - 1, u.event_type,
                u.schema_version, u.payload, u.metadata, p_now, p_correlation, p_causation
            FROM unnest(p_ids, p_types, p_versions, p_payloads, p_metadatas)
                WITH ORDINALITY AS u(id, event_type, schema_version, payload, metadata, i);
        END IF;
    EXCEPTION WHEN query_canceled OR others THEN
        PERFORM pg_advisory_unlock(lock_key, 1);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(lock_key, 1);
    IF v IS NOT NULL THEN
        RETURN QUERY SELECT k, v, first;
    END IF;
END $$;
"""

# Rows whose transaction ended before every transaction still running: nothing with a
# lower position can become visible after them.
_SETTLED = "tx < pg_snapshot_xmin(pg_current_snapshot())"

_COLUMNS = (
    "id::text, stream_id, stream_type, version, position, event_type, schema_version, "
    "payload, metadata, created_at, correlation_id, causation_id"
)

_APPEND = (
    "SELECT * FROM mlevents_append(%(stream)s, %(kind)s, %(expected)s, %(now)s, "
    "%(correlation)s, %(causation)s, %(ids)s::uuid[], %(types)s::text[], "
    "%(versions)s::int[], %(payloads)s::jsonb[], %(metadatas)s::jsonb[])"
)


class _Transaction:
    dialect = "postgresql"

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._connection.execute(query.replace("?", "%s"), params)

    def executemany(self, query: str, params: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self._connection.cursor()
        cursor.executemany(query.replace("?", "%s"), params)
        return cursor


class PostgresRecorder:
    """Events in a PostgreSQL schema (default `mlevents`), through a connection pool."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "mlevents",
        pool_size: int = 8,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.description = f"{redact_url(url)} (schema {schema})"
        options = f"-c search_path={schema} -c timezone=UTC"
        kwargs: dict[str, Any] = {"autocommit": True, "options": options}
        try:
            with psycopg.connect(
                url, connect_timeout=max(1, int(connect_timeout)), **kwargs
            ) as connection:
                self._create_schema(connection)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: "
                f"{str(exc).strip().splitlines()[0]}. Check that the server is running and the "
                "URL (host, port, user, database) is right."
            ) from None
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs=kwargs, open=True,
            name=f"mlevents-{schema}",
        )
        try:
            self._pool.wait(timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailableError(
                f"cannot open a connection pool to {redact_url(url)}"
            ) from None

    def _create_schema(self, connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            # Serialize concurrent first connects: CREATE ... IF NOT EXISTS is not race-free.
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            row = connection.execute(
                "SELECT to_regclass('mlevents_schema') IS NOT NULL"
            ).fetchone()
            if row and row[0]:
                found = connection.execute("SELECT max(version) FROM mlevents_schema").fetchone()
                if found and found[0] is not None and found[0] > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"schema {self.schema} has version {found[0]}, newer than this mlevents "
                        f"knows ({SCHEMA_VERSION}); upgrade mlevents"
                    )
                if found and found[0] == SCHEMA_VERSION:
                    return
            connection.execute(_SCHEMA)
            connection.execute(
                "INSERT INTO mlevents_schema (version, description) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (SCHEMA_VERSION, "event_store, streams, xid-ordered positions, append-only"),
            )

    def close(self) -> None:
        self._pool.close()

    # -- writing ------------------------------------------------------------------------
    def append(
        self,
        stream_id: str,
        stream_type: str | None,
        expected_version: int | None,
        rows: Sequence[EventRow],
        correlation_id: str | None,
        causation_id: str | None,
    ) -> AppendOutcome:
        count = len(rows)
        created_at = rows[0].created_at
        ids = [row.id for row in rows]
        params = {
            "stream": stream_id, "kind": stream_type or "default", "now": created_at,
            "expected": expected_version, "correlation": correlation_id,
            "causation": causation_id, "ids": ids,
            "types": [row.event_type for row in rows],
            "versions": [row.schema_version for row in rows],
            "payloads": [row.payload_json for row in rows],
            "metadatas": [row.metadata_json for row in rows],
        }
        with self._pool.connection() as connection:
            try:
                claimed = connection.execute(_APPEND, params).fetchone()
            except pg_errors.UniqueViolation:
                claimed = None
            if claimed is None:
                # Nothing was written: a retry of a recorded batch (hand back what was
                # recorded) or a stale expected version.
                found = self._select_on(
                    connection,
                    f"SELECT {_COLUMNS} FROM event_store WHERE id = ANY(%s::uuid[]) "
                    "ORDER BY position",
                    (ids,),
                )
                if found:
                    return AppendOutcome(found, inserted=False)
                if expected_version is None:
                    raise StoreUnavailableError(
                        f"append to {stream_id!r} wrote nothing and no error was reported"
                    )
                actual = self._version(connection, stream_id)
                raise ConcurrencyError(stream_id, expected_version, actual)
        kind, last_version, first_position = claimed
        first_version = last_version - count + 1
        return AppendOutcome(
            [
                RecordedEvent(
                    row.id, stream_id, kind, first_version + n, first_position + n,
                    row.event_type, row.schema_version, json.loads(row.payload_json),
                    json.loads(row.metadata_json), created_at, correlation_id, causation_id,
                )
                for n, row in enumerate(rows)
            ],
            inserted=True,
        )

    @staticmethod
    def _version(connection: psycopg.Connection[Any], stream_id: str) -> int:
        row = connection.execute(
            "SELECT version FROM streams WHERE stream_id = %s", (stream_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    # -- reading ------------------------------------------------------------------------
    @staticmethod
    def _select_on(
        connection: psycopg.Connection[Any], query: str, params: Sequence[Any]
    ) -> list[RecordedEvent]:
        cursor = connection.execute(query, params)
        return [RecordedEvent(*row) for row in cursor.fetchall()]

    def _select(self, query: str, params: Sequence[Any]) -> list[RecordedEvent]:
        with self._pool.connection() as connection:
            return self._select_on(connection, query, params)

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE stream_id = %s AND version >= %s "
            "AND version <= %s ORDER BY version",
            (stream_id, from_version, to_version if to_version is not None else 2**62),
        )

    def read_page(
        self,
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        where: list[str] = ["position > %s", _SETTLED]
        params: list[Any] = [after]
        if event_types is not None:
            where.append("event_type = ANY(%s)")
            params.append(list(event_types))
        if until is not None:
            where.append("created_at <= %s")
            params.append(until)
        params.append(limit)
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE {' AND '.join(where)} "
            "ORDER BY position LIMIT %s",
            params,
        )

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE correlation_id = %s ORDER BY position",
            (correlation_id,),
        )

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE id = ANY(%s::uuid[]) ORDER BY position",
            (list(ids),),
        )

    def stream_version(self, stream_id: str) -> int:
        with self._pool.connection() as connection:
            return self._version(connection, stream_id)

    def head_position(self) -> int:
        with self._pool.connection() as connection:
            row = connection.execute(
                f"SELECT position FROM event_store WHERE {_SETTLED} ORDER BY position DESC LIMIT 1"
            ).fetchone()
        return int(row[0]) if row else 0

    def counts_by_type(self) -> dict[str, int]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                "SELECT event_type, count(*) FROM event_store GROUP BY event_type ORDER BY 1"
            ).fetchall()
        return {name: int(count) for name, count in rows}

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        with self._pool.connection() as connection, connection.transaction():
            yield _Transaction(connection)
