"""Business time: bitemporal reads of the log (docs/temporal.md).

An event has two times: `created_at`, when the store recorded it (record time, never
earlier than any time already recorded), and `occurred_at`, when the fact happened
(business time). `occurred_at` is stored only when it was given (a backfill, a late
report); NULL means "the same as created_at", so the common case costs nothing.

"As of T, known at K" is every event that occurred at or before T and was recorded at or
before K, in business-time order (occurred_at, then position). It is read as two sorted
streams, merged:

- the *undated* events (no occurred_at given): occurred_at = created_at, and created_at
  never goes backwards in position order, so they are a position-ordered read bounded by
  created_at <= min(T, K) (the same scan as `read_all(until=...)`);
- the *dated* events: a keyset read of the partial index on (occurred_at, position),
  which holds only the dated rows, so it costs what the backfills hold, not the log.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import chain
from typing import TYPE_CHECKING, Any

from event_sourcing.events import RecordedEvent
from event_sourcing.stores.recorder import iter_pages
from event_sourcing.stores.times import utc_time

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

UNDATED = " AND occurred_at IS NULL"  # the filter of undated events, on both backends
_PAGE = 2000


def dated_page_query(
    columns: str,
    mark: str,
    stamp: Callable[[datetime], Any],
    after: tuple[datetime, int] | None,
    occurred_until: datetime,
    recorded_until: datetime | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """The keyset query of one page of dated events in (occurred_at, position) order, for
    a backend with placeholder `mark` and times as `stamp` gives them. `occurred_at IS NOT
    NULL` is spelled out so that both planners pick the partial index; there is no type
    filter (the caller filters): SQLite would rather seek the type index and sort."""
    where = [f"occurred_at IS NOT NULL AND occurred_at <= {mark}"]
    params: list[Any] = [stamp(occurred_until)]
    if recorded_until is not None:
        where.append(f"created_at <= {mark}")
        params.append(stamp(recorded_until))
    if after is not None:
        where.append(f"(occurred_at, position) > ({mark}, {mark})")
        params += [stamp(after[0]), after[1]]
    params.append(limit)
    return (
        f"SELECT {columns} FROM event_store WHERE {' AND '.join(where)} "
        f"ORDER BY occurred_at, position LIMIT {mark}",
        params,
    )


def _business_order(event: RecordedEvent) -> tuple[datetime, int]:
    return event.occurred_at, event.position


def _dated_pages(
    store: EventStore,
    types: list[str] | None,
    occurred_until: datetime,
    recorded_until: datetime | None,
) -> Iterator[list[RecordedEvent]]:
    after: tuple[datetime, int] | None = None
    wanted = None if types is None else set(types)
    while True:
        page = store.recorder.read_dated_page(after, occurred_until, recorded_until, _PAGE)
        kept = page if wanted is None else [e for e in page if e.event_type in wanted]
        if kept:
            yield kept
        if len(page) < _PAGE:
            return
        after = _business_order(page[-1])


def iter_as_of(
    store: EventStore,
    at: datetime,
    known_at: datetime | None,
    types: list[str] | None,
) -> Iterator[RecordedEvent]:
    """The events of `types` (None: all) that occurred at or before `at` and were recorded
    at or before `known_at` (None: now), in (occurred_at, position) order, upcast."""
    at = utc_time(at, "as-of time")
    known = None if known_at is None else utc_time(known_at, "known_at")
    if types is not None and not types:
        return iter(())
    upcast = store._upcaster()
    recorded = at if known is None or at <= known else known
    undated = chain.from_iterable(map(upcast, iter_pages(
        store.recorder, 0, types, recorded, None, _PAGE, undated_only=True
    )))
    dated = chain.from_iterable(map(upcast, _dated_pages(store, types, at, known)))
    return heapq.merge(undated, dated, key=_business_order)
