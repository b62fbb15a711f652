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
See docs/ordering.md for the argument and the measurements. The schema and its
migrations are in postgres_schema, the append statement in postgres_append (why one wrote
nothing, and a head read from the archive, in postgres_heads), the page queries and
decoding of reads in postgres_read, archiving in postgres_archive and the reads of its
files in postgres_archive_files, the bulk import in postgres_import.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from event_sourcing.errors import (
    ConcurrencyError,
    ConfigurationError,
    EventStoreError,
    StoreUnavailableError,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.stores import postgres_heads
from event_sourcing.stores.business_time import dated_page_query
from event_sourcing.stores.imports import ImportRow
from event_sourcing.stores.postgres_append import append_query
from event_sourcing.stores.postgres_archive_files import ArchiveFiles, archived_files, merge
from event_sourcing.stores.postgres_errors import broken
from event_sourcing.stores.postgres_heads import ClockBehind
from event_sourcing.stores.postgres_import import ATTEMPTS as IMPORT_ATTEMPTS
from event_sourcing.stores.postgres_import import import_rows
from event_sourcing.stores.postgres_partitions import DEFAULT_SIZE, NO_PARTITION, add_partitions
from event_sourcing.stores.postgres_pool import Connections, session_options
from event_sourcing.stores.postgres_read import (
    ARCHIVED,
    BY_IDS,
    COLUMNS,
    KEYED,
    Transaction,
    configure,
    event_cursor,
    page_query,
    stream_on,
)
from event_sourcing.stores.postgres_schema import (
    HASHED_V6,
    STREAM_VERSION_KEY,
    create_schema,
    hashed_row,
    restore_triggers,
)
from event_sourcing.stores.recorder import (
    AlreadyRecorded,
    Appended,
    EventRow,
    fetch_events,
    redact_text,
    redact_url,
)
from event_sourcing.stores.times import MAX_TIME, MIN_TIME

if TYPE_CHECKING:
    from event_sourcing.artifacts import ArtifactStore

_REACHED_STREAMS = 10_000  # streams whose reached version a recorder remembers


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
        partition_size: int = DEFAULT_SIZE,
    ) -> None:
        if isinstance(partition_size, bool) or not isinstance(partition_size, int) or (
            partition_size < 1
        ):
            raise ConfigurationError(
                f"partition_size must be a positive number of positions, not {partition_size!r}"
            )
        self.url = url
        self.schema = schema
        self.description = f"{redact_url(url)} (schema {schema})"
        # The schema name was checked (stores.identifiers): quoted, it is exactly itself.
        options = f'-c search_path="{schema}" -c timezone=UTC'
        kwargs: dict[str, Any] = {"autocommit": True, "options": session_options(url, options)}
        try:
            with psycopg.connect(
                url, connect_timeout=max(1, int(connect_timeout)), **kwargs
            ) as connection:
                create_schema(connection, schema, self.description, create, partition_size)
                # Partitions ahead (postgres_partitions): from here on, an append that
                # lands at or past this position adds more.
                self._extend_at = add_partitions(connection)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: "
                f"{redact_text(str(exc).strip().splitlines()[0], url)}. Check that the server "
                "is running and the URL (host, port, user, database) is right."
            ) from None
        # Stream id -> (its type, the version it reached, that event's chain hash and time).
        # Events are never deleted or changed, so an append expecting that version needs no
        # lookup (~30 us of server CPU) and can compute its chain hashes itself. This
        # holds unless the schema is dropped and recreated under a running store.
        self._reached: dict[str, tuple[str, int, bytes, datetime]] = {}
        # The latest time this recorder recorded: its appends never record an earlier one.
        self._latest = MIN_TIME
        self._latest_lock = threading.Lock()
        # The archive (docs/archive.md): the manifest as last read, and its files.
        self.artifacts_root: str | None = None
        self._archives = ArchiveFiles(lambda: self.artifacts)
        self._connections = Connections(
            url, kwargs, name=f"mlevents-{schema}", description=self.description,
            configure=configure,
            pool_size=pool_size, pool_timeout=pool_timeout, connect_timeout=connect_timeout,
        )

    def close(self) -> None:
        self._connections.close()

    @property
    def artifacts(self) -> ArtifactStore:
        """The artifact store holding the archive's files ($MLEVENTS_ARTIFACTS by default)."""
        from event_sourcing.artifacts import ArtifactStore

        return ArtifactStore(self.artifacts_root)

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
        created_at = max(created_at, self._latest)  # never before this recorder's latest
        expected, given_type = expected_version, stream_type  # as the caller gave them
        if expected_version:
            known = self._reached.get(stream_id)
            if known is not None and known[1] == expected_version:
                stream_type, head_chain = known[0], known[2]
                created_at = max(created_at, known[3])  # nor before the stream's head
        for attempt in itertools.count():
            statement, request = append_query(
                stream_id, stream_type, expected_version, rows, created_at, correlation_id,
                causation_id, head_chain=head_chain,
            )
            sent = time.monotonic()
            try:
                appended, last_chain = self._sent(statement, request, rows, expected_version)
                break
            except postgres_heads.ArchivedHead as archived:  # rare: append again giving the head
                stream_type, expected_version, head_chain, head_time = archived.head
                created_at = max(created_at, head_time)  # nor before the stream's head
            except (ConcurrencyError, postgres_heads.HeadMoved):
                if expected is not None:
                    raise
                # Expecting none: an archived head was passed meanwhile. Look again.
                stream_type, expected_version, head_chain = given_type, None, None
            except ClockBehind as behind:  # rare: record at the latest time instead
                # Again behind: writers with faster clocks keep recording later times, so
                # add the time that passed meanwhile, as their clocks did (no starving).
                waited = timedelta(seconds=time.monotonic() - sent) if attempt else timedelta(0)
                created_at = behind.latest if MAX_TIME - waited < behind.latest else (
                    behind.latest + waited
                )
        if self._extend_at is not None and appended.positions[-1] >= self._extend_at:
            self._add_partitions()
        if len(self._reached) >= _REACHED_STREAMS:
            self._reached.clear()
        self._reached[stream_id] = (
            appended.stream_type, appended.first_version + len(rows) - 1, last_chain,
            appended.created_at,
        )
        with self._latest_lock:
            self._latest = max(self._latest, appended.created_at)
        return appended

    def _sent(
        self,
        statement: str,
        request: dict[str, Any],
        rows: Sequence[EventRow],
        expected_version: int | None,
    ) -> tuple[Appended, bytes]:
        """The append statement run, sent again once if the connection broke."""
        what = f"append to {request['stream']!r}"
        cursor = self._append_cursor()
        try:
            return self._append_on(cursor, statement, request, rows, expected_version)
        except psycopg.Error as exc:
            if not broken(cursor.connection):
                raise self._connections.error(exc, what) from exc
            # The connection broke (a server restart, an idle timeout): the batch may or may
            # not have been committed. Sending it again is safe: its event ids make it
            # idempotent.
            try:
                return self._append_on(
                    self._append_cursor(), statement, request, rows, expected_version
                )
            except psycopg.Error as again:
                again_what = f"{what} (sent twice: the connection was lost)"
                raise self._connections.error(again, again_what) from exc

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
                    and exc.diag.constraint_name == STREAM_VERSION_KEY
                ):
                    continue  # an overlapping append took the version: read the head again
                claimed = []
            except pg_errors.CheckViolation as exc:
                # Past the last partition (none was added in time): add some, send again.
                if NO_PARTITION in str(exc) and self._add_partitions(len(rows)):
                    continue
                raise
            break
        if claimed:
            if len(claimed) > 1:
                claimed.sort(key=lambda row: row[1])  # by version
            kind, first_version, _, _ = claimed[0]
            positions = [row[2] for row in claimed]
            last_chain = claimed[-1][3]
            if last_chain is None:
                last_chain = request["last_chain"]
            return Appended(kind, first_version, positions, request["now"]), bytes(last_chain)
        # Nothing was written: a retry of a recorded batch, a stale expected version, a
        # head recorded later or archived (postgres_heads).
        connection = cursor.connection
        found = self._select_on(connection, BY_IDS, ([row.id for row in rows],))
        if found:
            raise AlreadyRecorded(found)
        raise postgres_heads.refusal(
            connection, self._archives, request["stream"], expected_version,
            request["located"], request["now"],
        )

    def import_rows(self, rows: Sequence[ImportRow], created_at: datetime) -> None:
        """Write a bulk-import batch (event_sourcing.stores.imports) in one transaction,
        with COPY (postgres_import), after making sure partitions lie ahead of every
        attempt of it (an attempt raced by an append burns its positions), and again if
        appenders took the positions meanwhile."""
        for attempt in range(1, 4):
            self._add_partitions(len(rows) * IMPORT_ATTEMPTS)
            try:
                heads = functools.partial(postgres_heads.archived_heads, self._archives)
                return import_rows(self._connections, self.append, rows, created_at, heads)
            except EventStoreError as exc:
                past = isinstance(exc.__cause__, pg_errors.CheckViolation) and (
                    NO_PARTITION in str(exc.__cause__)
                )
                if not past or attempt == 3:
                    raise

    def _add_partitions(self, needed: int = 0) -> bool:
        """Add partitions ahead (postgres_partitions), in a transaction of their own on
        this thread's append connection: whether it could (this role may, and no lock
        timed out)."""
        extend_at = add_partitions(self._append_cursor().connection, needed)
        if extend_at is not None:
            self._extend_at = extend_at
        return extend_at is not None

    @staticmethod
    def _version(connection: psycopg.Connection[Any], stream_id: str) -> int:
        row = connection.execute(
            "SELECT coalesce(max(version), 0) FROM event_keys WHERE stream_id = %s",
            (stream_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    # -- integrity (event_sourcing.integrity) ---------------------------------------------
    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        """Rows (position order, `through` at most the head) as hashed: position, id, stream,
        stream type, version, type, schema version, payload, metadata (canonical JSON), time
        (text), correlation, causation, content, chain, occurred_at (text or NULL)."""
        def read(connection: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            rows = connection.execute(
                f"SELECT {HASHED_V6} FROM event_store WHERE position > %s AND position <= %s "
                "ORDER BY position LIMIT %s",
                (after, through, limit),
            ).fetchall()
            # After the scan: a partition dropped before its snapshot is in the manifest.
            self._archives.load(connection)
            return rows

        hashed = [hashed_row(row) for row in self._connections.read("read hashed rows", read)]
        if self._archives.bound > after:
            # A partition archived after the scan is in both: its rows are equal.
            rows = {row[0]: row for row in hashed}
            rows.update((row[0], row) for row in self._archives.hashed(after, through, limit))
            hashed = [rows[p] for p in sorted(rows)][:limit]
        return hashed

    def archived_chain(self, stream_id: str, version: int) -> bytes | None:
        """The chain hash of a stream's archived event (integrity.audit), or None."""
        found = self.query(
            "SELECT position FROM event_keys WHERE stream_id = ? AND version = ?",
            (stream_id, version),
        )
        if not found:
            return None
        self._connections.read("read the archive manifest", self._archives.load)
        return self._archives.chain_at(int(found[0][0]))

    def restore_triggers(self) -> tuple[list[str], str | None]:
        """Recreate missing and re-enable disabled append-only triggers: (what was wrong,
        why it could not be fixed or None)."""
        return self._connections.read(
            "check the append-only triggers",
            lambda connection: restore_triggers(connection, self.schema),
        )

    # -- reading ------------------------------------------------------------------------
    def _select_on(
        self,
        connection: psycopg.Connection[Any],
        query: str,
        params: Sequence[Any],
        prepare: bool | None = None,
    ) -> list[RecordedEvent]:
        """The events of a query; through event_keys (KEYED), those archived are read
        from the archive's files."""
        rows = event_cursor(connection).execute(query, params, prepare=prepare).fetchall()
        archived = [row[14] for row in rows if row[0] is None]
        events = fetch_events(
            (lambda: [row for row in rows if row[0] is not None]) if archived else lambda: rows
        )
        if not archived:
            return events
        if not self._archives.covers(archived):
            self._archives.load(connection)
        return sorted(events + self._archives.at(archived), key=lambda e: e.position)

    def _select(self, what: str, query: str, params: Sequence[Any]) -> list[RecordedEvent]:
        return self._connections.read(
            what, lambda connection: self._select_on(connection, query, params)
        )

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]:
        return self._select(
            f"read_stream({stream_id!r})",
            f"{KEYED} WHERE k.stream_id = %s AND k.version >= %s AND k.version <= %s "
            "ORDER BY k.version",
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
        query, params = page_query(after, event_types, until, limit, undated_only)

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
            # Never prepared (a stream is not): a prepared page query may switch to a
            # generic plan after five runs, one that walks the position index filtering
            # every row (a reset cursor with a type filter); an unnamed statement is
            # planned for its own values.
            page, archived = stream_on(connection, query, params)
            settled = bisect.bisect_left(page, horizon, key=lambda event: event.position)
            page = page if settled == len(page) else page[:settled]
            if archived is None and after < horizon - 1:  # no row to say: ask
                found = connection.execute(f"SELECT {ARCHIVED}").fetchone()
                archived = (int(found[0]), int(found[1])) if found else None
            if not archived or archived[0] <= after + 1:
                return page
            # The files the scan's snapshot knew, at least (files are only ever added).
            if archived != (self._archives.bound, len(self._archives.files)):
                self._archives.load(connection)
            return self._archives.page(page, after, event_types, until, limit, undated_only)

        return self._connections.read(f"read_all(after={after})", read)

    def read_dated_page(
        self,
        after: tuple[datetime, int] | None,
        occurred_until: datetime,
        recorded_until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        # No read horizon: a snapshot of what is committed (not a cursor that must never
        # skip an event committed later).
        page = self._select("a bitemporal read", *dated_page_query(
            COLUMNS, "%s", lambda when: when, after, occurred_until, recorded_until, limit,
        ))
        archived = self._scan_archive(
            lambda e: e.occurred_at <= occurred_until
            and (recorded_until is None or e.created_at <= recorded_until)
            and (after is None or (e.occurred_at, e.position) > after),
            dated=True,
        )
        if not archived:
            return page
        return sorted(merge(page, archived), key=lambda e: (e.occurred_at, e.position))[:limit]

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        found = self._select(
            "read_correlated",
            f"SELECT {COLUMNS} FROM event_store WHERE correlation_id = %s ORDER BY position",
            (correlation_id,),
        )
        archived = self._scan_archive(lambda e: e.correlation_id == correlation_id)
        return merge(found, archived)

    def _scan_archive(
        self, keep: Callable[[RecordedEvent], bool], dated: bool | None = None
    ) -> list[RecordedEvent]:
        """Every archived event that `keep` (a read no index of the archive serves)."""
        self._connections.read("read the archive manifest", self._archives.load)
        return self._archives.scan(keep, dated)

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]:
        return self._select(
            "reading events by id",
            BY_IDS,
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
        def read(connection: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            # The files counted are those of the count's own snapshot.
            rows = connection.execute(
                "SELECT event_type, count(*) FROM event_store GROUP BY event_type "
                f"UNION ALL {archived_files(0, 2**62, 2)}"
            ).fetchall()
            self._archives.load(connection)
            return rows

        rows = self._connections.read("counts_by_type", read)
        counts = {name: int(count) for name, count in rows if name is not None}
        lowers = {int(lower) for name, lower in rows if name is None}
        if lowers:
            archived = self._archives.counts(0, 2**63 - 1, lowers, firsts=False)
            for name, (events, _) in archived.items():
                counts[name] = counts.get(name, 0) + events
        return dict(sorted(counts.items()))

    def archived_counts(
        self, after: int, through: int, lowers: Collection[int]
    ) -> dict[str, tuple[int, int]]:
        """Event type -> (events, events of version 1) of the archived positions in
        (after, through] of the files starting at `lowers` (projections.counts)."""
        if not self._archives.covers(lowers):
            self._connections.read("read the archive manifest", self._archives.load)
        return self._archives.counts(after + 1, through, lowers)

    def archived_containing(
        self, needles: Sequence[str]
    ) -> dict[str, list[tuple[int, str, str]]]:
        """For each needle, (position, id, type) of the archived events whose payload or
        metadata text holds it (privacy.forget: a scan of every file)."""
        if not needles:
            return {}
        self._connections.read("read the archive manifest", self._archives.load)
        return self._archives.containing(needles)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read of a table beside the log (`?` placeholders), on this
        thread's transaction's connection if it has one."""
        return self._connections.read(
            "a read beside the log",
            lambda connection: connection.execute(sql.replace("?", "%s"), params).fetchall(),
        )

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Transaction]:
        """A transaction on a connection checked alive first; reads of the store on this
        thread inside it use its connection. A driver error escaping it is raised as an
        EventStoreError (inside, `execute` raises the driver's own)."""
        with self._connections.transaction("store.transaction()") as connection:
            if read_only:
                connection.execute("SET TRANSACTION READ ONLY")
            yield Transaction(connection)
