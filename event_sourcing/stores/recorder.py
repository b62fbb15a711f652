"""The persistence contract every backend implements: rows in, RecordedEvents out.

Domain code never sees SQL; the EventStore talks only to this contract.
"""

from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import unquote

from event_sourcing.events import RecordedEvent
from event_sourcing.stores.values import decode_all, decode_repeated

if TYPE_CHECKING:
    from event_sourcing.stores.imports import ImportRow

_log = logging.getLogger("event_sourcing.stores")

# A read_all type filter of more types than this is one IN (...) scan of the page instead
# of an ordered index seek per type, merged (SQLite allows 500 terms in a compound SELECT).
MAX_SEEK_BRANCHES = 64


class EventRow(NamedTuple):
    """One validated, encoded event, ready to be written (a tuple: built once per event)."""

    id: str
    event_type: str
    schema_version: int
    payload_json: str
    metadata_json: str
    payload: Any = None
    """The decoded payload_json, when the writer has it (saves PostgreSQL a decode when it
    hashes the canonical JSON of the stored value; docs/integrity.md)."""
    canonical: bool = False
    """payload_json and metadata_json are the canonical JSON of their values (the form
    PostgreSQL's content hash covers, docs/integrity.md): hashed as they are."""
    occurred_at: str | None = None
    """When the fact happened, if given, as hashed (integrity.hashing's timestamp_text);
    None is stored as NULL: the same as created_at."""


class Appended(NamedTuple):
    """Where a batch landed: its stream's type, the first version (versions of a batch are
    contiguous), each event's position (increasing, not always contiguous) and the time
    recorded (the clock's, or later: a recorder never records a time before the latest
    already recorded; docs/temporal.md)."""

    stream_type: str
    first_version: int
    positions: Sequence[int]
    created_at: datetime


class AlreadyRecorded(Exception):
    """Some ids of the batch were recorded before; nothing was written.

    Raised by recorders with the events recorded under those ids; the store decides
    whether the batch is an idempotent retry or a conflicting reuse of ids.
    """

    def __init__(self, events: list[RecordedEvent]) -> None:
        super().__init__(f"{len(events)} event(s) of this batch are already recorded")
        self.events = events


class SqlTransaction(Protocol):
    """One database transaction for read models: `?` placeholders on every backend, and the
    few things that differ between backends as methods, so callers never branch on them."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...

    def table_exists(self, table: str) -> bool:
        """Whether `table` exists where unqualified names resolve."""
        ...

    def lock(self, key: int) -> None:
        """Hold the lock named `key` until the transaction ends (serializes DDL and the
        like between processes; a no-op where writers are serialized already)."""
        ...


class Recorder(Protocol):
    """A backend: SQLite or PostgreSQL. One test suite runs against every implementation."""

    dialect: str
    description: str

    def append(
        self,
        stream_id: str,
        stream_type: str | None,
        expected_version: int | None,
        rows: Sequence[EventRow],
        created_at: datetime,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Appended: ...

    def import_rows(self, rows: Sequence[ImportRow], created_at: datetime) -> None:
        """Write a bulk-import batch in one transaction (event_sourcing.stores.imports)."""
        ...

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]: ...

    def read_page(
        self,
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
        undated_only: bool = False,
    ) -> list[RecordedEvent]:
        """A page in position order; `until` bounds created_at; `undated_only` keeps the
        events recorded without an occurred_at."""
        ...

    def read_dated_page(
        self,
        after: tuple[datetime, int] | None,
        occurred_until: datetime,
        recorded_until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        """A page of the events recorded with an occurred_at (of every type), in
        (occurred_at, position) order after `after`: occurred at or before
        `occurred_until`, recorded at or before `recorded_until` (docs/temporal.md)."""
        ...

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]: ...

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]: ...

    def stream_version(self, stream_id: str) -> int: ...

    def head_position(self) -> int: ...

    def counts_by_type(self) -> dict[str, int]: ...

    def transaction(self, read_only: bool = False) -> AbstractContextManager[SqlTransaction]:
        """A transaction for read models; `read_only` ones never block appends."""
        ...

    # Tamper evidence (event_sourcing.integrity; docs/integrity.md).
    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]: ...

    def restore_triggers(self) -> tuple[list[str], str | None]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One read of a table beside the log (`?` placeholders), inside this thread's
        open transaction if any."""
        ...

    # The archive (PostgreSQL; docs/archive.md). A store without one has nothing archived.
    def archived_chain(self, stream_id: str, version: int) -> bytes | None:
        """The chain hash of a stream's archived event (integrity.audit), or None."""
        ...

    def archived_counts(
        self, after: int, through: int, lowers: Collection[int]
    ) -> dict[str, tuple[int, int]]:
        """Event type -> (events, events of version 1) of the archived positions in
        (after, through] of the files starting at `lowers` (projections.counts)."""
        ...

    def archived_containing(
        self, needles: Sequence[str]
    ) -> dict[str, list[tuple[int, str, str]]]:
        """For each needle, (position, id, type) of the archived events whose payload or
        metadata text holds it (privacy.forget)."""
        ...

    def close(self) -> None: ...


class PageColumns(NamedTuple):
    """The columns of a page of rows a backend stores in its own form, decoded: ids as
    text, stream and event types as text, metadata as UTF-8 JSON text, created_at and
    occurred_at as datetimes."""

    ids: list[str]
    stream_types: list[str]
    event_types: list[str]
    metadata: list[bytes]
    times: list[datetime]
    occurred: list[datetime]


