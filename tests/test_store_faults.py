"""Faults the store must absorb: dropped connections, timeouts, stuck appends, threads that
come and go, clocks outside the calendar. Each failure a user sees is an EventStoreError."""

from __future__ import annotations

import gc
import os
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

import event_sourcing as es


def ev(**payload: Any) -> es.NewEvent:
    return es.NewEvent("t", payload)


def _admin_url(url: str) -> str:
    return url.partition("?")[0]


@pytest.fixture
def named_url(store_url: str) -> str:
    """`store_url`; on PostgreSQL with an application_name of its own, so a test can find
    (and terminate) exactly this store's backends and no other session."""
    if store_url.startswith("sqlite"):
        return store_url
    return f"{store_url}&application_name=mlevents-faults-{uuid.uuid4().hex[:12]}"


def _app_name(url: str) -> str:
    return url.rpartition("application_name=")[2]


def _backends(url: str) -> list[int]:
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (_app_name(url),)
        ).fetchall()
    return [pid for (pid,) in rows]


def _terminate_store_backends(url: str) -> int:
    """Terminate every backend of this store (found by its application_name); returns how
    many there were."""
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (_app_name(url),),
        ).fetchall()
    return len(rows)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- item 9: a thread's connection is closed when the thread ends ---------------------------
def test_short_lived_appending_threads_leak_no_connections(named_url: str) -> None:
    store = es.connect(named_url, validate=False)
    store.append("warm-up", [ev()])

    def append_once(n: int) -> None:
        store.append(f"s-{n}", [ev(n=n)])

    def run_threads(count: int) -> None:
        for n in range(count):
            thread = threading.Thread(target=append_once, args=(n,))
            thread.start()
            thread.join()
        gc.collect()

    run_threads(20)
    fds_before = _open_fds()
    pg_before = len(_backends(named_url)) if store.dialect == "postgresql" else 0
    run_threads(200)
    # Bounded, not growing with the number of threads (2 descriptors a thread leaked).
    assert _open_fds() - fds_before < 10
    if store.dialect == "postgresql":
        assert len(_backends(named_url)) - pg_before < 3
    assert store.head_position() >= 221
    store.close()


# -- item 10: every time the store accepts reads back and compares correctly --------------
ACCEPTED_TIMES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(999, 5, 5, 1, 2, 3, 4, tzinfo=UTC),
    datetime(1000, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # 999-12-31T19:00Z
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 12, 1, tzinfo=timezone(timedelta(hours=-8))),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]
REFUSED_TIMES = [
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # year 0 in UTC
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # year 10000 in UTC
    datetime(2026, 1, 1),  # naive
    datetime.max,
    "2026-01-01T00:00:00+00:00",
    date(2026, 1, 1),
    1764547200,
]


def test_times_across_the_calendar_read_back_and_compare_in_order(
    make_store: Callable[..., es.EventStore],
) -> None:
    times = iter(ACCEPTED_TIMES)
    store = make_store(validate=False, clock=lambda: next(times))
    for n in range(len(ACCEPTED_TIMES)):
        store.append(f"s{n}", [ev(n=n)])
    events = list(store.read_all())
    expected = [t.astimezone(UTC) for t in ACCEPTED_TIMES]
    assert [e.created_at for e in events] == expected
    assert all(e.created_at.tzinfo is not None for e in events)
    assert [e.created_at for e in store.read_stream("s1")] == [expected[1]]
    for until in [*ACCEPTED_TIMES, datetime(500, 1, 1, tzinfo=UTC)]:
        got = [e.payload["n"] for e in store.read_all(until=until)]
        assert got == [n for n, t in enumerate(expected) if t <= until], until


@pytest.mark.parametrize("bad", REFUSED_TIMES, ids=repr)
def test_times_the_store_cannot_hold_are_refused_before_any_io(
    make_store: Callable[..., es.EventStore], bad: Any
) -> None:
    store = make_store(validate=False, clock=lambda: bad)
    with pytest.raises(es.EventValidationError, match="clock"):
        store.append("s", [ev()])
    with pytest.raises(es.EventValidationError, match="until"):
        list(store.read_all(until=bad))
    assert store.head_position() == 0
    assert store.stream_version("s") == 0
