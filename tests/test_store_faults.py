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
from event_sourcing.events import new_event_id
from event_sourcing.projections import Projection, ProjectionRunner
from event_sourcing.stores import postgres_write
from event_sourcing.stores.postgres_append import append_query
from event_sourcing.stores.postgres_schema import SCHEMA_LOCK
from event_sourcing.stores.recorder import EventRow


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
    return url.rpartition("application_name=")[2].partition("&")[0]


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


@pytest.fixture
def pg_url(pg_schema_url: str) -> str:
    """A PostgreSQL store URL with a schema and an application_name of its own."""
    return f"{pg_schema_url}&application_name=mlevents-faults-{uuid.uuid4().hex[:12]}"


def _raw(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection of the test's own (not the store's) with the store's schema in reach."""
    schema = url.partition("schema=")[2].partition("&")[0]
    return psycopg.connect(_admin_url(url), options=f"-c search_path={schema}", **kwargs)


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


# -- item 5: PostgreSQL faults are absorbed or raised as EventStoreErrors ------------------
READS: list[tuple[str, Callable[[es.EventStore], Any]]] = [
    ("read_stream", lambda store: store.read_stream("s")),
    ("read_all", lambda store: list(store.read_all())),
    ("read_all_until", lambda store: list(store.read_all(until=datetime.now(UTC)))),
    ("read_correlated", lambda store: store.read_correlated("c")),
    ("get_event", lambda store: store.get_event(str(uuid.UUID(int=1)))),
    ("stream_version", lambda store: store.stream_version("s")),
    ("head_position", lambda store: store.head_position()),
    ("counts_by_type", lambda store: store.counts_by_type()),
]


def test_every_read_recovers_after_the_stores_backends_are_terminated(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False, pool_size=3)
    recorded = store.append("s", [ev(n=1), ev(n=2)], correlation_id="c")
    expected = {name: read(store) for name, read in READS}
    for name, read in READS:
        assert _terminate_store_backends(pg_url) >= 1
        assert read(store) == expected[name], name
    assert _terminate_store_backends(pg_url) >= 1
    with store.transaction() as tx:  # a lost pooled connection is replaced before work
        assert tx.execute("SELECT count(*) FROM event_store").fetchone()[0] == 2
    assert _terminate_store_backends(pg_url) >= 1
    assert store.append("s", [ev(n=3)], expected_version=2)[0].version == 3
    assert [e.id for e in store.read_all()][:2] == [e.id for e in recorded]
    store.close()


def test_a_running_read_all_resumes_after_its_connection_is_terminated(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False)
    written = store.append("s", [ev(n=n) for n in range(2500)])  # two pages
    iterator = store.read_all()
    seen = [next(iterator) for _ in range(10)]
    assert _terminate_store_backends(pg_url) >= 1
    seen.extend(iterator)
    assert [e.id for e in seen] == [e.id for e in written]
    store.close()


def test_a_transaction_whose_connection_is_lost_raises_a_store_error(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False)
    with pytest.raises(es.StoreUnavailableError, match="terminat"), store.transaction() as tx:
        tx.execute("SELECT 1")
        _terminate_store_backends(pg_url)
        tx.execute("SELECT 1")
    with store.transaction() as tx:
        assert tx.execute("SELECT 2").fetchone() == (2,)
    store.close()


def test_an_error_escaping_a_transaction_is_a_store_error(store_url: str) -> None:
    store = es.connect(store_url, validate=False)
    store.append("s", [ev()])
    with pytest.raises(es.AccessDeniedError, match="append-only"), store.transaction() as tx:
        tx.execute("UPDATE event_store SET event_type = 'rewritten'")
    missing = pytest.raises(es.StoreUnavailableError, match="event_store_gone")
    with missing, store.transaction() as tx:
        tx.execute("SELECT * FROM event_store_gone")
    assert [e.event_type for e in store.read_all()] == ["t"]
    store.close()


