"""PostgreSQL recorder: the production backend, with a lock-free commit-safe global order.

Positions come from a sequence, so they are handed out in insert order, not commit order.
What makes a single integer cursor safe is the *read horizon*: before taking its
positions a writer reads the sequence's last value m and holds a shared advisory lock
keyed by m until it commits (an "in-flight marker"), all inside the one INSERT statement
of an append. A reader first computes
H = min(last value + 1, every in-flight m + 1), then scans (a later snapshot) for
positions below H only. Every position below H was handed out before H was computed,
and its writer, if still running, holds a marker below it: so whatever a reader is
given, nothing at or below it can appear later. Writers never wait for one another
(except for overlapping appends to one stream); readers wait only for appends in flight.
Optimistic concurrency needs no lock either: UNIQUE (stream_id, version) lets exactly one
of two racing appends have a version.
See docs/ordering.md for the argument and the measurements.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import set_json_loads

from event_sourcing.errors import (
    AccessDeniedError,
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    SchemaVersionError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.integrity.hashing import (
    GENESIS,
    append_hashes,
    canonical_json_bytes,
    content_hash,
    fold_chain,
    timestamp_text,
)
from event_sourcing.stores.imports import ImportRow, content_hashes, place_rows, runs
from event_sourcing.stores.postgres_errors import broken
from event_sourcing.stores.postgres_pool import APPEND_LOCK_TIMEOUT, Connections, session_options
from event_sourcing.stores.recorder import (
    MAX_SEEK_BRANCHES,
    AlreadyRecorded,
    Appended,
    EventRow,
    fetch_events,
    redact_text,
    redact_url,
)
from event_sourcing.stores.values import decode

SCHEMA_VERSION = 4
# Advisory lock keys (arbitrary constants, scoped by the schema name's hash in SQL).
_SCHEMA_LOCK = 0x6D6C6576  # "mlev"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mlevents_schema (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    description text NOT NULL
);
-- One row per stream, written by its first append. A stream's version is the highest
-- version of its events (the UNIQUE (stream_id, version) index answers it).
CREATE TABLE IF NOT EXISTS streams (
    stream_id   text PRIMARY KEY CHECK (length(stream_id) BETWEEN 1 AND 255),
    stream_type text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS event_position_seq;
CREATE TABLE IF NOT EXISTS event_store (
    id             uuid PRIMARY KEY,
    stream_id      text NOT NULL,
    stream_type    text NOT NULL,
    version        bigint NOT NULL CHECK (version >= 1),
    position       bigint NOT NULL UNIQUE,  -- set by mlevents_assign_position()
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    payload        jsonb NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL,
    correlation_id text,
    causation_id   text,
    content_hash   bytea,  -- integrity: docs/integrity.md
    chain_hash     bytea,
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

-- Only the store hands out positions: an insert (or COPY) that names one is refused, for
-- every role, the table's owner included. The sequence is named with its schema, so no
-- session can shadow it (e.g. with a temporary sequence of the same name).
CREATE OR REPLACE FUNCTION mlevents_assign_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.position IS NOT NULL THEN
        RAISE EXCEPTION 'event_store positions are set by the store: an insert may not name one'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.position := nextval('{schema}.event_position_seq');
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS event_store_assign_position ON event_store;
CREATE TRIGGER event_store_assign_position BEFORE INSERT ON event_store
FOR EACH ROW EXECUTE FUNCTION mlevents_assign_position();
-- A stream's hash chain over a batch whose head the append located: mlevents_chain(head's
-- chain hash, link) OVER (ORDER BY version), link = version || stream type || content hash.
CREATE OR REPLACE FUNCTION mlevents_chain_step(state bytea, head bytea, link bytea)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(coalesce(state, head) || link) $$;
CREATE OR REPLACE AGGREGATE mlevents_chain(bytea, bytea) (
    SFUNC = mlevents_chain_step, STYPE = bytea
);

-- The advisory-lock key (first half) of in-flight markers, per schema.
CREATE OR REPLACE FUNCTION mlevents_inflight_key() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtext(current_schema() || ':mlevents-inflight') $$;

-- The sequence's last handed-out value (0 before the first).
CREATE OR REPLACE FUNCTION mlevents_last_position() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END FROM event_position_seq s
$$;

-- Positions below the horizon are settled: committed, or never to be committed.
CREATE OR REPLACE FUNCTION mlevents_horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last bigint := mlevents_last_position();   -- read BEFORE the markers
    oldest bigint;
BEGIN
    SELECT min(last - ((last - ((l.objid::bigint + 2147483648) % 4294967296))
                       % 4294967296 + 4294967296) % 4294967296)
    INTO oldest
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 2
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.classid::bigint = (mlevents_inflight_key()::bigint + 4294967296) % 4294967296;
    RETURN least(coalesce(oldest, last) + 1, last + 1);
END $$;

CREATE OR REPLACE FUNCTION mlevents_head() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    h bigint;
    found bigint;
BEGIN
    h := mlevents_horizon();
    SELECT e.position INTO found FROM event_store e
    WHERE e.position < h ORDER BY e.position DESC LIMIT 1;
    RETURN coalesce(found, 0);
END $$;
"""

