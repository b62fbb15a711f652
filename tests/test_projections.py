"""The projection runner: batches, exactly-once checkpoints, crashes, dead letters, rebuild, lag.

Every test runs on SQLite and PostgreSQL; a counter read model makes loss or duplication visible.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from _projection_worker import counter_projection, run_until_blocked, totals

import event_sourcing as es
from event_sourcing.catalog import DomainEvent, EventRegistry
from event_sourcing.projections import Projection, ProjectionError, ProjectionRunner
from event_sourcing.projections.runner import table_exists

MakeStore = Callable[..., es.EventStore]


class Crash(BaseException):
    """Stands for the process dying inside a handler: not an Exception, so never retried."""


def ticks(store: es.EventStore, values: range, stream: str = "s", noise_every: int = 0) -> int:
    """Append tick events (value = i), with a `noise` event after every `noise_every` ticks;
    return the sum of the values."""
    events = []
    for value in values:
        events.append(es.NewEvent("tick", {"value": value}))
        if noise_every and value % noise_every == 0:
            events.append(es.NewEvent("noise", {}))
    for start in range(0, len(events), 200):
        store.append(stream, events[start : start + 200])
    return sum(values)


@pytest.fixture
def raw(make_store: MakeStore) -> es.EventStore:
    return make_store(validate=False)


def test_catches_up_in_batches_and_lag_drops_to_zero(raw: es.EventStore) -> None:
    total = ticks(raw, range(1, 101), noise_every=7)
    runner = ProjectionRunner(raw, [counter_projection()])
    assert runner.lag("counter") == raw.head_position()

    stats = runner.run(batch_size=30)["counter"]

    assert (stats.read, stats.applied, stats.parked) == (100, 100, 0)
    assert stats.batches == 4  # 30 + 30 + 30 + 10: the short batch ends the catch-up
    assert totals(raw) == (100, total)
    assert runner.checkpoint("counter") == raw.head_position()
    assert runner.lag("counter") == 0
    # New events: only they are applied.
    more = ticks(raw, range(1000, 1010))
    assert runner.lag("counter") == 10
    assert runner.run()["counter"].read == 10
    assert totals(raw) == (110, total + more)


def test_dense_and_sparse_stretches_of_the_log_are_applied_alike(raw: es.EventStore) -> None:
    """The runner reads a page as a range of the log while most of its events are of
    interest, and by type where few are: each tick is applied once whichever way it was
    read, across stretches of either kind."""
    total = ticks(raw, range(1, 81))  # dense: every event is a tick
    raw.append("other", [es.NewEvent("noise", {}) for _ in range(300)])  # none
    total += ticks(raw, range(81, 91))
    raw.append("other", [es.NewEvent("noise", {}) for _ in range(100)])
    total += ticks(raw, range(91, 201), noise_every=5)  # dense again
    runner = ProjectionRunner(raw, [counter_projection()])

    stats = runner.run(batch_size=16)["counter"]

    assert (stats.read, stats.applied) == (200, 200)
    assert totals(raw) == (200, total)
    assert runner.checkpoint("counter") == raw.head_position()


def test_a_scanned_page_keeps_what_a_filtered_page_keeps(raw: es.EventStore) -> None:
    """read_page(scan=True) reads positions of every type and keeps the wanted ones: paging
    through the log either way yields the same events, and ends at the head."""
    from event_sourcing.projections.pages import read_page

    ticks(raw, range(40), noise_every=3)
    raw.append("other", [es.NewEvent("noise", {}) for _ in range(20)])
    ticks(raw, range(40, 45))

    def page_through(scan: bool) -> tuple[list[str], int]:
        cursor, ids = 0, []
        while True:
            page = read_page(raw, cursor, ["tick"], limit=7, scan=scan)
            assert all(e.event_type == "tick" and e.position > cursor for e in page.events)
            ids += [e.id for e in page.events]
            cursor = page.cursor
            if not page.full:
                return ids, cursor

    scanned, filtered = page_through(scan=True), page_through(scan=False)
    assert scanned == filtered
    assert len(scanned[0]) == 45 and scanned[1] == raw.head_position()


def test_checkpoint_passes_trailing_events_the_projection_ignores(raw: es.EventStore) -> None:
    ticks(raw, range(5))
    raw.append("other", [es.NewEvent("noise", {}) for _ in range(50)])
    runner = ProjectionRunner(raw, [counter_projection()])

    runner.run(batch_size=3)

    assert runner.checkpoint("counter") == raw.head_position()
    assert runner.lag("counter") == 0
    assert totals(raw) == (5, 10)


def test_crash_inside_a_batch_commits_nothing_of_that_batch(raw: es.EventStore) -> None:
    total = ticks(raw, range(1, 51))

    def crash_at_35(event: es.RecordedEvent) -> None:
        if event.payload["value"] == 35:
            raise Crash

    with pytest.raises(Crash):
        ProjectionRunner(raw, [counter_projection(hook=crash_at_35)]).run(batch_size=20)

    # Batches 1-20 and 21-40... the second one died at 35: only the first committed.
    runner = ProjectionRunner(raw, [counter_projection()])
    assert totals(raw) == (20, sum(range(1, 21)))
    assert runner.checkpoint("counter") == 20
    runner.run(batch_size=20)
    assert totals(raw) == (50, total)
    assert runner.dead_letters("counter") == []


def test_failed_attempts_are_rolled_back_to_the_savepoint(raw: es.EventStore) -> None:
    total = ticks(raw, range(1, 21))
    failures: list[int] = []

    def flaky(event: es.RecordedEvent) -> None:
        # The handler has already written when this raises: the write must be undone.
        if event.payload["value"] == 12 and len(failures) < 2:
            failures.append(event.position)
            raise RuntimeError("transient")

    runner = ProjectionRunner(raw, [counter_projection(hook=flaky)], max_attempts=3)
    stats = runner.run(batch_size=8)["counter"]

    assert len(failures) == 2
    assert (stats.applied, stats.parked) == (20, 0)
    assert totals(raw) == (20, total)  # value 12 counted once, not three times


def test_poison_event_is_parked_listed_and_retried(raw: es.EventStore) -> None:
    total = ticks(raw, range(1, 31))
    broken = {"on": True}

    def poison(event: es.RecordedEvent) -> None:
        if event.payload["value"] == 7 and broken["on"]:
            raise ValueError("cannot handle seven")

    runner = ProjectionRunner(raw, [counter_projection(hook=poison)], max_attempts=2)
    stats = runner.run(batch_size=10)["counter"]

    assert (stats.read, stats.applied, stats.parked) == (30, 29, 1)
    assert totals(raw) == (29, total - 7)
    assert runner.lag("counter") == 0  # it moved on
    [letter] = runner.dead_letters("counter")
    assert letter.position == 7 and letter.event_type == "tick" and letter.attempts == 2
    assert letter.error == "ValueError: cannot handle seven"
    assert "cannot handle seven" in letter.traceback and "poison" in letter.traceback
    assert runner.status()[0].dead_letters == 1

    # Still broken: the retry fails, the letter stays with more attempts, nothing applied.
    retry = runner.retry_dead_letters("counter")
    assert (retry.retried, retry.applied, retry.failed) == (1, 0, 1)
    assert runner.dead_letters("counter")[0].attempts == 4
    assert totals(raw) == (29, total - 7)

    broken["on"] = False
    retry = runner.retry_dead_letters("counter")
    assert (retry.retried, retry.applied, retry.failed) == (1, 1, 0)
    assert runner.dead_letters("counter") == []
    assert totals(raw) == (30, total)


def test_projections_keep_independent_checkpoints(raw: es.EventStore) -> None:
    ticks(raw, range(10))
    runner = ProjectionRunner(raw, [counter_projection("a"), counter_projection("b")])

    runner.run("a")
    assert runner.lag("a") == 0 and runner.lag("b") == raw.head_position()
    assert totals(raw, "a") == (10, 45)
    with raw.transaction() as tx:
        assert not table_exists(tx, "b_totals")  # b never ran

    ticks(raw, range(10, 15))
    runner.run("b")
    assert runner.lag("a") == 5 and runner.lag("b") == 0
    assert totals(raw, "b") == (15, sum(range(15)))
    status = {s.name: s for s in runner.status()}
    assert (status["a"].checkpoint, status["b"].checkpoint) == (10, 15)
    with pytest.raises(ProjectionError, match="no projection named 'c'"):
        runner.run("c")


def test_rebuild_drops_and_replays_from_zero(raw: es.EventStore) -> None:
    total = ticks(raw, range(1, 41))
    poison = {"on": True}

    def hook(event: es.RecordedEvent) -> None:
        if event.payload["value"] == 3 and poison["on"]:
            raise ValueError("bad")

    runner = ProjectionRunner(raw, [counter_projection(hook=hook)], max_attempts=1)
    runner.run()
    with raw.transaction() as tx:  # damage the read model
        tx.execute("UPDATE counter_totals SET total = -1")
    assert len(runner.dead_letters("counter")) == 1

    poison["on"] = False
    stats = runner.rebuild("counter", batch_size=16)

    assert stats.rebuilt and stats.read == 40
    assert totals(raw) == (40, total)
    assert runner.dead_letters("counter") == []
    assert runner.lag("counter") == 0


def test_new_projection_version_rebuilds_automatically(raw: es.EventStore) -> None:
    ticks(raw, range(5))
    ProjectionRunner(raw, [counter_projection()]).run()
    with raw.transaction() as tx:
        tx.execute("UPDATE counter_totals SET n = 999")

    same = ProjectionRunner(raw, [counter_projection()]).run()["counter"]
    assert not same.rebuilt and totals(raw) == (999, 10)

    bumped = ProjectionRunner(raw, [counter_projection(version=2)]).run()["counter"]
    assert bumped.rebuilt and totals(raw) == (5, 10)


def test_follow_returns_when_idle_or_stopped(raw: es.EventStore) -> None:
    import threading

    ticks(raw, range(8))
    runner = ProjectionRunner(raw, [counter_projection()])
    stats = runner.follow(poll_interval=0.01, max_idle=0)
    assert stats["counter"].read == 8 and runner.lag("counter") == 0

    stop = threading.Event()
    stop.set()
    assert runner.follow(stop_event=stop) == {}


class _TaggedV1(DomainEvent):
    event_type: ClassVar[str] = "tagged"
    schema_version: ClassVar[int] = 1
    label: str


class _TaggedV2(DomainEvent):
    event_type: ClassVar[str] = "tagged"
    schema_version: ClassVar[int] = 2
    label: str
    weight: int


def test_handlers_receive_upcast_typed_events(make_store: MakeStore) -> None:
    old = EventRegistry()
    old.register(_TaggedV1)
    make_store(registry=old).append("t", [es.NewEvent("tagged", {"label": "x"})])
    new = EventRegistry()
    new.register(_TaggedV2)
    new.register_upcaster("tagged", 1, lambda payload: {**payload, "weight": 3})
    store = make_store(registry=new)
    seen: list[Any] = []

    def handle(tx: Any, event: es.RecordedEvent, typed: DomainEvent | None) -> None:
        seen.append((event.schema_version, event.recorded_schema_version, typed))

    projection = Projection("tags", {"tagged": handle})
    ProjectionRunner(store, [projection]).run()

    [(version, recorded, typed)] = seen
    assert (version, recorded) == (2, 1)
    assert isinstance(typed, _TaggedV2) and typed.weight == 3


@pytest.mark.slow
def test_killed_runner_resumes_without_loss_or_duplication(store_url: str) -> None:
    store = es.connect(store_url, validate=False)
    try:
        total = ticks(store, range(1, 3001), noise_every=5)
        block_at = next(
            e.position for e in store.read_all(event_types=["tick"]) if e.payload["value"] == 2000
        )
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        worker = context.Process(
            target=run_until_blocked, args=(store_url, block_at, ready, 64), daemon=True
        )
        worker.start()
        assert ready.wait(120), "the runner process never reached the blocking event"
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)  # dies inside an open batch transaction
        worker.join(30)

        runner = ProjectionRunner(store, [counter_projection(), counter_projection("fresh")])
        checkpoint = runner.checkpoint("counter")
        assert 0 < checkpoint < block_at, "no batch committed before the kill"
        applied = [
            e.payload["value"]
            for e in store.read_all(event_types=["tick"])
            if e.position <= checkpoint
        ]
        # Exactly the committed batches are in the read model; the open one left no trace.
        assert totals(store) == (len(applied), sum(applied))

        runner.run("counter", batch_size=64)
        runner.run("fresh")
        assert totals(store) == (3000, total)
        assert totals(store) == totals(store, "fresh")
        assert runner.rebuild("counter").read == 3000
        assert totals(store) == (3000, total)
    finally:
        store.close()


def test_log_counts_count_only_what_is_new(raw: es.EventStore) -> None:
    """`mlevents status` counts: kept beside the log, each call counts the events after the
    position the previous one reached, and always equals a count of the whole log."""
    from event_sourcing.projections.counts import log_counts

    def streams() -> int:
        with raw.transaction(read_only=True) as tx:
            return int(tx.execute("SELECT count(*) FROM streams").fetchone()[0])

    empty = log_counts(raw)
    assert (empty.position, empty.streams, empty.by_type) == (0, 0, {})
    ticks(raw, range(10), noise_every=3)
    first = log_counts(raw)
    assert first.by_type == raw.counts_by_type() and first.streams == streams() == 1
    assert first.position == raw.head_position()
    ticks(raw, range(5), stream="other")
    raw.append("third", [es.NewEvent("noise", {})])
    second = log_counts(raw)
    assert second.by_type == raw.counts_by_type() == {"noise": 5, "tick": 15}
    assert second.streams == streams() == 3 and second.position == raw.head_position()
    with raw.transaction(read_only=True) as tx:
        # What was counted is kept: the next call starts from the head it reached.
        assert tx.execute("SELECT position FROM event_counts_through").fetchone()[0] == (
            raw.head_position()
        )


def test_a_caught_up_runner_writes_nothing(tmp_path: Any) -> None:
    """Catching up when nothing is new (every serving or provenance question does) opens no
    write transaction: it goes through while another connection holds SQLite's write lock,
    on a store that waits for no lock (busy timeout 0)."""
    import sqlite3

    from event_sourcing.stores.sqlite import SQLiteRecorder

    path = str(tmp_path / "events.db")
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        ticks(store, range(10))
        ProjectionRunner(store, [counter_projection()]).run()
    impatient = es.EventStore(SQLiteRecorder(path, busy_timeout_ms=0), validate=False)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        stats = ProjectionRunner(impatient, [counter_projection()]).run()["counter"]
        assert (stats.read, stats.checkpoint) == (0, impatient.head_position())
        with impatient.transaction(read_only=True) as tx:
            assert tx.execute("SELECT n, total FROM counter_totals").fetchone() == (10, 45)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        impatient.close()


def test_insert_rows_writes_every_row_whatever_the_chunking(raw: es.EventStore) -> None:
    """insert_rows sends several rows per statement (whole statements at once, then the
    rest): every row lands, once, and an ON CONFLICT clause applies to each."""
    from event_sourcing.projections import insert_rows

    rows = [(f"k{i}", i, i * 2, "x") for i in range(25)]  # 12 rows a statement: 12 + 12 + 1
    with raw.transaction() as tx:
        tx.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, a BIGINT, b BIGINT, c TEXT)")
        insert_rows(tx, "kv (k, a, b, c)", rows)
        insert_rows(tx, "kv (k, a, b, c)", [], "ON CONFLICT DO NOTHING")
        insert_rows(
            tx, "kv (k, a, b, c)", [(f"k{i}", -i, 0, "y") for i in range(20, 30)],
            "ON CONFLICT (k) DO UPDATE SET c = excluded.c",
        )
    with raw.transaction(read_only=True) as tx:
        found = sorted(tx.execute("SELECT k, a, b, c FROM kv").fetchall())
    expected = [(k, a, b, "y" if a >= 20 else c) for k, a, b, c in rows]
    expected += [(f"k{i}", -i, 0, "y") for i in range(25, 30)]
    assert found == sorted(expected)
