"""The writing half of the PostgreSQL recorder: running an append and sending it again
when it wrote nothing, a bulk import, and the partitions added ahead of both.

An append is one statement (postgres_append). It is sent on this thread's own append
connection, once more if that connection broke, and again when it wrote nothing for a
reason that a later attempt overcomes: an overlapping append to its stream took the
version it was to write (no version expected), its positions were past the last
partition, its stream's head is archived or moved on (postgres_heads), or that head was
recorded at a later time than its own. Each of these is sent again a bounded number of
times: an append that keeps losing raises StoreTimeoutError, having written nothing. The
recorder remembers the heads it appended (so that an append expecting one needs no
lookup) and the latest time it recorded. PostgresRecorder (postgres) sets up the state
declared here.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from event_sourcing.errors import ConcurrencyError, EventStoreError, StoreTimeoutError
from event_sourcing.stores import postgres_heads
from event_sourcing.stores.imports import ImportRow
from event_sourcing.stores.postgres_append import append_query
from event_sourcing.stores.postgres_archive_files import ArchiveFiles
from event_sourcing.stores.postgres_errors import broken
from event_sourcing.stores.postgres_heads import ClockBehind
from event_sourcing.stores.postgres_import import ATTEMPTS as IMPORT_ATTEMPTS
from event_sourcing.stores.postgres_import import import_rows
from event_sourcing.stores.postgres_partitions import NO_PARTITION, add_partitions
from event_sourcing.stores.postgres_pool import Connections
from event_sourcing.stores.postgres_read import BY_IDS, select_on
from event_sourcing.stores.postgres_schema import STREAM_VERSION_KEY
from event_sourcing.stores.recorder import AlreadyRecorded, Appended, EventRow
from event_sourcing.stores.times import MAX_TIME

_REACHED_STREAMS = 10_000  # streams whose reached version a recorder remembers
# How many times an append is sent before it gives up (StoreTimeoutError), having written
# nothing each time: because its stream's head was archived, moved on or recorded later
# (each rare, and overcome at the next attempt unless other writers keep racing it)...
APPEND_ATTEMPTS = 100
# ... or because an overlapping append took the version it was to write (expecting no
# version: it reads the head again; a hot stream's writers may take turns at losing), or
# its positions were past the last partition although partitions were added.
STATEMENT_ATTEMPTS = 1_000


def _gave_up(stream_id: str, attempts: int, why: str) -> StoreTimeoutError:
    return StoreTimeoutError(
        f"append to {stream_id!r} gave up after {attempts:,} attempts, each of which wrote "
        f"nothing (the last because {why}): nothing was written, so retrying it is safe."
    )


class PostgresWrites:
    """Appends and imports of a PostgresRecorder, which sets up these attributes."""

    _connections: Connections
    _archives: ArchiveFiles
    # Partitions ahead (postgres_partitions): an append that lands at or past this
    # position adds more (None: this role may not add them).
    _extend_at: int | None
    # Stream id -> (its type, the version it reached, that event's chain hash and time).
    # Events are never deleted or changed, so an append expecting that version needs no
    # lookup (~30 us of server CPU) and can compute its chain hashes itself. This
    # holds unless the schema is dropped and recreated under a running store.
    _reached: dict[str, tuple[str, int, bytes, datetime]]
    # The latest time this recorder recorded: its appends never record an earlier one.
    _latest: datetime
    _latest_lock: threading.Lock

    def _append_cursor(self) -> psycopg.Cursor[Any]:
        return self._connections.append_cursor()

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
        for attempt in range(APPEND_ATTEMPTS):
            statement, request = append_query(
                stream_id, stream_type, expected_version, rows, created_at, correlation_id,
                causation_id, head_chain=head_chain,
            )
            sent = time.monotonic()
            try:
                appended, last_chain = self._sent(statement, request, rows, expected_version)
                break
            except postgres_heads.ArchivedHead as archived:  # rare: append again giving the head
                why = "its stream's head was archived"
                stream_type, expected_version, head_chain, head_time = archived.head
                created_at = max(created_at, head_time)  # nor before the stream's head
            except (ConcurrencyError, postgres_heads.HeadMoved):
                if expected is not None:
                    raise
                # Expecting none: an archived head was passed meanwhile. Look again.
                why = "its stream's head moved on between being looked up and appended to"
                stream_type, expected_version, head_chain = given_type, None, None
            except ClockBehind as behind:  # rare: record at the latest time instead
                why = "its stream's head was recorded at a later time than its own"
                # Again behind: writers with faster clocks keep recording later times, so
                # add the time that passed meanwhile, as their clocks did (no starving).
                waited = timedelta(seconds=time.monotonic() - sent) if attempt else timedelta(0)
                created_at = behind.latest if MAX_TIME - waited < behind.latest else (
                    behind.latest + waited
                )
        else:
            raise _gave_up(stream_id, APPEND_ATTEMPTS, why)
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
        for _ in range(STATEMENT_ATTEMPTS):
            try:
                claimed = cursor.execute(statement, request).fetchall()
            except pg_errors.UniqueViolation as exc:
                if (
                    expected_version is None
                    and exc.diag.constraint_name == STREAM_VERSION_KEY
                ):
                    # An overlapping append took the version: read the head again.
                    why = "another append to the stream took the version it was to write"
                    continue
                claimed = []
            except pg_errors.CheckViolation as exc:
                # Past the last partition (none was added in time): add some, send again.
                if NO_PARTITION in str(exc) and self._add_partitions(len(rows)):
                    why = "its positions were past the last partition"
                    continue
                raise
            break
        else:
            raise _gave_up(request["stream"], STATEMENT_ATTEMPTS, why)
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
        found = select_on(connection, self._archives, BY_IDS, ([row.id for row in rows],))
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