# In RecordedEvent's field order; schema_version twice: as returned and as recorded.
# Payload and metadata as their UTF-8 text, decoded a page at a time (recorder.fetch_events).
_COLUMNS = (
    "id::text, stream_id, stream_type, version, position, event_type, schema_version, "
    "convert_to(payload::text, 'UTF8'), convert_to(metadata::text, 'UTF8'), created_at, "
    "correlation_id, causation_id, schema_version"
)

# What a database at each older schema version needs before _SCHEMA brings it up to date.
_MIGRATIONS = {
    # v2: the stream's version is no longer a counter row updated by every append; the
    # UNIQUE (stream_id, version) index of event_store decides races.
    1: """
    DROP FUNCTION IF EXISTS mlevents_append(jsonb);
    ALTER TABLE streams DROP COLUMN IF EXISTS version, DROP COLUMN IF EXISTS updated_at;
    """,
    # v3: positions come from the mlevents_assign_position trigger (created by _SCHEMA),
    # which refuses inserts that name one, instead of a column default anyone could override.
    2: "ALTER TABLE event_store ALTER COLUMN position DROP DEFAULT;",
    # v4: content and chain hashes (tamper evidence); _add_hashes computes them in order.
    3: """
    ALTER TABLE event_store ADD COLUMN IF NOT EXISTS content_hash bytea,
        ADD COLUMN IF NOT EXISTS chain_hash bytea;
    """,
}
_DESCRIPTIONS = {
    1: "event_store, streams, in-flight markers, append-only triggers",
    2: "streams without a version counter; appends are one INSERT statement",
    3: "positions are assigned by a trigger; inserts naming one are refused",
    4: "per-stream hash chains (content_hash, chain_hash)",
}
# (current user, USAGE on the store's schema, whether it holds mlevents_schema), or no row
# when the schema does not exist.
_PROBE = """
    SELECT current_user::text, has_schema_privilege(n.oid, 'USAGE'),
        CASE WHEN has_schema_privilege(n.oid, 'USAGE')
            THEN to_regclass(format('%%I.mlevents_schema', n.nspname)) IS NOT NULL END
    FROM pg_namespace AS n WHERE n.nspname = %s"""
_HASHED = (
    "position, id::text, stream_id, stream_type, version, event_type, schema_version, payload, "
    "metadata, created_at, correlation_id, causation_id, content_hash, chain_hash"
)


def hashed_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row of _HASHED with payload and metadata as hashed (canonical JSON: jsonb keeps
    the value, not the text) and the time as text."""
    return (
        *row[:7], canonical_json_bytes(row[7]), canonical_json_bytes(row[8]),
        timestamp_text(row[9]),
        *row[10:],
    )


def _add_hashes(connection: psycopg.Connection[Any]) -> None:
    """Migration to v4: compute every event's content and chain hash in position order."""
    heads: dict[str, bytes] = {}
    updates = []
    for row in connection.execute(f"SELECT {_HASHED} FROM event_store ORDER BY position"):
        row = hashed_row(row)
        content = content_hash(*row[1:3], *row[5:12])
        heads[row[2]] = fold_chain(heads.get(row[2], GENESIS), row[4] - 1, row[3], [content])[0]
        updates.append((content, heads[row[2]], row[0]))
    connection.execute("ALTER TABLE event_store DISABLE TRIGGER event_store_no_update")
    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE event_store SET content_hash = %s, chain_hash = %s WHERE position = %s",
            updates,
        )
    connection.execute("ALTER TABLE event_store ENABLE TRIGGER event_store_no_update")


_MIGRATION_STEPS = {3: _add_hashes}  # Python run after a version's SQL
_STREAM_VERSION_KEY = "event_store_stream_id_version_key"
# The triggers the schema script creates (restore_triggers checks every one is there, on).
_TRIGGER_NAME = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE,
)
_REACHED_STREAMS = 10_000  # streams whose reached version a recorder remembers

