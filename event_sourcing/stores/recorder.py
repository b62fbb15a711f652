"""The persistence contract every backend implements: rows in, RecordedEvents out.

Domain code never sees SQL; the EventStore talks only to this contract.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from event_sourcing.events import RecordedEvent


@dataclass(frozen=True, slots=True)
class EventRow:
    """One validated, encoded event, ready to be written."""

    id: str
    event_type: str
    schema_version: int
    payload_json: str
    metadata_json: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What a recorder did with a batch.

    `inserted` is False when some ids of the batch were already recorded: nothing was
    written and `events` holds the events already recorded under those ids.
    """

    events: list[RecordedEvent]
    inserted: bool


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
        correlation_id: str | None,
        causation_id: str | None,
    ) -> AppendOutcome: ...

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
