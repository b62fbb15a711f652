"""Catching up with the log: one page of events after a cursor, and where the next read starts.

The one "read the head first, jump the cursor" primitive; the runner, sensors and relay use it.
"""

from collections.abc import Collection
from dataclasses import dataclass

from event_sourcing.errors import ConfigurationError
from event_sourcing.events import RecordedEvent
from event_sourcing.stores.store import EventStore

__all__ = ["Page", "read_page"]


@dataclass(frozen=True)
class Page:
    """Events after a cursor (at most a page of them) and the cursor after them."""

    events: list[RecordedEvent]
    cursor: int
    """Where the next read starts: the last event's position after a full page, else the head
    (every position up to it was read or is of no interest)."""
    head: int
    full: bool
    """True when the page was full: more may wait before the head."""


def read_page(
    store: EventStore,
    after: int,
    event_types: Collection[str] | None = None,
    limit: int = 1000,
    *,
    scan: bool = False,
) -> Page:
    """At most `limit` events after position `after` (of `event_types`, if given).

    The head position is read first: every position up to it is visible (the store makes
    positions visible in order), so when the filtered read comes back short the cursor can
    jump to the head, and the next read starts after events it has no interest in. Nothing is
    read when `after` is at the head already.

    `scan` reads the next `limit` positions whatever their type and keeps those of
    `event_types`: for a reader most of whose events are of interest, a range read of the
    log costs what the filtered one does, and needs no seek per type (whose plan, on
    PostgreSQL, sorts a type's whole tail for every page while the table has no statistics).
    """
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit}")
    head = store.head_position()
    if after >= head:
        return Page([], after, head, False)
    types = None if event_types is None else list(event_types)
    found = list(
        store.read_all(after=max(after, 0), event_types=None if scan else types, limit=limit)
    )
    kept = [event for event in found if event.position <= head]
    full = len(found) == limit and len(kept) == len(found)
    cursor = kept[-1].position if full else max(after, head)
    if scan and types is not None:
        wanted = set(types)
        kept = [event for event in kept if event.event_type in wanted]
    return Page(kept, cursor, head, full)