# The stream's head before an append, as (stream type, version, chain hash). Expecting n >= 1:
# no row unless the stream has an event n, so a stale expectation inserts nothing and a
# moved-on stream hits UNIQUE (stream_id, version). Expecting a new stream, or a version the
# stream is known to have reached: as given, and the unique index alone decides. No
# expectation: the latest event, if any.
_HEAD_AT = """
        SELECT e.stream_type, e.version, e.chain_hash FROM event_store AS e
        WHERE e.stream_id = %(stream)s AND e.version = %(expected)s::bigint"""
_HEAD_GIVEN = "SELECT %(kind)s::text, %(expected)s::bigint, NULL::bytea"
_HEAD_LATEST = """
        SELECT coalesce(h.stream_type, %(kind)s), coalesce(h.version, 0),
            coalesce(h.chain_hash, %(genesis)s::bytea)
        FROM (SELECT 1) AS one LEFT JOIN LATERAL (
            SELECT e.stream_type, e.version, e.chain_hash FROM event_store AS e
            WHERE e.stream_id = %(stream)s ORDER BY e.version DESC LIMIT 1
        ) AS h ON true"""

# One batch to one stream, one statement. The in-flight marker is taken before the
# statement's first nextval (the position column's default): the sequence's last value m,
# held as a shared advisory lock until the transaction ends, so every position below it
# is > m. (A subquery with a volatile output is never folded into the outer query.)
# The events: one as scalar parameters (cheaper to send and to plan), or a batch as one
# JSON array of [id, type, schema version, payload, metadata] and the content (and chain)
# hashes as one bytea of 32 bytes per event each (chains null when the statement computes
# them from the head).
_ONE_EVENT = """
        SELECT %(id)s::uuid, %(type)s::text, %(schema_version)s::integer, %(payload)s::jsonb,
            %(metadata)s::jsonb, 1::bigint, %(content)b::bytea, %(chain)b::bytea"""
_EVENT_BATCH = """
        SELECT (x.item->>0)::uuid, x.item->>1, (x.item->>2)::integer, x.item->3, x.item->4, x.i,
            substring(%(contents)b::bytea FROM (32 * x.i - 31)::integer FOR 32),
            substring(%(chains)b::bytea FROM (32 * x.i - 31)::integer FOR 32)
        FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS x(item, i)"""
# The chain hash of each event (docs/integrity.md): given by the client when it knows the
# head's (a new stream, or the version it last appended), else linked here to the head
# the statement located.
_LINK = """head.version + u.i) || int4send(octet_length(convert_to(head.stream_type, 'UTF8')))
        || convert_to(head.stream_type, 'UTF8') || u.content"""
_CHAIN = {
    "given": "u.chain",
    "one": f"sha256(head.chain || int8send({_LINK})",
    "batch": f"mlevents_chain(head.chain, int8send({_LINK}) OVER (ORDER BY u.i)",
}
# The in-flight marker (docs/ordering.md): the sequence's last value, held as a shared
# advisory lock until the transaction ends.
_MARKER = """
        SELECT pg_advisory_xact_lock_shared(mlevents_inflight_key(),
            ((CASE WHEN q.is_called THEN q.last_value ELSE 0 END) %% 4294967296
             - 2147483648)::integer)
        FROM event_position_seq AS q"""
# The columns an append (and an import's COPY) writes; positions come from the trigger.
_WRITTEN = (
    "id, stream_id, stream_type, version, event_type, schema_version, payload, metadata, "
    "created_at, correlation_id, causation_id, content_hash, chain_hash"
)
_INSERT = """
    INSERT INTO event_store AS e (""" + _WRITTEN + """)
    SELECT u.id, %(stream)s, head.stream_type, head.version + u.i, u.type, u.schema_version,
        u.payload, u.metadata, %(now)s, %(correlation)s, %(causation)s, u.content, {chain}
    FROM ({head}) AS head (stream_type, version, chain)
    CROSS JOIN LATERAL (""" + _MARKER + """ OFFSET 0) AS marker
    CROSS JOIN LATERAL ({events}) AS u (id, type, schema_version, payload, metadata, i,
        content, chain)
    RETURNING e.stream_type, e.version, e.position, {returned}"""


def _registering(insert: str) -> str:
    """`insert`, also registering the stream in `streams` when it writes version 1."""
    return f"""
WITH appended AS ({insert}
), registered AS (
    INSERT INTO streams (stream_id, stream_type, created_at)
    SELECT %(stream)s, a.stream_type, %(now)s FROM appended AS a WHERE a.version = 1
    ON CONFLICT DO NOTHING
)
SELECT stream_type, version, position, chain_hash FROM appended"""


