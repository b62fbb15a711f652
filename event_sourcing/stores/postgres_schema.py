"""The PostgreSQL store's schema: its tables, indexes, triggers and functions, the
migrations from every older version, and the repair of its append-only triggers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from event_sourcing.errors import (
    AccessDeniedError,
    SchemaVersionError,
    StoreNotFoundError,
)
from event_sourcing.integrity.hashing import (
    GENESIS,
    canonical_json_bytes,
    content_hash,
    fold_chain,
    timestamp_text,
)
from event_sourcing.privacy.keys import DDL as KEY_TABLE_DDL
from event_sourcing.stores.postgres_partitions import (
    DDL as PARTITIONS_DDL,
)
from event_sourcing.stores.postgres_partitions import (
    DEFAULT_SIZE,
    PARTITION_TRIGGERS,
    adopt_v6_table,
    partition_triggers,
    retire_v6_table,
)
from event_sourcing.stores.recorder import migrating

SCHEMA_VERSION = 7
# Advisory lock keys (arbitrary constants, scoped by the schema name's hash in SQL).
SCHEMA_LOCK = 0x6D6C6576  # "mlev"
# The unique index a second event at a stream's version runs into (of the key table).
STREAM_VERSION_KEY = "event_keys_stream_id_version_key"

SCHEMA = """
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
-- Columns by alignment (8-byte ones first, then 4, then variable length), so a row holds
-- no padding; a store created before v5 keeps its order (bench/README.md: storage).
-- Partitioned by position ranges (postgres_partitions; docs/partitions.md): a partitioned
-- table's unique indexes must hold the partition key, so the ids and stream versions are
-- kept unique by event_keys below.
CREATE TABLE IF NOT EXISTS event_store (
    position       bigint NOT NULL,  -- checked by mlevents_assign_position()
    version        bigint NOT NULL CHECK (version >= 1),
    created_at     timestamptz NOT NULL,
    occurred_at    timestamptz,  -- business time if given; NULL: created_at (temporal.md)
    id             uuid NOT NULL,
    schema_version integer NOT NULL,
    stream_id      text NOT NULL,
    stream_type    text NOT NULL,
    event_type     text NOT NULL,
    correlation_id text,
    causation_id   text,
    content_hash   bytea,  -- integrity: docs/integrity.md
    chain_hash     bytea,
    payload        jsonb NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT event_store_pkey PRIMARY KEY (position)
) PARTITION BY RANGE (position);
-- Every event's id, stream and version (and where it is): one small table across all
-- partitions, written by mlevents_assign_position() in the event's own insert, so an id
-- or a stream's version is taken once, whichever partition holds it (a per-partition
-- index could not see a twin in another partition). Reads by stream and id go through it.
CREATE TABLE IF NOT EXISTS event_keys (
    id        uuid PRIMARY KEY,
    version   bigint NOT NULL,
    position  bigint NOT NULL,
    stream_id text NOT NULL,
    CONSTRAINT event_keys_stream_id_version_key UNIQUE (stream_id, version)
);
-- The position range a new partition covers (postgres_partitions).
CREATE TABLE IF NOT EXISTS mlevents_partitioning (
    id   integer PRIMARY KEY CHECK (id = 1),
    size bigint NOT NULL CHECK (size >= 1)
);
-- Positions [lower_bound, upper_bound) archived to a Parquet file of the artifact store
-- (stores/postgres_archive, docs/archive.md): their partition was dropped.
CREATE TABLE IF NOT EXISTS mlevents_archives (
    lower_bound bigint PRIMARY KEY,
    upper_bound bigint NOT NULL,
    uri         text NOT NULL,
    sha256      text NOT NULL,
    events      bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_event_store_type ON event_store (event_type, position);
-- read_all(until=...) without a type filter: a block range index (a few pages for any
-- size of log: times grow with positions) instead of a B-tree entry per event.
CREATE INDEX IF NOT EXISTS idx_event_store_time_range ON event_store USING brin (created_at)
    WITH (autosummarize = on);
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
-- every role, the table's owner included. A partitioned table routes a row by its position
-- before any trigger runs, so the column's default takes it (nextval, noted in a setting)
-- and the trigger admits only the value this session's last nextval returned through that
-- default: a forged setting fails the currval comparison, a named position the setting
-- comparison. The sequence is named with its schema, so no session can shadow it (e.g.
-- with a temporary sequence of the same name). The trigger also takes the event's id and
-- stream version in event_keys (as the table's owner: no role may write there directly).
ALTER TABLE event_store ALTER COLUMN position SET DEFAULT
    set_config('mlevents.position', nextval('{schema}.event_position_seq')::text, true)::bigint;
CREATE OR REPLACE FUNCTION mlevents_assign_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NEW.position::text IS DISTINCT FROM current_setting('mlevents.position', true)
            OR NEW.position <> currval('{schema}.event_position_seq') THEN
        RAISE EXCEPTION 'event_store positions are set by the store: an insert may not name one'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO {schema}.event_keys (id, version, position, stream_id)
    VALUES (NEW.id, NEW.version, NEW.position, NEW.stream_id);
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
# The subject key table (event_sourcing.privacy.keys), created with the store so that a role
# without CREATE (`mlevents grant ... appender`) can append personal data.
SCHEMA += f"{KEY_TABLE_DDL};\n" + PARTITIONS_DDL

_MIGRATIONS: dict[int, str | None] = {
    # v2: the stream's version is no longer a counter row updated by every append; the
    # UNIQUE (stream_id, version) index of event_store decides races.
    1: """
    DROP FUNCTION IF EXISTS mlevents_append(jsonb);
    ALTER TABLE streams DROP COLUMN IF EXISTS version, DROP COLUMN IF EXISTS updated_at;
    """,
    # v3: positions come from the mlevents_assign_position trigger (created by SCHEMA),
    # which refuses inserts that name one, instead of a column default anyone could override.
    2: "ALTER TABLE event_store ALTER COLUMN position DROP DEFAULT;",
    # v4: content and chain hashes (tamper evidence); _add_hashes computes them in order.
    3: """
    ALTER TABLE event_store ADD COLUMN IF NOT EXISTS content_hash bytea,
        ADD COLUMN IF NOT EXISTS chain_hash bytea;
    """,
    # v5: the B-tree on created_at gives way to a block range index (created by SCHEMA).
    4: "DROP INDEX IF EXISTS idx_event_store_time;",
    # v6: business time (its partial index is created by SCHEMA).
    5: "ALTER TABLE event_store ADD COLUMN IF NOT EXISTS occurred_at timestamptz;",
    # v7: event_store partitioned by position (postgres_partitions: retire_v6_table, then
    # adopt_v6_table after the schema script).
    6: None,
}
_DESCRIPTIONS = {
    1: "event_store, streams, in-flight markers, append-only triggers",
    2: "streams without a version counter; appends are one INSERT statement",
    3: "positions are assigned by a trigger; inserts naming one are refused",
    4: "per-stream hash chains (content_hash, chain_hash)",
    5: "event_store columns by alignment (new stores); a block range index on created_at",
    6: "business time (occurred_at)",
    7: "event_store partitioned by position; ids and stream versions in event_keys",
}
# (current user, USAGE on the store's schema, whether it holds mlevents_schema), or no row
# when the schema does not exist.
PROBE = """
    SELECT current_user::text, has_schema_privilege(n.oid, 'USAGE'),
        CASE WHEN has_schema_privilege(n.oid, 'USAGE')
            THEN to_regclass(format('%%I.mlevents_schema', n.nspname)) IS NOT NULL END
    FROM pg_namespace AS n WHERE n.nspname = %s"""
HASHED = (
    "position, id::text, stream_id, stream_type, version, event_type, schema_version, payload, "
    "metadata, created_at, correlation_id, causation_id, content_hash, chain_hash"
)
# What is hashed since v6 (the v4 migration's _add_hashes runs before occurred_at exists).
HASHED_V6 = HASHED + ", occurred_at"


def hashed_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row of HASHED (or HASHED_V6) with payload and metadata as hashed (canonical
    JSON: jsonb keeps the value, not the text) and the times as text."""
    return (
        *row[:7], canonical_json_bytes(row[7]), canonical_json_bytes(row[8]),
        timestamp_text(row[9]),
        *row[10:14],
        *(None if when is None else timestamp_text(when) for when in row[14:]),
    )


def _add_hashes(connection: psycopg.Connection[Any]) -> None:
    """Migration to v4: compute every event's content and chain hash in position order."""
    heads: dict[str, bytes] = {}
    updates = []
    for row in connection.execute(f"SELECT {HASHED} FROM event_store ORDER BY position"):
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


_MIGRATION_STEPS = {3: _add_hashes, 6: retire_v6_table}  # Python run after a version's SQL
# The triggers the schema script creates (restore_triggers checks every one is there, on).
TRIGGERS = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE,
).findall(SCHEMA)


def found_version(connection: psycopg.Connection[Any], schema: str, description: str) -> int | None:
    """The store's schema version; None if there is no store, -1 if there is not even
    its schema (AccessDeniedError if the role may not look)."""
    row = connection.execute(PROBE, (schema,)).fetchone()
    if row is None:
        return -1
    user, usage, exists = row
    if not usage:
        raise AccessDeniedError(
            f"role {user!r} has no USAGE on schema {schema!r} of {description}; "
            f"as its owner, run `mlevents grant {user} --reader` (or --appender, "
            "--projector) with --apply"
        )
    if not exists:
        return None
    try:
        latest = connection.execute("SELECT max(version) FROM mlevents_schema").fetchone()
    except pg_errors.InsufficientPrivilege:
        raise AccessDeniedError(
            f"role {user!r} may not read the event store in {description}; as its "
            f"owner, run `mlevents grant {user} --reader` (or --appender, --projector) "
            "with --apply"
        ) from None
    return None if not latest or latest[0] is None else int(latest[0])


def create_schema(
    connection: psycopg.Connection[Any],
    schema: str,
    description: str,
    create: bool,
    partition_size: int = DEFAULT_SIZE,
) -> None:
    """Bring the schema to SCHEMA_VERSION. A store already there costs two reads and
    takes no lock, so roles without CREATE (see `mlevents grant`) can connect.
    `partition_size`: the positions a partition covers, for a store created or migrated
    (to v7) here."""
    found = found_version(connection, schema, description)
    if found == SCHEMA_VERSION:
        return
    if (found is None or found < 0) and not create:
        raise StoreNotFoundError(f"no event store at {description}")
    try:
        with connection.transaction():
            # Serialize concurrent first connects: CREATE ... IF NOT EXISTS is not
            # race-free.
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            found = found_version(connection, schema, description)
            if found == SCHEMA_VERSION:
                return
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"schema {schema} has version {found}, newer than this "
                    f"mlevents knows ({SCHEMA_VERSION}); upgrade mlevents"
                )
            if found == -1:
                connection.execute(
                    sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema))
                )
                found = None
            migration: AbstractContextManager[None] = nullcontext()
            if found:
                head = connection.execute(
                    "SELECT coalesce(max(position), 0) FROM event_store"
                ).fetchone()
                migration = migrating(description, found, SCHEMA_VERSION, head[0] if head else 0)
            with migration:
                for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
                    if statement := _MIGRATIONS[version]:
                        connection.execute(statement)
                    if version in _MIGRATION_STEPS:
                        _MIGRATION_STEPS[version](connection)
                _create_objects(connection, schema, partition_size)
    except pg_errors.InsufficientPrivilege as exc:
        what = (
            "create" if found is None or found < 0
            else f"migrate (to schema version {SCHEMA_VERSION})"
        )
        raise AccessDeniedError(
            f"this role may not {what} the event store in {description} "
            f"({str(exc).strip().splitlines()[0]}); run `mlevents init` once as a role "
            "that may (the database owner, or the schema's owner), then grant this role "
            "what it needs with `mlevents grant`"
        ) from None


