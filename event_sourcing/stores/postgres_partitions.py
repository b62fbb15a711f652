"""The PostgreSQL event_store's partitions (docs/partitions.md): ranges of positions, kept
ahead of the sequence; the move of a v6 store's table into the partitioned one; the
append-only triggers of each partition.

A partition covers [lower, lower + size) positions; the store keeps at least two empty ones
beyond the one being written. They are added by `mlevents_add_partitions` (as the store's
owner: a SECURITY DEFINER function appenders may run) when a store is opened and when an
append lands in the second-to-last one, in a transaction of its own with a short
lock_timeout: creating and attaching a partition takes SHARE UPDATE EXCLUSIVE on
event_store, which appends (ROW EXCLUSIVE) and reads (ACCESS SHARE) do not wait for. There
is no DEFAULT partition: attaching a range beside one scans it under an ACCESS EXCLUSIVE
lock, and a row that landed in it would block that range's partition until moved. An
insert beyond the last partition fails instead, and the append adds partitions and sends
itself again (the failed insert's positions are a gap, as an aborted append's are).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

DEFAULT_SIZE = 1_000_000  # positions per partition (the `partition_size` connect option)
EXTEND_LOCK_TIMEOUT = "2s"
NO_PARTITION = "no partition of relation"  # an insert past the last partition
# The statement triggers every partition carries (a statement on event_store fires only
# event_store's own; one naming a partition fires the partition's). Row triggers are cloned
# from event_store by PostgreSQL.
STATEMENT_TRIGGERS = ("event_store_no_update", "event_store_no_delete", "event_store_no_truncate")
PARTITION_TRIGGERS = (*STATEMENT_TRIGGERS, "event_store_assign_position")
_log = logging.getLogger(__name__)

DDL = """
-- Give a partition the append-only statement triggers and enable its clone of the row
-- trigger.
CREATE OR REPLACE FUNCTION mlevents_protect_partition(part text) RETURNS void
LANGUAGE plpgsql SET search_path = {schema}, pg_catalog, pg_temp AS $$
DECLARE
    op text;
BEGIN
    FOREACH op IN ARRAY ARRAY['update', 'delete', 'truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', 'event_store_no_' || op, part);
        EXECUTE format('CREATE TRIGGER %I BEFORE %s ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION mlevents_reject_mutation()',
                       'event_store_no_' || op, upper(op), part);
    END LOOP;
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = part::regclass
               AND tgname = 'event_store_assign_position') THEN
        EXECUTE format('ALTER TABLE %I ENABLE TRIGGER event_store_assign_position', part);
    END IF;
END $$;
REVOKE ALL ON FUNCTION mlevents_protect_partition(text) FROM PUBLIC;

-- The partitions of event_store: (name, lower bound or NULL for MINVALUE, upper bound).
CREATE OR REPLACE FUNCTION mlevents_partitions()
RETURNS TABLE (name text, lower_bound bigint, upper_bound bigint)
LANGUAGE sql STABLE SET search_path = {schema}, pg_catalog, pg_temp AS $$
    SELECT c.relname::text,
        substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \\(''(-?\\d+)''\\)')::bigint,
        substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''(-?\\d+)''\\)')::bigint
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = '{schema}.event_store'::regclass
    ORDER BY 3
$$;

-- Add partitions until at least two empty ones lie beyond position last + `needed`;
-- returns the position from which an append should call again (the second-to-last
-- partition's lower bound).
CREATE OR REPLACE FUNCTION mlevents_add_partitions(needed bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_catalog, pg_temp AS $$
DECLARE
    step bigint;
    top bigint;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || ':mlevents-partitions'));
    SELECT p.size INTO step FROM mlevents_partitioning AS p;
    SELECT coalesce(max(upper_bound), 0) INTO top FROM mlevents_partitions();
    WHILE top <= mlevents_last_position() + greatest(needed, 0) + 2 * step LOOP
        part := 'event_store_p' || top;
        EXECUTE format('CREATE TABLE %I (LIKE event_store INCLUDING DEFAULTS '
                       'INCLUDING CONSTRAINTS)', part);
        PERFORM mlevents_protect_partition(part);
        EXECUTE format('ALTER TABLE event_store ATTACH PARTITION %I '
                       'FOR VALUES FROM (%s) TO (%s)', part, top, top + step);
        top := top + step;
    END LOOP;
    RETURN top - 2 * step;