# (head, events) -> statement. AT and KNOWN never write a stream's first event.
_APPEND = {
    (head_name, events_name): (
        (lambda insert: insert if head_name in {"at", "known"} else _registering(insert))(
            _INSERT.format(
                head=head, events=events,
                chain=_CHAIN["given" if head_name in {"known", "new"} else events_name],
                # the client knows the chain hashes it gave: no need to send them back
                returned="NULL::bytea AS chain_hash" if head_name in {"known", "new"}
                else "e.chain_hash",
            )
        )
    )
    for head_name, head in (
        ("at", _HEAD_AT), ("known", _HEAD_GIVEN), ("new", _HEAD_GIVEN), ("latest", _HEAD_LATEST)
    )
    for events_name, events in (("one", _ONE_EVENT), ("batch", _EVENT_BATCH))
}
# An import batch's streams' heads (no row for a new stream).
_IMPORT_HEADS = """
    SELECT s.stream_id, h.stream_type, h.version, h.chain_hash
    FROM unnest(%s::text[]) AS s (stream_id)
    CROSS JOIN LATERAL (
        SELECT e.stream_type, e.version, e.chain_hash FROM event_store AS e
        WHERE e.stream_id = s.stream_id ORDER BY e.version DESC LIMIT 1
    ) AS h"""
_IMPORT_ATTEMPTS = 3  # an import batch raced by appends to its streams starts again
_JSON_STRING = json.JSONEncoder(ensure_ascii=False).encode


def _events_json(rows: Sequence[EventRow]) -> str:
    """The batch as one JSON array of [id, type, schema version, payload, metadata]; the
    payloads are spliced in already encoded rather than encoded a second time."""
    events = ",".join(
        f'["{row.id}",{_JSON_STRING(row.event_type)},{row.schema_version},'
        f"{row.payload_json},{row.metadata_json}]"
        for row in rows
    )
    return f"[{events}]"


def append_query(
    stream_id: str,
    stream_type: str | None,
    expected_version: int | None,
    rows: Sequence[EventRow],
    created_at: datetime,
    correlation_id: str | None,
    causation_id: str | None,
    *,
    head_chain: bytes | None = None,
) -> tuple[str, dict[str, Any]]:
    """The one statement that appends a batch, and its parameters. It returns (stream
    type, version, position, chain hash) per event, or no row when the stream is not at
    `expected_version`; it raises UniqueViolation when the version or an id is taken.

    `head_chain`: the caller knows the stream's event at `expected_version` (>= 1) has this
    chain hash and that `stream_type` is the stream's type, so the statement skips looking
    that up and the chain hashes are computed here.
    """
    kind = stream_type or "default"
    request: dict[str, Any] = {
        "stream": stream_id, "kind": kind, "expected": expected_version,
        "now": created_at, "correlation": correlation_id, "causation": causation_id,
    }
    if expected_version is None:
        head = "latest"
        request["genesis"] = GENESIS
    elif not expected_version:
        head, head_chain = "new", GENESIS
    else:
        head = "known" if head_chain is not None else "at"
    contents, chains = append_hashes(
        rows, stream_id, timestamp_text(created_at), correlation_id, causation_id,
        canonical=True,
        head=None if head_chain is None or expected_version is None
        else (head_chain, expected_version, kind),
    )
    if chains is not None:
        request["last_chain"] = chains[-1]  # (not in the statement: for the caller)
    if len(rows) == 1:
        row = rows[0]
        request.update(
            id=row.id, type=row.event_type, schema_version=row.schema_version,
            payload=row.payload_json, metadata=row.metadata_json, content=contents[0],
            chain=chains[0] if chains is not None else None,
        )
        events = "one"
    else:
        request["events"] = _events_json(rows)
        request["contents"] = b"".join(contents)
        request["chains"] = None if chains is None else b"".join(chains)
        events = "batch"
    return _APPEND[head, events], request


def _load_json(data: str | bytes) -> Any:
    # psycopg's default goes through json.loads(bytes), which sniffs the encoding with a
    # regex per value; jsonb text is always UTF-8. Empty metadata is the common case.
    # (Not used for events: _COLUMNS reads their payload and metadata as UTF-8 bytes.)
    if data == b"{}":
        return {}
    return decode(data if isinstance(data, str) else bytes(data).decode())


def _configure(connection: psycopg.Connection[Any]) -> None:
    set_json_loads(_load_json, connection)


