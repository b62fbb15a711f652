"""PostgreSQL recorder: the production backend, with a commit-order sequencer.

Writers insert events with no global position and commit without any shared lock (so
their commits group and overlap). Positions are then handed out by `mlevents_sequence()`,
a short critical section under a transaction-scoped advisory lock that numbers every
committed-but-unpositioned event in one UPDATE. Sequencer transactions are serialized and
each one becomes visible before the next starts, so positions become visible strictly in
increasing order: a reader holding cursor p can never later find a position <= p appear.
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
CREATE TABLE IF NOT EXISTS event_store (
    id             uuid PRIMARY KEY,
    stream_id      text NOT NULL,
    stream_type    text NOT NULL,
    version        bigint NOT NULL CHECK (version >= 1),
    -- NULL from insert until the sequencer numbers it, in the sequencer's own transaction.
    position       bigint UNIQUE,
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    payload        jsonb NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL,
    correlation_id text,
    causation_id   text,
    insert_seq     bigint GENERATED ALWAYS AS IDENTITY,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS idx_event_store_type ON event_store (event_type, position);
CREATE INDEX IF NOT EXISTS idx_event_store_time ON event_store (created_at);
CREATE INDEX IF NOT EXISTS idx_event_store_correlation ON event_store (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_event_store_unpositioned ON event_store (insert_seq)
    WHERE position IS NULL;
CREATE TABLE IF NOT EXISTS position_counter (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position bigint NOT NULL
);
INSERT INTO position_counter VALUES (true, 0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION mlevents_reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_store is append-only: % is not allowed on recorded events', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Events are immutable history; append a compensating event instead.';
END $$;

DROP TRIGGER IF EXISTS event_store_no_update ON event_store;
-- The only UPDATE allowed is the sequencer giving an unpositioned row its position.
CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store FOR EACH ROW
WHEN (OLD.position IS NOT NULL OR NEW.position IS NULL
      OR (OLD.id, OLD.stream_id, OLD.stream_type, OLD.version, OLD.event_type,
          OLD.schema_version, OLD.payload, OLD.metadata, OLD.created_at,
          OLD.correlation_id, OLD.causation_id, OLD.insert_seq)
         IS DISTINCT FROM
         (NEW.id, NEW.stream_id, NEW.stream_type, NEW.version, NEW.event_type,
          NEW.schema_version, NEW.payload, NEW.metadata, NEW.created_at,
          NEW.correlation_id, NEW.causation_id, NEW.insert_seq))
EXECUTE FUNCTION mlevents_reject_mutation();
DROP TRIGGER IF EXISTS event_store_no_delete ON event_store;
CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();
DROP TRIGGER IF EXISTS event_store_no_truncate ON event_store;
CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();

-- The commit-order sequencer. Returns the positions of `ids` (numbered now or earlier).
CREATE OR REPLACE FUNCTION mlevents_sequence(ids uuid[])
RETURNS TABLE (event_id uuid, event_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    numbered bigint;
BEGIN
    -- An advisory lock (not a row lock) so a sequencer run that numbers nothing writes
    -- nothing and its commit costs no WAL flush.
    PERFORM pg_advisory_xact_lock(hashtext(current_schema()), 1);
    IF EXISTS (SELECT 1 FROM event_store WHERE position IS NULL) THEN
        SELECT c.last_position INTO last FROM position_counter c;
        UPDATE event_store e SET position = last + p.n
        FROM (SELECT u.id, row_number() OVER (ORDER BY u.insert_seq) AS n
              FROM event_store u WHERE u.position IS NULL) p
        WHERE e.id = p.id;
        GET DIAGNOSTICS numbered = ROW_COUNT;
        UPDATE position_counter SET last_position = last + numbered;
        PERFORM pg_notify('mlevents_' || current_schema(), (last + numbered)::text);
    END IF;
    RETURN QUERY SELECT e.id, e.position FROM event_store e WHERE e.id = ANY(ids);
END $$;
"""

_COLUMNS = (
    "id::text, stream_id, stream_type, version, position, event_type, schema_version, "
    "payload, metadata, created_at, correlation_id, causation_id"
)

_INSERT = (
    "INSERT INTO event_store (id, stream_id, stream_type, version, event_type, schema_version,"
    " payload, metadata, created_at, correlation_id, causation_id) "
    "SELECT u.id, %s, %s, %s + u.n, u.event_type, u.schema_version, u.payload, u.metadata, "
    "%s, %s, %s FROM unnest(%s::uuid[], %s::text[], %s::int[], %s::jsonb[], %s::jsonb[]) "
    "WITH ORDINALITY AS u(id, event_type, schema_version, payload, metadata, n)"
)