END $$;
REVOKE ALL ON FUNCTION mlevents_add_partitions(bigint) FROM PUBLIC;
"""
# (Its privilege is checked when a statement calling it starts: asked first.)
_MAY_ADD = "SELECT has_function_privilege('mlevents_add_partitions(bigint)', 'EXECUTE')"


def add_partitions(connection: psycopg.Connection[Any], needed: int = 0) -> int | None:
    """Add the partitions ahead that are missing, in a transaction of its own that waits
    at most EXTEND_LOCK_TIMEOUT for a lock: the position from which to call again, or None
    when this role may not (a reader) or it failed (logged: the next call tries again)."""
    try:
        with connection.transaction():
            connection.execute(f"SET LOCAL lock_timeout = '{EXTEND_LOCK_TIMEOUT}'")
            may = connection.execute(_MAY_ADD).fetchone()
            row = connection.execute(
                "SELECT mlevents_add_partitions(%s)", (needed,)
            ).fetchone() if may and may[0] else None
    except psycopg.Error as exc:
        _log.warning("adding event_store partitions failed: %s", str(exc).strip())
        return None
    return None if row is None or row[0] is None else int(row[0])


def retire_v6_table(connection: psycopg.Connection[Any]) -> None:
    """Migration to v7, before the schema script: a v6 event_store (a plain table) steps
    aside as event_store_v6, without the unique indexes, triggers and index names the
    partitioned event_store takes over (adopt_v6_table attaches it afterwards). A store
    whose event_store is partitioned already is left as it is."""
    row = connection.execute(
        "SELECT c.relkind FROM pg_class AS c WHERE c.oid = to_regclass('event_store')"
    ).fetchone()
    if row is None or row[0] != "r":
        return
    connection.execute("ALTER TABLE event_store RENAME TO event_store_v6")
    for trigger in (*STATEMENT_TRIGGERS, "event_store_assign_position"):
        connection.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON event_store_v6").format(
                sql.Identifier(trigger)
            )
        )
    # The id and (stream, version) keys move to event_keys; the position key gives way
    # to the partitioned table's primary key, built when the table is attached.
    connection.execute(
        "ALTER TABLE event_store_v6 DROP CONSTRAINT IF EXISTS event_store_pkey, "
        "DROP CONSTRAINT IF EXISTS event_store_stream_id_version_key, "
        "DROP CONSTRAINT IF EXISTS event_store_position_key, "
        "ALTER COLUMN position DROP DEFAULT"
    )
    for index in ("type", "time_range", "correlation", "occurred", "time"):
        connection.execute(
            sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                sql.Identifier(f"idx_event_store_{index}"),
                sql.Identifier(f"event_store_v6_{index}"),
            )
        )


def adopt_v6_table(connection: psycopg.Connection[Any], size: int) -> None:
    """Migration to v7, after the schema script: the v6 rows become the first partition
    as they are (attached, not copied: positions, hashes and chains unchanged, and no
    trigger runs), their ids and stream versions are entered in event_keys, and the roles
    granted on the v6 table get the same on event_store (and what they need beside it)."""
    if connection.execute("SELECT to_regclass('event_store_v6')").fetchone() in (None, (None,)):
        return
    connection.execute(
        "INSERT INTO event_keys (id, version, position, stream_id) "
        "SELECT id, version, position, stream_id FROM event_store_v6"
    )
    row = connection.execute(
        "SELECT greatest(mlevents_last_position(), "
        "(SELECT coalesce(max(position), 0) FROM event_store_v6))"
    ).fetchone()
    last = int(row[0]) if row else 0
    upper = (last // size + 1) * size
    # A partition carries its table's CHECK constraints by name.
    checks = "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint " \
        "WHERE conrelid = %s::regclass AND contype = 'c'"
    own = {definition: name for name, definition in connection.execute(
        checks, ("event_store_v6",)
    )}
    for name, definition in connection.execute(checks, ("event_store",)).fetchall():
        if own.get(definition, name) != name:
            connection.execute(
                sql.SQL("ALTER TABLE event_store_v6 RENAME CONSTRAINT {} TO {}").format(
                    sql.Identifier(own[definition]), sql.Identifier(name)
                )
            )
        elif definition not in own:
            connection.execute(
                sql.SQL("ALTER TABLE event_store_v6 ADD CONSTRAINT {} {}").format(
                    sql.Identifier(name), sql.SQL(definition)
                )
            )
    connection.execute(
        sql.SQL(
            "ALTER TABLE event_store ATTACH PARTITION event_store_v6 "
            "FOR VALUES FROM (MINVALUE) TO ({})"
        ).format(sql.Literal(upper))
    )
    connection.execute("ALTER TABLE event_store_v6 RENAME TO event_store_p0")
    connection.execute("SELECT mlevents_protect_partition('event_store_p0')")
    _move_grants(connection)


def _move_grants(connection: psycopg.Connection[Any]) -> None:
    """The privileges other roles held on the v6 table, granted on event_store instead
    (a partition is reached through it), with SELECT on event_keys for its readers and
    the right to add partitions for its appenders."""
    grants = connection.execute(
        "SELECT g.grantee::regrole::text, g.privilege_type "
        "FROM pg_class AS c, aclexplode(c.relacl) AS g "
        "WHERE c.oid = 'event_store_p0'::regclass AND g.grantee <> c.relowner "
        "AND g.grantee <> 0"
    ).fetchall()
    for role, privilege in grants:
        who = sql.Identifier(role)
        connection.execute(
            sql.SQL("GRANT {} ON event_store TO {}").format(sql.SQL(privilege), who)
        )
        connection.execute(
            sql.SQL("REVOKE {} ON event_store_p0 FROM {}").format(sql.SQL(privilege), who)
        )
        if privilege == "SELECT":
            connection.execute(sql.SQL("GRANT SELECT ON event_keys TO {}").format(who))
            # (the archive's manifest, read by every read of the log: docs/archive.md)
            connection.execute(
                sql.SQL("GRANT SELECT ON mlevents_archives TO {}").format(who)
            )
        if privilege == "INSERT":
            connection.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION mlevents_add_partitions(bigint) TO {}")
                .format(who)
            )


def partition_triggers(connection: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    """Each partition's triggers (PARTITION_TRIGGERS): partition -> trigger -> tgenabled."""
    found: dict[str, dict[str, str]] = {}
    for part, trigger, enabled in connection.execute(
        "SELECT p.name, t.tgname, t.tgenabled FROM mlevents_partitions() AS p "
        "LEFT JOIN pg_trigger AS t ON t.tgrelid = p.name::regclass "
        "AND t.tgname = ANY(%s) AND NOT t.tgisinternal",
        (list(PARTITION_TRIGGERS),),
    ).fetchall():
        found.setdefault(part, {})
        if trigger is not None:
            found[part][trigger] = enabled
    return found