def page_query(
    after: int, event_types: Collection[str] | None, until: datetime | None, limit: int
) -> tuple[str, list[Any]]:
    """The keyset query of one page of the global log, without the horizon.

    The horizon is applied by the caller, not in SQL: a `position < h` bound makes the
    planner trade the ordered index scan for a bitmap scan and a sort of the whole tail
    whenever statistics lag behind a burst of appends. A type filter is one ordered seek
    of the (event_type, position) index per type, each at most a page, then sorted:
    `event_type = ANY(...)` would walk the position index and filter every row until the
    page fills (rare types), and unlimited branches may be planned as a whole-type scan.
    """
    time_filter = " AND created_at <= %s" if until is not None else ""
    types = sorted(set(event_types)) if event_types is not None else []
    if event_types is None or len(types) == 1:
        where = "position > %s" + (" AND event_type = %s" if types else "")
        query = f"SELECT {_COLUMNS} FROM event_store WHERE {where}{time_filter}"
        params: list[Any] = [after, *types] + ([until] if until is not None else [])
    elif len(types) > MAX_SEEK_BRANCHES:  # one statement of hundreds of branches plans slowly
        query = (
            f"SELECT {_COLUMNS} FROM event_store WHERE position > %s "
            f"AND event_type = ANY(%s){time_filter}"
        )
        params = [after, types] + ([until] if until is not None else [])
    else:
        branches, params = [], []
        for event_type in types:
            branches.append(
                f"(SELECT {_COLUMNS} FROM event_store WHERE position > %s AND event_type = %s"
                f"{time_filter} ORDER BY position LIMIT %s)"
            )
            params += [after, event_type] + ([until] if until is not None else []) + [limit]
        query = " UNION ALL ".join(branches)
    params.append(limit)
    return f"{query} ORDER BY position LIMIT %s", params


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str | None) -> str:
    """A text value in COPY's text format."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_json(text: str) -> str:
    """JSON text in COPY's text format: control characters are escaped in JSON already."""
    return text.replace("\\", "\\\\") if "\\" in text else text


class _Raced(Exception):
    """An import batch met an append to one of its streams."""


class _OneStatementCursor(psycopg.Cursor[Any]):
    """Sends every query with the extended protocol, which runs exactly one statement: a
    read-model query holding `; DROP TABLE ...` fails instead of running it (as on SQLite).
    psycopg would use the simple protocol, which runs several, for a query without
    parameters."""

    def _execute_send(
        self, query: Any, *, force_extended: bool = False, binary: bool | None = None
    ) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