class _AlreadyRecorded(Exception):
    """Raised inside a write transaction to roll it back: the batch's ids exist."""


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
        # Number anything a crashed writer committed but never sequenced.
        with self._pool.connection() as connection:
            connection.execute("SELECT count(*) FROM mlevents_sequence('{}')")

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
                (SCHEMA_VERSION, "event_store, streams, sequencer, append-only triggers"),
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
        with self._pool.connection() as connection:
            try:
                with connection.transaction():
                    kind, start = self._claim_versions(
                        connection, stream_id, stream_type, expected_version, count, created_at,
                        rows,
                    )
                    connection.execute(
                        _INSERT,
                        (
                            stream_id, kind, start - 1, created_at, correlation_id, causation_id,
                            ids, [row.event_type for row in rows],
                            [row.schema_version for row in rows],
                            [row.payload_json for row in rows],
                            [row.metadata_json for row in rows],
                        ),
                    )
            except (pg_errors.UniqueViolation, _AlreadyRecorded):
                # A retry of a recorded batch: number it if a crash left it unpositioned,
                # then hand back what was recorded. Anything else re-raises.
                connection.execute("SELECT count(*) FROM mlevents_sequence('{}')")
                found = self._select_on(
                    connection,
                    f"SELECT {_COLUMNS} FROM event_store WHERE id = ANY(%s::uuid[]) "
                    "ORDER BY position",
                    (ids,),
                )
                if found:
                    return AppendOutcome(found, inserted=False)
                raise
            positions: dict[str, int] = dict(
                connection.execute(
                    "SELECT event_id::text, event_position FROM mlevents_sequence(%s::uuid[])",
                    (ids,),
                ).fetchall()
            )
        return AppendOutcome(
            [
                RecordedEvent(
                    row.id, stream_id, kind, start + n, positions[row.id], row.event_type,
                    row.schema_version, json.loads(row.payload_json),
                    json.loads(row.metadata_json), created_at, correlation_id, causation_id,
                )
                for n, row in enumerate(rows)
            ],
            inserted=True,
        )

    def _claim_versions(
        self,
        connection: psycopg.Connection[Any],
        stream_id: str,
        stream_type: str | None,
        expected_version: int | None,
        count: int,
        now: datetime,
        rows: Sequence[EventRow],
    ) -> tuple[str, int]:
        """Move the stream's version forward by `count` under its row lock; return
        (stream type, first new version). The row lock makes expected-version checks atomic."""
        kind = stream_type or "default"
        if expected_version is None:
            found = connection.execute(
                "INSERT INTO streams AS s VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream_id) "
                "DO UPDATE SET version = s.version + excluded.version, updated_at = %s "
                "RETURNING s.version, s.stream_type",
                (stream_id, kind, count, now, now, now),
            ).fetchone()
        elif expected_version == 0:
            found = connection.execute(
                "INSERT INTO streams VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING "
                "RETURNING version, stream_type",
                (stream_id, kind, count, now, now),
            ).fetchone()
        else:
            found = connection.execute(
                "UPDATE streams SET version = version + %s, updated_at = %s "
                "WHERE stream_id = %s AND version = %s RETURNING version, stream_type",
                (count, now, stream_id, expected_version),
            ).fetchone()
        if found is None:
            already = connection.execute(
                "SELECT 1 FROM event_store WHERE id = ANY(%s::uuid[]) LIMIT 1",
                ([row.id for row in rows],),
            ).fetchone()
            if already:
                raise _AlreadyRecorded
            assert expected_version is not None
            actual = self._version(connection, stream_id)
            raise ConcurrencyError(stream_id, expected_version, actual)
        version, kind = found
        return kind, version - count + 1

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
        # Only positioned events: an event is part of history once it has its position.
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE stream_id = %s AND version >= %s "
            "AND version <= %s AND position IS NOT NULL ORDER BY version",
            (stream_id, from_version, to_version if to_version is not None else 2**62),
        )

    def read_page(
        self,
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        where: list[str] = ["position > %s"]
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
            f"SELECT {_COLUMNS} FROM event_store WHERE correlation_id = %s "
            "AND position IS NOT NULL ORDER BY position",
            (correlation_id,),
        )

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            f"SELECT {_COLUMNS} FROM event_store WHERE id = ANY(%s::uuid[]) "
            "AND position IS NOT NULL ORDER BY position",
            (list(ids),),
        )

    def stream_version(self, stream_id: str) -> int:
        with self._pool.connection() as connection:
            return self._version(connection, stream_id)

    def head_position(self) -> int:
        with self._pool.connection() as connection:
            row = connection.execute("SELECT last_position FROM position_counter").fetchone()
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
