"""Hard problem 1: concurrent writers and a tailing reader; nothing skipped, nothing twice.

Writers run in separate processes so their transactions genuinely overlap in the database.
"""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from _workers import write_for

import event_sourcing as es
from event_sourcing.events import new_event_id
from event_sourcing.stores.postgres_append import append_query
from event_sourcing.stores.recorder import EventRow

pytestmark = pytest.mark.slow

WRITERS = 4
SECONDS = 4.0
MAX_EVENTS_PER_WRITER = 20_000


def test_tailing_reader_sees_every_event_once_in_order(store_url: str) -> None:
    reader = es.connect(store_url, validate=False)
    seen: list[es.RecordedEvent] = []
    cursor = 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WRITERS, mp_context=context) as pool:
        futures = [
            pool.submit(write_for, store_url, n, SECONDS, MAX_EVENTS_PER_WRITER)
            for n in range(WRITERS)
        ]
        while not all(future.done() for future in futures):
            for event in reader.read_all(after=cursor):
                assert event.position > cursor, "a position at or below the cursor appeared"
                seen.append(event)
                cursor = event.position
        written = [event_id for future in futures for event_id in future.result()]
    seen.extend(reader.read_all(after=cursor))  # the tail after the last writer finished

    positions = [event.position for event in seen]
    assert all(a < b for a, b in itertools.pairwise(positions)), "not increasing"
    seen_ids = [event.id for event in seen]
    assert len(seen_ids) == len(set(seen_ids)), "an event was delivered twice"
    assert set(seen_ids) == set(written), "the tailing reader missed events"
    assert len(written) > WRITERS * 50, "writers barely ran; the test proves nothing"
    # The tail saw exactly what a full re-read sees: the log never changed under the reader.
    assert [event.id for event in reader.read_all()] == seen_ids
    # Per stream, positions follow versions.
    for stream in {event.stream_id for event in seen}:
        versions = [event.version for event in seen if event.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))
    reader.close()


def _append_query(stream_id: str, event_type: str) -> tuple[str, dict[str, Any]]:
    """The store's own append statement for one event, to run in a transaction we hold."""
    row = EventRow(new_event_id(), event_type, 1, "{}", "{}")
    return append_query(stream_id, None, None, [row], datetime.now(UTC), None, None)


def test_open_writer_holds_back_later_commits_until_it_ends(pg_schema_url: str) -> None:
    """The race the ordering exists for, made deterministic: writer A has its positions
    but has not committed; writer B appends after it and commits first. A reader must not
    be handed B's event yet (its cursor would pass A's lower position), and must get A's
    then B's once A commits."""
    store = es.connect(pg_schema_url, validate=False)
    cursor = store.append("s", [es.NewEvent("first", {})])[0].position
    base, _, schema = pg_schema_url.partition("?schema=")
    slow = psycopg.connect(base, options=f"-c search_path={schema}")  # not autocommit
    try:
        row = slow.execute(*_append_query("a", "from_a")).fetchone()
        assert row is not None
        a_position = row[2]  # (stream type, version, position)
        [b] = store.append("b", [es.NewEvent("from_b", {})])
        assert b.position > a_position > cursor
        assert list(store.read_all(after=cursor)) == []
        assert store.head_position() == cursor
        slow.commit()
    finally:
        slow.close()
    delivered = list(store.read_all(after=cursor))
    assert [(e.event_type, e.position) for e in delivered] == [
        ("from_a", a_position), ("from_b", b.position)
    ]
    assert store.head_position() == b.position
    store.close()


def test_aborted_writer_leaves_a_gap_not_a_hole(pg_schema_url: str) -> None:
    """An append that rolls back burns its positions; readers skip the gap, lose nothing,
    and the advisory lock is released so other writers go on."""
    store = es.connect(pg_schema_url, validate=False)
    base, _, schema = pg_schema_url.partition("?schema=")
    with psycopg.connect(base, options=f"-c search_path={schema}") as aborted:
        aborted.execute(*_append_query("a", "doomed"))
        aborted.rollback()
    after = store.append("b", [es.NewEvent("kept", {})])
    assert [e.event_type for e in store.read_all()] == ["kept"]
    assert after[0].position > 1  # the rolled-back append burned position 1
    store.close()


def test_unrelated_open_transactions_do_not_delay_readers(pg_schema_url: str) -> None:
    """Only appends in flight hold readers back; a long transaction elsewhere does not."""
    store = es.connect(pg_schema_url, validate=False)
    base, _, schema = pg_schema_url.partition("?schema=")
    with psycopg.connect(base, options=f"-c search_path={schema}") as idle:
        idle.execute("CREATE TABLE unrelated (x int)")
        idle.execute("INSERT INTO unrelated VALUES (1)")  # holds a transaction id, open
        recorded = store.append("s", [es.NewEvent("visible", {})])
        assert list(store.read_all()) == recorded
        assert store.head_position() == recorded[0].position
        idle.rollback()
    store.close()
