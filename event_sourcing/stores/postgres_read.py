"""How the PostgreSQL store's rows come back: the columns of an event, the keyset page
query of the global log, events found through event_keys (those archived read from the
archive's files), pages streamed in chunks and decoded a page at a time, and the
transaction handed to read models (one statement per call)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import set_json_loads
from psycopg.types.string import ByteaBinaryLoader

from event_sourcing.events import RecordedEvent
from event_sourcing.stores.business_time import UNDATED
from event_sourcing.stores.recorder import MAX_SEEK_BRANCHES, fetch_events
from event_sourcing.stores.values import decode

if TYPE_CHECKING:
    from event_sourcing.stores.postgres_archive_files import ArchiveFiles

# In RecordedEvent's field order; schema_version twice: as returned and as recorded.
# Payload and metadata as their UTF-8 text, decoded a page at a time (recorder.fetch_events):
# as varchar, which an event cursor loads as bytes (event_cursor). The store's tables have
# no varchar column; convert_to(..., 'UTF8') to bytea would cost the server a validation
# and a copy per value.
COLUMNS = (
    "id::text, stream_id, stream_type, version, position, event_type, schema_version, "
    "payload::text::varchar, metadata::text::varchar, created_at, "
    "correlation_id, causation_id, schema_version, occurred_at"
)
# Events found through event_keys (k), which says where they are: one lookup of a
# partition's primary key per key (runtime partition pruning leaves one partition to look
# in). The lateral subquery is kept (OFFSET 0) so that a long stream is not planned as a
# hash join over every partition.
# (LEFT JOIN: a key whose event is archived, docs/archive.md, comes back as its position.)
KEYED = (
    f"SELECT e.*, k.position FROM event_keys AS k LEFT JOIN LATERAL (SELECT {COLUMNS} "
    "FROM event_store WHERE event_store.position = k.position OFFSET 0) AS e ON true"
)
# A page's rows also say how far the archive reaches and how many files it has, in the
# scan's own snapshot (an archive committed between the horizon and the scan is seen, and
# one of a partition below the highest archived one is told from the count: docs/archive.md).
ARCHIVED = (
    "(SELECT coalesce(max(upper_bound), 0) FROM mlevents_archives), "
    "(SELECT count(*) FROM mlevents_archives)"
)
BY_IDS = f"{KEYED} WHERE k.id = ANY(%s::uuid[]) ORDER BY k.position"
# bytea's binary loader (psycopg's C one when installed): the bytes as they came.
_AS_BYTES = psycopg.postgres.adapters.get_loader(
    psycopg.postgres.types["bytea"].oid, psycopg.pq.Format.BINARY
) or ByteaBinaryLoader


def event_cursor(connection: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A binary cursor that loads varchar (only COLUMNS' payload and metadata) as bytes."""
    cursor = connection.cursor(binary=True)
    cursor.adapters.register_loader("varchar", _AS_BYTES)
    return cursor


def select_on(
    connection: psycopg.Connection[Any],
    archives: ArchiveFiles,
    query: str,
    params: Sequence[Any],
) -> list[RecordedEvent]:
    """The events of a query; through event_keys (KEYED), those archived are read from
    the archive's files."""
    rows = event_cursor(connection).execute(query, params).fetchall()
    archived = [row[14] for row in rows if row[0] is None]
    events = fetch_events(
        (lambda: [row for row in rows if row[0] is not None]) if archived else lambda: rows
    )
    if not archived:
        return events
    if not archives.covers(archived):
        archives.load(connection)
    return sorted(events + archives.at(archived), key=lambda e: e.position)


def _load_json(data: str | bytes) -> Any:
    # psycopg's default goes through json.loads(bytes), which sniffs the encoding with a
    # regex per value; jsonb text is always UTF-8. Empty metadata is the common case.
    # (Not used for events: COLUMNS reads their payload and metadata as UTF-8 bytes.)
    if data == b"{}":
        return {}
    return decode(data if isinstance(data, str) else bytes(data).decode())


def configure(connection: psycopg.Connection[Any]) -> None:
    set_json_loads(_load_json, connection)


def page_query(
    after: int,
    event_types: Collection[str] | None,
    until: datetime | None,
    limit: int,
    undated_only: bool = False,
) -> tuple[str, list[Any]]:
    """The keyset query of one page of the global log, without the horizon.

    The horizon is applied by the caller, not in SQL: a `position < h` bound makes the
    planner trade the ordered index scan for a bitmap scan and a sort of the whole tail
    whenever statistics lag behind a burst of appends. A type filter is one ordered seek
    of the (event_type, position) index per type, each at most a page, then sorted:
    `event_type = ANY(...)` would walk the position index and filter every row until the
    page fills (rare types), and unlimited branches may be planned as a whole-type scan.
    """
    columns = f"{COLUMNS}, {ARCHIVED}"
    time_filter = (" AND created_at <= %s" if until is not None else "") + (
        UNDATED if undated_only else ""
    )
    types = sorted(set(event_types)) if event_types is not None else []
    if event_types is None or len(types) == 1:
        where = "position > %s" + (" AND event_type = %s" if types else "")
        query = f"SELECT {columns} FROM event_store WHERE {where}{time_filter}"
        params: list[Any] = [after, *types] + ([until] if until is not None else [])
    elif len(types) > MAX_SEEK_BRANCHES:  # one statement of hundreds of branches plans slowly
        query = (
            f"SELECT {columns} FROM event_store WHERE position > %s "
            f"AND event_type = ANY(%s){time_filter}"
        )
        params = [after, types] + ([until] if until is not None else [])
    else:
        branches, params = [], []
        for event_type in types:
            branches.append(
                f"(SELECT {columns} FROM event_store WHERE position > %s AND event_type = %s"
                f"{time_filter} ORDER BY position LIMIT %s)"
            )
            params += [after, event_type] + ([until] if until is not None else []) + [limit]
        query = " UNION ALL ".join(branches)
    params.append(limit)
    return f"{query} ORDER BY position LIMIT %s", params


# A page is fetched in chunks of this many rows (libpq's chunked mode), each decoded while
# the server renders the next ones as text: read_page's two halves, the server's and the
# client's, run side by side instead of one after the other (bench/README.md).
_CHUNK = 500


def stream_on(
    connection: psycopg.Connection[Any], query: str, params: Sequence[Any]
) -> tuple[list[RecordedEvent], tuple[int, int] | None]:
    """A page's events, and how far the archive reached and its number of files (None: no
    row said)."""
    rows = event_cursor(connection).stream(query, params, size=_CHUNK)
    events: list[RecordedEvent] = []
    archived = None
    while chunk := list(islice(rows, _CHUNK)):
        archived = (chunk[0][14], chunk[0][15])
        events += fetch_events(chunk.copy)
    return events, archived


class _OneStatementCursor(psycopg.Cursor[Any]):
    """Sends every query with the extended protocol, which runs exactly one statement: a
    read-model query holding `; DROP TABLE ...` fails instead of running it (as on SQLite).
    psycopg would use the simple protocol, which runs several, for a query without
    parameters."""

    def _execute_send(
        self, query: Any, *, force_extended: bool = False, binary: bool | None = None
    ) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


class Transaction:
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