def _locked_out(url: str) -> psycopg.Connection[Any]:
    """A connection of the test's own holding an exclusive lock on event_store; the
    server ends it after 20 s whatever happens, so a test cannot hang on it."""
    locker = _raw(url)
    locker.execute("SET idle_in_transaction_session_timeout = '20s'")
    locker.execute("LOCK TABLE event_store IN ACCESS EXCLUSIVE MODE")
    return locker


@pytest.mark.parametrize(
    ("setting", "message"),
    [("statement_timeout%3D300", "statement_timeout"), ("lock_timeout%3D300", "lock_timeout")],
)
def test_the_urls_timeouts_are_merged_and_give_a_clear_error(
    pg_url: str, setting: str, message: str
) -> None:
    url = f"{pg_url}&options=-c%20{setting}%20-c%20search_path%3Dpublic"
    es.connect(pg_url, validate=False).close()  # (created without the short timeout)
    store = es.connect(url, validate=False)
    store.append("s", [ev()])
    name = setting.partition("%3D")[0]
    with store.transaction() as tx:
        assert tx.execute(f"SHOW {name}").fetchone() == ("300ms",)
        # the store's own settings still win: its schema, UTC
        assert tx.execute("SELECT to_regclass('event_store') IS NOT NULL").fetchone() == (True,)
        assert tx.execute("SHOW timezone").fetchone() == ("UTC",)
    locker = _locked_out(url)
    try:
        for call in (
            lambda: list(store.read_all()),
            lambda: store.head_position(),
            lambda: store.append("s", [ev()]),
        ):
            with pytest.raises(es.StoreTimeoutError, match=message):
                call()
    finally:
        locker.close()
    assert store.stream_version("s") == 1  # the timed-out append wrote nothing
    assert store.append("s", [ev()], expected_version=1)[0].version == 2
    store.close()


@pytest.mark.parametrize(
    ("setting", "message"),
    [("statement_timeout%3D300", "statement_timeout"), ("lock_timeout%3D300", "lock_timeout")],
)
def test_opening_a_store_past_the_urls_timeout_says_so(
    pg_url: str, setting: str, message: str
) -> None:
    """A store being created while another connect holds the schema lock: the URL's
    timeout ends the wait with StoreTimeoutError naming it, not "cannot connect"."""
    holder = _raw(pg_url)
    holder.execute("SET idle_in_transaction_session_timeout = '20s'")
    holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
    try:
        with pytest.raises(es.StoreTimeoutError, match=message):
            es.connect(f"{pg_url}&options=-c%20{setting}", validate=False)
    finally:
        holder.close()
    store = es.connect(f"{pg_url}&options=-c%20{setting}", validate=False)  # lock free
    assert store.append("s", [ev()])[0].version == 1
    store.close()


def test_append_connections_wait_for_locks_at_most_a_bound(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False)
    assert store.recorder._append_cursor().execute("SHOW lock_timeout").fetchone() == ("10s",)
    store.close()
    mine = es.connect(f"{pg_url}&options=-c%20lock_timeout%3D1500", validate=False)
    assert mine.recorder._append_cursor().execute("SHOW lock_timeout").fetchone() == ("1500ms",)
    mine.close()


def _wait_until_waiting_on_a_lock(url: str) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        while datetime.now(UTC) < deadline:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'",
                (_app_name(url),),
            ).fetchone()
            if row and row[0]:
                return
            threading.Event().wait(0.05)
    raise AssertionError("the append never waited on a lock")