def _create_objects(
    connection: psycopg.Connection[Any], schema: str, partition_size: int
) -> None:
    """The current schema's objects (those missing), partitions ahead, its version row."""
    connection.execute(schema_sql(schema))
    connection.execute(
        "INSERT INTO mlevents_partitioning (id, size) VALUES (1, %s) "
        "ON CONFLICT DO NOTHING",
        (partition_size,),
    )
    adopt_v6_table(connection, partition_size)
    connection.execute("SELECT mlevents_add_partitions(0)")
    connection.execute(
        "INSERT INTO mlevents_schema (version, description) VALUES (%s, %s) "
        "ON CONFLICT DO NOTHING",
        (SCHEMA_VERSION, _DESCRIPTIONS[SCHEMA_VERSION]),
    )


def restore_triggers(
    connection: psycopg.Connection[Any], schema: str
) -> tuple[list[str], str | None]:
    """Recreate missing and re-enable disabled append-only triggers: (what was wrong,
    why it could not be fixed or None)."""
    expected = TRIGGERS
    states = {
        name: (table, enabled)
        for name, table, enabled in connection.execute(
            "SELECT t.tgname, c.relname, t.tgenabled FROM pg_trigger AS t "
            "JOIN pg_class AS c ON c.oid = t.tgrelid "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND NOT t.tgisinternal "
            "AND NOT c.relispartition"
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
    # Each partition's own statement triggers (docs/partitions.md).
    parts = partition_triggers(connection) if "event_store_no_update" in states else {}
    unprotected = []
    for part, triggers in parts.items():
        for name in PARTITION_TRIGGERS:
            state = triggers.get(name)
            if state not in {"O", "A"}:
                found.append(
                    f"trigger {name} on {part} was {'missing' if state is None else 'disabled'}"
                )
                unprotected.append(part)
    if not found:
        return [], None
    try:
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if missing:
                connection.execute(schema_sql(schema))
            for name in disabled:
                connection.execute(
                    sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
                        sql.Identifier(states[name][0]), sql.Identifier(name)
                    )
                )
            for part in dict.fromkeys(unprotected):
                connection.execute("SELECT mlevents_protect_partition(%s)", (part,))
    except psycopg.Error as exc:
        return found, str(exc).strip().splitlines()[0]
    return found, None


def schema_sql(schema: str) -> str:
    """SCHEMA for the store in `schema` (a name stores.identifiers checked: quoted, it is
    exactly itself)."""
    return SCHEMA.replace("{schema}", f'"{schema}"')