class _Transaction:
    dialect = "postgresql"

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return _OneStatementCursor(self._connection).execute(query.replace("?", "%s"), params)

    def executemany(self, query: str, params: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self._connection.cursor()
        cursor.executemany(query.replace("?", "%s"), params)
        return cursor

    def table_exists(self, table: str) -> bool:
        row = self._connection.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        return bool(row and row[0])

    def lock(self, key: int) -> None:
        self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


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
        create: bool = True,
        pool_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.description = f"{redact_url(url)} (schema {schema})"
        # The schema name was checked (stores.identifiers): quoted, it is exactly itself.
        self._schema_sql = _SCHEMA.replace("{schema}", f'"{schema}"')
        # The schema name was checked (stores.identifiers): quoted, it is exactly itself.
        options = f'-c search_path="{schema}" -c timezone=UTC'
        kwargs: dict[str, Any] = {"autocommit": True, "options": session_options(url, options)}
        try:
            with psycopg.connect(
                url, connect_timeout=max(1, int(connect_timeout)), **kwargs
            ) as connection:
                self._create_schema(connection, create)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: "
                f"{redact_text(str(exc).strip().splitlines()[0], url)}. Check that the server "
                "is running and the URL (host, port, user, database) is right."
            ) from None
        # Stream id -> (its type, the version it reached, that event's chain hash). Events
        # are never deleted or changed, so an append expecting that version needs no lookup
        # (~30 us of server CPU) and can compute its chain hashes itself. This
        # holds unless the schema is dropped and recreated under a running store.
        self._reached: dict[str, tuple[str, int, bytes]] = {}
        self._connections = Connections(
            url, kwargs, name=f"mlevents-{schema}", description=self.description,
            configure=_configure,
            pool_size=pool_size, pool_timeout=pool_timeout, connect_timeout=connect_timeout,
        )

    def _found_version(self, connection: psycopg.Connection[Any]) -> int | None:
        """The store's schema version; None if there is no store, -1 if there is not even
        its schema (AccessDeniedError if the role may not look)."""
        row = connection.execute(_PROBE, (self.schema,)).fetchone()
        if row is None:
            return -1
        user, usage, exists = row
        if not usage:
            raise AccessDeniedError(
                f"role {user!r} has no USAGE on schema {self.schema!r} of {self.description}; "
                f"as its owner, run `mlevents grant {user} --reader` (or --appender, "
                "--projector) with --apply"
            )
        if not exists:
            return None
        try:
            latest = connection.execute("SELECT max(version) FROM mlevents_schema").fetchone()
        except pg_errors.InsufficientPrivilege:
            raise AccessDeniedError(
                f"role {user!r} may not read the event store in {self.description}; as its "
                f"owner, run `mlevents grant {user} --reader` (or --appender, --projector) "
                "with --apply"
            ) from None
        return None if not latest or latest[0] is None else int(latest[0])

    def _create_schema(self, connection: psycopg.Connection[Any], create: bool) -> None:
        """Bring the schema to SCHEMA_VERSION. A store already there costs two reads and
        takes no lock, so roles without CREATE (see `mlevents grant`) can connect."""
        found = self._found_version(connection)
        if found == SCHEMA_VERSION:
            return
        if (found is None or found < 0) and not create:
            raise StoreNotFoundError(f"no event store at {self.description}")
        try:
            with connection.transaction():
                # Serialize concurrent first connects: CREATE ... IF NOT EXISTS is not
                # race-free.
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                found = self._found_version(connection)
                if found == SCHEMA_VERSION:
                    return
                if found is not None and found > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"schema {self.schema} has version {found}, newer than this "
                        f"mlevents knows ({SCHEMA_VERSION}); upgrade mlevents"
                    )
                if found == -1:
                    connection.execute(
                        sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema))
                    )
                    found = None
                for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
                    connection.execute(_MIGRATIONS[version])
                    if version in _MIGRATION_STEPS:
                        _MIGRATION_STEPS[version](connection)
                connection.execute(self._schema_sql)
                connection.execute(
                    "INSERT INTO mlevents_schema (version, description) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (SCHEMA_VERSION, _DESCRIPTIONS[SCHEMA_VERSION]),
                )
        except pg_errors.InsufficientPrivilege as exc:
            what = (
                "create" if found is None or found < 0
                else f"migrate (to schema version {SCHEMA_VERSION})"
            )
            raise AccessDeniedError(
                f"this role may not {what} the event store in {self.description} "
                f"({str(exc).strip().splitlines()[0]}); run `mlevents init` once as a role "
                "that may (the database owner, or the schema's owner), then grant this role "
                "what it needs with `mlevents grant`"
            ) from None

    def close(self) -> None:
        self._connections.close()

    def _append_cursor(self) -> psycopg.Cursor[Any]:
        return self._connections.append_cursor()

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
        head_chain = None
        if expected_version:
            known = self._reached.get(stream_id)
            if known is not None and known[1] == expected_version:
                stream_type, head_chain = known[0], known[2]
        statement, request = append_query(
            stream_id, stream_type, expected_version, rows, created_at, correlation_id,
            causation_id, head_chain=head_chain,
        )
        what = f"append to {stream_id!r}"
        cursor = self._append_cursor()
        try:
            appended, last_chain = self._append_on(
                cursor, statement, request, rows, expected_version
            )
        except psycopg.Error as exc:
            if not broken(cursor.connection):
                raise self._connections.error(exc, what) from exc
            # The connection broke (a server restart, an idle timeout): the batch may or may
            # not have been committed. Sending it again is safe: its event ids make it
            # idempotent.
            try:
                appended, last_chain = self._append_on(
                    self._append_cursor(), statement, request, rows, expected_version
                )
            except psycopg.Error as again:
                again_what = f"{what} (sent twice: the connection was lost)"
                raise self._connections.error(again, again_what) from exc
        if len(self._reached) >= _REACHED_STREAMS:
            self._reached.clear()
        self._reached[stream_id] = (
            appended.stream_type, appended.first_version + len(rows) - 1, last_chain
        )
        return appended

    def _append_on(
        self,
        cursor: psycopg.Cursor[Any],
        statement: str,
        request: dict[str, Any],
        rows: Sequence[EventRow],
        expected_version: int | None,
    ) -> tuple[Appended, bytes]:
        """Run the append statement: where the batch landed, and its last chain hash."""
        while True:
            try:
                claimed = cursor.execute(statement, request).fetchall()
            except pg_errors.UniqueViolation as exc:
                if (
                    expected_version is None
                    and exc.diag.constraint_name == _STREAM_VERSION_KEY
                ):
                    continue  # an overlapping append took the version: read the head again
                claimed = []
            break
        if claimed:
            if len(claimed) > 1:
                claimed.sort(key=lambda row: row[1])  # by version
            kind, first_version, _, _ = claimed[0]
            positions = [row[2] for row in claimed]
            last_chain = claimed[-1][3]
            if last_chain is None:
                last_chain = request["last_chain"]
            return Appended(kind, first_version, positions), bytes(last_chain)
        # Nothing was written: a retry of a recorded batch or a stale expected version.
        connection = cursor.connection
        found = self._select_on(
            connection,
            f"SELECT {_COLUMNS} FROM event_store WHERE id = ANY(%s::uuid[]) ORDER BY position",
            ([row.id for row in rows],),
        )
        if found:
            raise AlreadyRecorded(found)
        stream_id = request["stream"]
        if expected_version is None:
            raise StoreUnavailableError(
                f"append to {stream_id!r} wrote nothing and no error was reported"
            )
        raise ConcurrencyError(stream_id, expected_version, self._version(connection, stream_id))

    def import_rows(self, rows: Sequence[ImportRow], created_at: datetime) -> None:
        """Write a bulk-import batch (event_sourcing.stores.imports) in one transaction, with
        COPY: the in-flight marker first (so the no-skip order holds, docs/ordering.md),
        then the streams' heads; versions and hash chains are computed here. An append to
        one of the batch's streams committed in between makes the batch start again."""
        streams = list(dict.fromkeys(row.stream_id for row in rows))
        now = timestamp_text(created_at)
        contents = content_hashes(rows, now, True)
        for _ in range(_IMPORT_ATTEMPTS):
            try:
                with self._connections.transaction("import") as connection:
                    self._import_on(connection, rows, contents, streams, created_at)
                return
            except _Raced:
                continue
        # Appends keep taking the next version first: write the batch as appends, which
        # locate the head and insert in one statement (one per run of a stream's events).
        for run in runs(rows):
            first = run[0]
            try:
                self.append(first.stream_id, first.stream_type, None, [r.row for r in run],
                            created_at, first.correlation_id, first.causation_id)
            except AlreadyRecorded:
                raise DuplicateEventError(
                    f"{first.where}: an event of this batch was recorded meanwhile (is another "
                    "import of the same input running?)"
                ) from None

    def _import_on(
        self,
        connection: psycopg.Connection[Any],
        rows: Sequence[ImportRow],
        contents: Sequence[bytes],
        streams: list[str],
        created_at: datetime,
    ) -> None:
        connection.execute(f"SET LOCAL lock_timeout = '{APPEND_LOCK_TIMEOUT}'")
        connection.execute(_MARKER, {})
        heads = {
            stream_id: (kind, version, bytes(chain))
            for stream_id, kind, version, chain in connection.execute(_IMPORT_HEADS, (streams,))
        }
        new = [stream_id for stream_id in streams if stream_id not in heads]
        now = timestamp_text(created_at)
        # COPY's text format, in _WRITTEN's order (JSON text holds no raw tab or newline)
        lines = "".join([
            f"{row.id}\t{_copy_text(imported.stream_id)}\t{_copy_text(kind)}\t{version}\t"
            f"{_copy_text(row.event_type)}\t{row.schema_version}\t"
            f"{_copy_json(row.payload_json)}\t{_copy_json(row.metadata_json)}\t{now}\t"
            f"{_copy_text(imported.correlation_id)}\t{_copy_text(imported.causation_id)}\t"
            f"\\\\x{content.hex()}\t\\\\x{chain.hex()}\n"
            for imported, content, (kind, version, chain) in zip(
                rows, contents, place_rows(rows, contents, heads), strict=True
            )
            for row in (imported.row,)
        ])
        try:
            with connection.cursor().copy(f"COPY event_store ({_WRITTEN}) FROM STDIN") as copy:
                copy.write(lines)
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == _STREAM_VERSION_KEY:
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

    @staticmethod
    def _version(connection: psycopg.Connection[Any], stream_id: str) -> int:
        row = connection.execute(
            "SELECT coalesce(max(version), 0) FROM event_store WHERE stream_id = %s",
            (stream_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    # -- integrity (event_sourcing.integrity) ---------------------------------------------
    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        """Rows (position order, `through` at most the head) as hashed: position, id, stream,
        stream type, version, type, schema version, payload, metadata (canonical JSON), time
        (text), correlation, causation, content, chain."""
        rows = self._connections.read(
            "read hashed rows",
            lambda connection: connection.execute(
                f"SELECT {_HASHED} FROM event_store WHERE position > %s AND position <= %s "
                "ORDER BY position LIMIT %s",
                (after, through, limit),
            ).fetchall(),
        )
        return [hashed_row(row) for row in rows]

    def restore_triggers(self) -> tuple[list[str], str | None]:
        """Recreate missing and re-enable disabled append-only triggers: (what was wrong,
        why it could not be fixed or None)."""
        expected = _TRIGGER_NAME.findall(_SCHEMA)
        return self._connections.read(
            "check the append-only triggers",
            lambda connection: self._restore_triggers_on(connection, expected),
        )

    def _restore_triggers_on(
        self, connection: psycopg.Connection[Any], expected: list[str]
    ) -> tuple[list[str], str | None]:
        states = {
            name: (table, enabled)
            for name, table, enabled in connection.execute(
                "SELECT t.tgname, c.relname, t.tgenabled FROM pg_trigger AS t "
                "JOIN pg_class AS c ON c.oid = t.tgrelid "
                "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND NOT t.tgisinternal"
            ).fetchall()
        }
        missing = [name for name in expected if name not in states]
        # 'O' fires in normal sessions, 'A' always; 'D' is disabled, 'R' replica-only.
        disabled = [
            name for name in expected if name in states and states[name][1] not in {"O", "A"}
        ]
        found = [f"trigger {name} was missing" for name in missing] + [
            f"trigger {name} was disabled" for name in disabled
        ]
        if not found:
            return [], None
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if missing:
                    connection.execute(self._schema_sql)
                for name in disabled:
                    connection.execute(
                        sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
                            sql.Identifier(states[name][0]), sql.Identifier(name)
                        )
                    )
        except psycopg.Error as exc:
            return found, str(exc).strip().splitlines()[0]
        return found, None

    # -- reading ------------------------------------------------------------------------
    @staticmethod
    def _select_on(
        connection: psycopg.Connection[Any],
        query: str,
        params: Sequence[Any],
        prepare: bool | None = None,
    ) -> list[RecordedEvent]:
        return fetch_events(
            connection.execute(query, params, prepare=prepare, binary=True).fetchall
        )

    def _select(self, what: str, query: str, params: Sequence[Any]) -> list[RecordedEvent]:
        return self._connections.read(
            what, lambda connection: self._select_on(connection, query, params)
        )

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]:
        return self._select(
            f"read_stream({stream_id!r})",
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
        if event_types is not None and not event_types:
            return []
        query, params = page_query(after, event_types, until, limit)

        def read(connection: psycopg.Connection[Any]) -> list[RecordedEvent]:
            # Two statements, in this order: the scan's snapshot must be taken after the
            # horizon was computed (each statement takes its own snapshot: autocommit, or
            # READ COMMITTED inside a transaction()).
            row = connection.execute(
                "SELECT mlevents_horizon(), current_setting('transaction_isolation')"
            ).fetchone()
            horizon, isolation = (int(row[0]), row[1]) if row else (0, "read committed")
            in_transaction = connection.info.transaction_status != TransactionStatus.IDLE
            if isolation != "read committed" and in_transaction:
                raise EventStoreError(
                    f"read_all inside a store.transaction() needs READ COMMITTED, not "
                    f"{isolation}: a snapshot older than the read horizon could skip events. "
                    "Read before the transaction, or do not change its isolation level."
                )
            # Never prepared: a prepared page query may switch to a generic plan after five
            # runs, one that walks the position index filtering every row (a reset cursor
            # with a type filter); an unnamed statement is planned for its own values.
            page = self._select_on(connection, query, params, prepare=False)
            settled = bisect.bisect_left(page, horizon, key=lambda event: event.position)
            return page if settled == len(page) else page[:settled]

        return self._connections.read(f"read_all(after={after})", read)

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        return self._select(
            "read_correlated",
            f"SELECT {_COLUMNS} FROM event_store WHERE correlation_id = %s ORDER BY position",
            (correlation_id,),
        )

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            "reading events by id",
            f"SELECT {_COLUMNS} FROM event_store WHERE id = ANY(%s::uuid[]) ORDER BY position",
            (list(ids),),
        )

    def stream_version(self, stream_id: str) -> int:
        return self._connections.read(
            f"stream_version({stream_id!r})",
            lambda connection: self._version(connection, stream_id),
        )

    def head_position(self) -> int:
        def read(connection: psycopg.Connection[Any]) -> int:
            row = connection.execute("SELECT mlevents_head()").fetchone()
            return int(row[0]) if row else 0

        return self._connections.read("head_position", read)

    def counts_by_type(self) -> dict[str, int]:
        def read(connection: psycopg.Connection[Any]) -> dict[str, int]:
            rows = connection.execute(
                "SELECT event_type, count(*) FROM event_store GROUP BY event_type ORDER BY 1"
            ).fetchall()
            return {name: int(count) for name, count in rows}

        return self._connections.read("counts_by_type", read)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read of a table beside the log (`?` placeholders), on this
        thread's transaction's connection if it has one."""
        return self._connections.read(
            "a read beside the log",
            lambda connection: connection.execute(sql.replace("?", "%s"), params).fetchall(),
        )

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[_Transaction]:
        """A transaction on a connection checked alive first; reads of the store on this
        thread inside it use its connection. A driver error escaping it is raised as an
        EventStoreError (inside, `execute` raises the driver's own)."""
        with self._connections.transaction("store.transaction()") as connection:
            if read_only:
                connection.execute("SET TRANSACTION READ ONLY")
            yield _Transaction(connection)