def test_an_append_stuck_on_a_lock_holds_readers_back_only_for_a_bound(pg_url: str) -> None:
    """An append blocked on a row lock after taking its in-flight marker would hold back
    every reader for as long as the lock is held; lock_timeout bounds it."""
    url = f"{pg_url}&options=-c%20lock_timeout%3D2000"
    store = es.connect(url, validate=False)
    cursor = store.append("before", [ev()])[0].position
    blocker = _raw(url)  # not autocommit: its transaction stays open
    blocker.execute("SET idle_in_transaction_session_timeout = '60s'")
    blocker.execute(
        "INSERT INTO event_store (id, stream_id, stream_type, version, event_type, "
        "schema_version, payload, created_at) VALUES (%s, 'a', 'default', 1, 't', 1, '{}', now())",
        (str(uuid.uuid4()),),
    )
    outcome: list[BaseException | None] = []

    def stuck_append() -> None:
        try:
            store.append("a", [ev()])  # version 1 is taken by an uncommitted insert: waits
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    try:
        thread = threading.Thread(target=stuck_append)
        thread.start()
        _wait_until_waiting_on_a_lock(url)
        after = store.append("after", [ev()])  # commits while the stuck append is in flight
        thread.join(timeout=45)
        assert not thread.is_alive(), "the stuck append was not bounded"
        assert isinstance(outcome[0], es.StoreTimeoutError), outcome
        assert "lock_timeout" in str(outcome[0])
        # the blocker is still open; readers are no longer held back
        assert [e.id for e in store.read_all(after=cursor)] == [after[0].id]
        assert store.head_position() == after[0].position
    finally:
        blocker.close()
        thread.join()
    store.close()


def test_an_append_beaten_to_its_version_every_time_gives_up_having_written_nothing(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expecting no version, an append that an overlapping append beats to the stream's
    next version reads the head again and is sent again. Beaten every time (a rival's
    uncommitted append of that version, committed while the append waits on it), it gives
    up after a bound of attempts with a StoreTimeoutError, having written nothing."""
    monkeypatch.setattr(postgres_write, "STATEMENT_ATTEMPTS", 2)
    store = es.connect(pg_url, validate=False)
    rivals: list[str] = []
    failures: list[BaseException] = []
    cursor = store.recorder._append_cursor()

    class Beaten:
        """The store's append cursor; each statement is raced by a rival append."""

        def __getattr__(self, name: str) -> Any:
            return getattr(cursor, name)

        def execute(self, statement: str, request: Any) -> Any:
            rival = _raw(pg_url)  # not autocommit: its append stays uncommitted
            row = EventRow(new_event_id(), "t", 1, "{}", "{}")
            # (Recorded before the store's time: the append is beaten, never behind.)
            then = datetime(2020, 1, 1, tzinfo=UTC)
            rival.execute(*append_query("s", None, None, [row], then, None, None))
            rivals.append(row.id)

            def commit_once_waited_on() -> None:
                try:
                    _wait_until_waiting_on_a_lock(pg_url)
                    rival.commit()
                except BaseException as exc:
                    failures.append(exc)
                finally:
                    rival.close()

            thread = threading.Thread(target=commit_once_waited_on)
            thread.start()
            try:
                return cursor.execute(statement, request)
            finally:
                thread.join()

    monkeypatch.setattr(store.recorder, "_append_cursor", Beaten)
    mine = es.NewEvent("t", {}, id=new_event_id())
    with pytest.raises(es.StoreTimeoutError, match="took the version") as raised:
        store.append("s", [mine])
    assert not failures, failures
    assert "gave up after 2 attempts" in str(raised.value)
    assert "nothing was written" in str(raised.value)
    monkeypatch.undo()
    assert len(rivals) == 2
    assert [e.id for e in store.read_stream("s")] == rivals
    assert store.get_event(mine.id) is None
    assert store.verify().ok
    store.close()


def test_an_idle_transaction_that_appended_does_not_hold_readers_back(pg_url: str) -> None:
    """Appends commit on their own connection: a store.transaction() that appends and
    then idles holds no in-flight marker."""
    store = es.connect(pg_url, validate=False)
    reader = es.connect(pg_url, validate=False)
    with store.transaction() as tx:
        tx.execute("SELECT 1")
        recorded = store.append("s", [ev()])
        assert list(reader.read_all()) == recorded
        assert reader.head_position() == recorded[0].position
    reader.close()
    store.close()


def test_no_pooled_connection_in_time_is_a_timeout_error(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False, pool_size=1, pool_timeout=0.5)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            store.head_position()
        except BaseException as exc:
            errors.append(exc)

    with store.transaction():
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], es.StoreTimeoutError), errors
    assert "pool_size" in str(errors[0])
    store.close()


