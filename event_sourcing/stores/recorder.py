"""The persistence contract every backend implements: rows in, RecordedEvents out.

Domain code never sees SQL; the EventStore talks only to this contract.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from event_sourcing.events import RecordedEvent


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


class Appended(NamedTuple):
    """Where a batch landed: its stream's type, the first version (versions of a batch are
    contiguous) and each event's position (increasing, not always contiguous)."""

    stream_type: str
    first_version: int
    positions: Sequence[int]


class AlreadyRecorded(Exception):
    """Some ids of the batch were recorded before; nothing was written.

    Raised by recorders with the events recorded under those ids; the store decides
    whether the batch is an idempotent retry or a conflicting reuse of ids.
    """

    def __init__(self, events: list[RecordedEvent]) -> None:
        super().__init__(f"{len(events)} event(s) of this batch are already recorded")
        self.events = events


class SqlTransaction(Protocol):
    """One database transaction for read models: `?` placeholders on every backend."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...


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

    def read_stream(
        self, stream_id: str, from_version: int, to_version: int | None
    ) -> list[RecordedEvent]: ...

    def read_page(
        self,
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]: ...

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]: ...

    def read_ids(self, ids: Sequence[str]) -> list[RecordedEvent]: ...

    def stream_version(self, stream_id: str) -> int: ...

    def head_position(self) -> int: ...

    def counts_by_type(self) -> dict[str, int]: ...

    def transaction(self) -> AbstractContextManager[SqlTransaction]: ...

    # Tamper evidence (event_sourcing.integrity; docs/integrity.md).
    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]: ...

    def restore_triggers(self) -> tuple[list[str], str | None]: ...

    def close(self) -> None: ...


def iter_pages(
    recorder: Recorder,
    after: int,
    event_types: Collection[str] | None,
    until: datetime | None,
    limit: int | None,
    page_size: int,
) -> Iterator[list[RecordedEvent]]:
    """Keyset pagination over the global log: each page is one short query."""
    remaining = limit
    while remaining is None or remaining > 0:
        size = page_size if remaining is None else min(page_size, remaining)
        page = recorder.read_page(after, event_types, until, size)
        if not page:
            return
        yield page
        after = page[-1].position
        if remaining is not None:
            remaining -= len(page)
        if len(page) < size:
            return


def redact_url(url: str) -> str:
    """The URL with its password, if any, replaced by *** (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@")))
