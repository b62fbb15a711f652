"""SQL identifiers that come from users (schema names, read-model table names): checked
where they are given, so only names that quote to exactly themselves ever reach SQL.
"""

from __future__ import annotations

import re

from event_sourcing.errors import ConfigurationError, EventStoreError

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL silently cuts longer names (NAMEDATALEN - 1)
_SCHEMA = re.compile(r"\w+")  # letters (any script), digits, underscores; quoted in SQL
_TABLE = re.compile(r"[a-z_][a-z0-9_]*")  # the same name quoted or not, on both backends

__all__ = ["MAX_IDENTIFIER_BYTES", "check_schema_name", "check_table_name", "quote"]


def _check_length(name: str, what: str, error: type[EventStoreError]) -> None:
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise error(
            f"{what} {name!r} is {len(name.encode('utf-8'))} bytes in UTF-8; PostgreSQL keeps "
            f"only {MAX_IDENTIFIER_BYTES}, so two long names could end up as one: shorten it"
        )


def check_schema_name(name: object) -> str:
    """A PostgreSQL schema name for a store, or ConfigurationError saying why not."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"schema name {name!r} is empty or not text; give ?schema=NAME (letters, digits, "
            "underscores) or leave the option out for the default schema `mlevents`"
        )
    if _SCHEMA.fullmatch(name) is None or not name.isprintable():
        raise ConfigurationError(
            f"schema name {name!r} may hold only letters, digits and underscores"
        )
    _check_length(name, "schema name", ConfigurationError)
    if name.lower().startswith("pg_") or name.lower() == "information_schema":
        raise ConfigurationError(
            f"schema name {name!r} is reserved by PostgreSQL (pg_*, information_schema); "
            "choose another, e.g. mlevents"
        )
    return name


def check_table_name(
    name: object, what: str = "table name", error: type[EventStoreError] = ConfigurationError
) -> str:
    """A read-model table name: lower-case ASCII letters, digits, underscores (so it means
    the same table quoted or not, on SQLite and PostgreSQL), at most 63 bytes."""
    if not isinstance(name, str) or _TABLE.fullmatch(name) is None:
        raise error(
            f"{what} {name!r} must be lower-case letters, digits and underscores, "
            "starting with a letter or underscore (e.g. training_summaries)"
        )
    _check_length(name, what, error)
    return name


def quote(name: str) -> str:
    """`name` as a double-quoted SQL identifier (standard SQL: SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'