def _count_projection() -> Projection:
    def handle(tx: Any, event: es.RecordedEvent, typed: Any) -> None:
        if event.payload.get("bad"):
            raise ValueError("bad event")
        tx.execute(
            "INSERT INTO seen_events (position) VALUES (?)", (event.position,)
        )

    return Projection(
        name="seen",
        handlers={"t": handle},
        ddl=["CREATE TABLE IF NOT EXISTS seen_events (position BIGINT PRIMARY KEY)"],
        tables=["seen_events"],
    )


def test_the_projection_runner_works_with_a_pool_of_one(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False, pool_size=1)
    store.append("s", [ev(n=n) for n in range(5)] + [ev(bad=True)])
    runner = ProjectionRunner(store, [_count_projection()], max_attempts=1)
    stats = runner.run()["seen"]
    assert (stats.applied, stats.parked) == (5, 1)
    assert runner.lag("seen") == 0
    assert [s.checkpoint for s in runner.status()] == [6]
    assert len(runner.dead_letters("seen")) == 1
    assert runner.retry_dead_letters("seen").failed == 1
    assert runner.rebuild("seen").applied == 5
    with store.transaction() as tx:
        assert tx.execute("SELECT count(*) FROM seen_events").fetchone() == (5,)
    store.close()


def test_a_write_lock_held_past_the_busy_timeout_is_a_timeout_error(tmp_path: Any) -> None:
    """SQLite's counterpart of lock_timeout: another connection holds the write lock."""
    import sqlite3

    from event_sourcing.stores.sqlite import SQLiteRecorder

    path = tmp_path / "events.db"
    store = es.EventStore(SQLiteRecorder(str(path), busy_timeout_ms=200), validate=False)
    store.append("s", [ev()])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(es.StoreTimeoutError, match="locked"):
            store.append("s", [ev()])
        with pytest.raises(es.StoreTimeoutError, match="locked"), store.transaction():
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.stream_version("s") == 1
    assert store.append("s", [ev()], expected_version=1)[0].version == 2
    store.close()


def test_reads_inside_a_transaction_refuse_an_isolation_that_could_skip(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False, pool_size=1)
    recorded = store.append("s", [ev()])
    with store.transaction():
        assert list(store.read_all()) == recorded  # its connection: READ COMMITTED
    with pytest.raises(es.EventStoreError, match="READ COMMITTED"), store.transaction() as tx:
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        list(store.read_all())
    assert list(store.read_all()) == recorded
    store.close()


def test_a_schema_dropped_under_a_running_store_gives_a_store_error(pg_url: str) -> None:
    store = es.connect(pg_url, validate=False)
    store.append("s", [ev()])
    schema = pg_url.partition("schema=")[2].partition("&")[0]
    with psycopg.connect(_admin_url(pg_url), autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    for call in (
        lambda: list(store.read_all()),
        lambda: store.read_stream("s"),
        lambda: store.head_position(),
        lambda: store.append("s", [ev()]),
    ):
        with pytest.raises(es.StoreUnavailableError, match="dropped"):
            call()
    store.close()


@pytest.mark.parametrize("bad", REFUSED_TIMES[:3], ids=repr)
def test_as_of_refuses_times_the_store_cannot_hold(
    make_store: Callable[..., es.EventStore], bad: Any
) -> None:
    from event_sourcing.projections import as_of

    store = make_store(validate=False)
    store.append("s", [ev()])
    with pytest.raises(es.EventValidationError):
        as_of(store, "deployments", bad)