def fetch_events(
    fetch: Callable[[], Sequence[Sequence[Any]]],
    decode_columns: Callable[[Sequence[Sequence[Any]]], PageColumns] | None = None,
) -> list[RecordedEvent]:
    """The events of the rows `fetch` returns: RecordedEvent's 14 fields, payload and
    metadata as JSON text, the id as text, created_at and occurred_at as datetimes, a NULL
    occurred_at meaning the event's created_at (or, where the backend stores them
    otherwise, as `decode_columns` decodes a page's ids, types, metadata and times).

    A page is decoded a column at a time, with no Python call per row, and with the cyclic
    garbage collector paused: it allocates thousands of containers, none in a cycle, and the
    collections they would trigger (a quarter of the time of a read) could free nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        rows = fetch()
        payloads = decode_all([row[7] for row in rows])
        new = tuple.__new__
        events: list[RecordedEvent]
        if decode_columns is None:
            metadatas = decode_repeated([row[8] for row in rows])
            events = [
                new(RecordedEvent, (
                    row[0], row[1], row[2], row[3], row[4], row[5], row[6], payload, metadata,
                    row[9], row[10], row[11], row[12], row[9] if row[13] is None else row[13],
                ))
                for row, payload, metadata in zip(rows, payloads, metadatas, strict=True)
            ]
        else:
            columns = decode_columns(rows)
            metadatas = decode_repeated(columns.metadata)
            events = [
                new(RecordedEvent, (
                    event_id, row[1], stream_type, row[3], row[4], event_type, row[6],
                    payload, metadata, created_at, row[10], row[11], row[12], occurred_at,
                ))
                for (
                    row, event_id, stream_type, event_type, created_at, occurred_at, payload,
                    metadata,
                ) in zip(
                    rows, columns.ids, columns.stream_types, columns.event_types, columns.times,
                    columns.occurred, payloads, metadatas, strict=True,
                )
            ]
        return events
    finally:
        if enabled:
            gc.enable()


def iter_pages(
    recorder: Recorder,
    after: int,
    event_types: Collection[str] | None,
    until: datetime | None,
    limit: int | None,
    page_size: int,
    undated_only: bool = False,
) -> Iterator[list[RecordedEvent]]:
    """Keyset pagination over the global log: each page is one short query."""
    remaining = limit
    while remaining is None or remaining > 0:
        size = page_size if remaining is None else min(page_size, remaining)
        page = (
            recorder.read_page(after, event_types, until, size, undated_only=True)
            if undated_only else recorder.read_page(after, event_types, until, size)
        )
        if not page:
            return
        yield page
        after = page[-1].position
        if remaining is not None:
            remaining -= len(page)
        if len(page) < size:
            return


# Connection parameters whose values are secrets (libpq: password, sslpassword).
_SECRET_KEYS = frozenset({"password", "sslpassword"})
# `key=value` in a URL query (`&`-separated) or a libpq DSN (space-separated, maybe quoted).
_PARAMETER = re.compile(r"([^\s&?=]+)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")


def _authority(url: str) -> tuple[str, str, str] | None:
    """(before, userinfo, after) of a URL with a user:password userinfo, else None.

    As libpq does: the userinfo ends at the first `@` before the first `/` of the authority.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    authority = rest.partition("/")[0]
    userinfo, at, _ = authority.partition("@")
    if not at or ":" not in userinfo:
        return None
    return scheme + separator, userinfo, rest[len(userinfo):]


def _secret_values(url: str) -> set[str]:
    values = set()
    found = _authority(url)
    if found:
        values.add(found[1].partition(":")[2])
    for match in _PARAMETER.finditer(url):
        if unquote(match[1]).lower() in _SECRET_KEYS:
            values.add(match[3])
    values |= {unquote(value) for value in values} | {value.strip("'") for value in values}
    return {value for value in values if value}


def redact_url(url: str) -> str:
    """`url` (or a libpq `key=value` string) with every credential replaced by *** : the
    password of its userinfo and `password=` / `sslpassword=` parameters, however spelled.

    The one place secrets are taken out of store URLs before they reach messages and logs.
    """
    text = _PARAMETER.sub(
        lambda m: f"{m[1]}{m[2]}***" if unquote(m[1]).lower() in _SECRET_KEYS else m[0], url
    )
    found = _authority(text)
    if found:
        before, userinfo, after = found
        text = f"{before}{userinfo.partition(':')[0]}:***{after}"
    return text


def redact_text(text: str, url: str) -> str:
    """`text` (e.g. a driver's error message about `url`) without `url`'s secrets."""
    text = text.replace(url, redact_url(url))
    for secret in sorted(_secret_values(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@contextmanager
def migrating(description: str, found: int, latest: int, head: int) -> Iterator[None]:
    """Say (a warning: seen with no logging set up) that the store at `description` is
    being migrated from schema v`found` to v`latest` with events up to position `head`, and
    when that is done: a migration may rewrite every event while other connections wait."""
    _log.warning(
        "migrating the event store %s from schema v%d to v%d (events up to position %s); "
        "other connections wait until it is done",
        description, found, latest, f"{head:,}",
    )
    started = time.monotonic()
    yield
    _log.warning(
        "migrated the event store %s to schema v%d in %.1f s",
        description, latest, time.monotonic() - started,
    )
