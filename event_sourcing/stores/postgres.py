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

This module owns the recorder's set-up and its reads: of streams and pages of the global
log (merged with the archive's files), of the rows the integrity checks hash, of counts,
and the transactions handed to read models. Its writes are in postgres_write (running
an append and sending it again, imports, partitions ahead), the append statement in
postgres_append (why one wrote nothing, and a head read from the archive, in
postgres_heads), the bulk import's COPY in postgres_import. The schema and its migrations
are in postgres_schema, the page queries and decoding of reads in postgres_read, archiving
in postgres_archive and the reads of its files in postgres_archive_files.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from event_sourcing.errors import ConfigurationError, EventStoreError, StoreUnavailableError
from event_sourcing.events import RecordedEvent
from event_sourcing.stores.business_time import dated_page_query
from event_sourcing.stores.postgres_archive_files import ArchiveFiles, archived_files, merge
from event_sourcing.stores.postgres_errors import store_error
from event_sourcing.stores.postgres_heads import ClockBehind as ClockBehind  # (re-exported)
from event_sourcing.stores.postgres_partitions import DEFAULT_SIZE, add_partitions
from event_sourcing.stores.postgres_pool import Connections, session_options
from event_sourcing.stores.postgres_read import (
    ARCHIVED,
    BY_IDS,
    COLUMNS,
    KEYED,
    Transaction,
    configure,
    page_query,
    select_on,
    stream_on,
)
from event_sourcing.stores.postgres_schema import (
    HASHED_V6,
    create_schema,
    hashed_row,
    restore_triggers,
)
from event_sourcing.stores.postgres_write import PostgresWrites
from event_sourcing.stores.recorder import redact_text, redact_url
from event_sourcing.stores.times import MIN_TIME

if TYPE_CHECKING:
    from event_sourcing.artifacts import ArtifactStore


class PostgresRecorder(PostgresWrites):
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
            connection = psycopg.connect(
                url, connect_timeout=max(1, int(connect_timeout)), **kwargs
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: "
                f"{redact_text(str(exc).strip().splitlines()[0], url)}. Check that the server "
                "is running and the URL (host, port, user, database) is right."
            ) from None
        with connection:
            try:
                create_schema(connection, schema, self.description, create, partition_size)
                # Partitions ahead (postgres_write).
                self._extend_at = add_partitions(connection)
            except psycopg.Error as exc:  # connected: say what failed (e.g. a timeout)
                raise store_error(exc, "opening the store", self.description) from exc
        # What its appends remember (postgres_write).
        self._reached = {}
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
    def _select(self, what: str, query: str, params: Sequence[Any]) -> list[RecordedEvent]:
        return self._connections.read(
            what, lambda connection: select_on(connection, self._archives, query, params)
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
        self._load_manifest()
        archived = self._archives.dated(after, occurred_until, recorded_until, limit)
        if not archived:
            return page
        return sorted(merge(page, archived), key=lambda e: (e.occurred_at, e.position))[:limit]

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        found = self._select(
            "read_correlated",
            f"SELECT {COLUMNS} FROM event_store WHERE correlation_id = %s ORDER BY position",
            (correlation_id,),
        )
        self._load_manifest()
        return merge(found, self._archives.correlated(correlation_id))

    def _load_manifest(self) -> None:
        """The archive's manifest read again (for a read no position range serves: the
        files of every archive run so far)."""
        self._connections.read("read the archive manifest", self._archives.load)

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
