"""Least privilege on PostgreSQL: the minimum a role needs to append, read or run projections
on a store, as SQL to print or apply (behind `mlevents grant`).

Nothing granted here lets a role UPDATE, DELETE, TRUNCATE or DROP events, disable triggers,
move the position sequence, or name a position: only a table's owner can do the latter few.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from event_sourcing.errors import AccessDeniedError, ConfigurationError

# Subjects' data keys (event_sourcing.privacy): appenders add keys, every role reads them
# (to decrypt), and only the owner deletes them (store.forget).
from event_sourcing.privacy.keys import DDL as KEY_TABLE_DDL
from event_sourcing.privacy.keys import TABLE as KEY_TABLE

Kind = Literal["reader", "appender", "projector"]
KINDS: tuple[Kind, ...] = ("reader", "appender", "projector")
# The store's own objects; every other table of its schema belongs to projections.
STORE_TABLES = (
    "mlevents_schema", "streams", "event_store", "event_keys", "mlevents_archives"
)
# Beside the store's tables, of no role's concern: event_store's partitions (reached through
# it) and their settings (stores.postgres_partitions).
_INTERNAL_TABLES = ("mlevents_partitioning",)
_FUNCTIONS = (
    "mlevents_inflight_key", "mlevents_last_position", "mlevents_horizon", "mlevents_head"
)

__all__ = ["KINDS", "STORE_TABLES", "Kind", "apply_grants", "grant_statements"]


def _projection_tables(connection: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = connection.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relname <> ALL(%s) "
        "AND NOT c.relispartition "
        "ORDER BY c.relname",
        (schema, [*STORE_TABLES, *_INTERNAL_TABLES, KEY_TABLE]),
    ).fetchall()
    return [row[0] for row in rows]


def grant_statements(
    connection: psycopg.Connection[Any], schema: str, role: str, kind: Kind
) -> list[sql.Composed]:
    """The statements that give `role` what a `kind` needs on the store in `schema`.

    reader: read the log (SELECT on the store's tables, SELECT on the position sequence
    for the read horizon) and the read models that exist now. appender: a reader that may
    also INSERT events (and take positions: USAGE on the sequence, which allows nextval but
    not setval). projector: a reader that may CREATE tables in the schema and owns the
    projection tables (runner checkpoints, dead letters, read models): a rebuild drops and
    recreates them, which only their owner may do. Every kind: the subject key table is
    created first if the store predates it (the owner runs this), then granted.
    """
    if kind not in KINDS:
        raise ConfigurationError(f"unknown role kind {kind!r}; use one of {', '.join(KINDS)}")
    s, r = sql.Identifier(schema), sql.Identifier(role)

    def on(name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(s, sql.Identifier(name))

    tables = [on(name) for name in STORE_TABLES]
    projection_tables = _projection_tables(connection, schema)
    statements = [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(", ").join(tables), r),
        sql.SQL("GRANT SELECT ON SEQUENCE {} TO {}").format(on("event_position_seq"), r),
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
            sql.SQL(", ").join(sql.SQL("{}()").format(on(name)) for name in _FUNCTIONS), r
        ),
    ]
    # Stores made before the key table joined the schema get it here (the owner grants).
    statements += [
        sql.SQL(KEY_TABLE_DDL.replace(KEY_TABLE, "{}", 1)).format(on(KEY_TABLE)),
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL("SELECT, INSERT" if kind == "appender" else "SELECT"), on(KEY_TABLE), r
        ),
    ]
    if kind == "reader" and projection_tables:
        statements.append(
            sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(on(name) for name in projection_tables), r
            )
        )
    if kind == "appender":
        statements += [
            sql.SQL("GRANT INSERT ON {}, {} TO {}").format(on("event_store"), on("streams"), r),
            sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(on("event_position_seq"), r),
            # partitions ahead, added as the owner (stores.postgres_partitions)
            sql.SQL("GRANT EXECUTE ON FUNCTION {}(bigint) TO {}").format(
                on("mlevents_add_partitions"), r
            ),
        ]
    if kind == "projector":
        statements.append(sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(s, r))
        statements += [
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(on(name), r)
            for name in projection_tables
        ]
    return statements


def apply_grants(
    connection: psycopg.Connection[Any], statements: list[sql.Composed], role: str
) -> None:
    """Run `statements` in one transaction (all or nothing)."""
    try:
        with connection.transaction():
            for statement in statements:
                connection.execute(statement)
    except pg_errors.UndefinedObject as exc:
        raise ConfigurationError(
            f"cannot grant to {role!r}: {str(exc).strip().splitlines()[0]}; create the role "
            f"first (CREATE ROLE ... LOGIN)"
        ) from None
    except pg_errors.InsufficientPrivilege as exc:
        raise AccessDeniedError(
            f"cannot grant to {role!r}: {str(exc).strip().splitlines()[0]}; run this as the "
            "owner of the store's schema (handing projection tables to a projector also "
            "needs membership in that role, or a superuser)"
        ) from None
