"""Hard problem 1: concurrent writers and a tailing reader; nothing skipped, nothing twice.

Writers run in separate processes so their transactions genuinely overlap in the database.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import psycopg
import pytest
from _workers import write_for

import event_sourcing as es

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


def test_orphaned_commit_is_sequenced_after_the_cursor(pg_schema_url: str) -> None:
    """A writer that committed but died before the sequencer ran leaves an unpositioned
    event: it must reach readers later, above their cursor, never below it."""
    store = es.connect(pg_schema_url, validate=False)
    store.append("s", [es.NewEvent("before", {})])
    cursor = store.head_position()
    base, _, schema = pg_schema_url.partition("?schema=")
    with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO event_store (id, stream_id, stream_type, version, event_type, "
            "schema_version, payload, created_at) VALUES "
            "(gen_random_uuid(), 'crashed', 'default', 1, 'orphan', 1, '{}', now())"
        )
        conn.execute("INSERT INTO streams VALUES ('crashed', 'default', 1, now(), now())")
    assert list(store.read_all(after=cursor)) == []  # not yet part of the ordered log
    store.append("s", [es.NewEvent("after", {})])
    later = list(store.read_all(after=cursor))
    assert [event.event_type for event in later] == ["orphan", "after"]
    assert all(event.position > cursor for event in later)
    store.close()
    # Opening a store also sequences orphans, so a quiet system does not hide them.
    with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO event_store (id, stream_id, stream_type, version, event_type, "
            "schema_version, payload, created_at) VALUES "
            "(gen_random_uuid(), 'crashed', 'default', 2, 'orphan2', 1, '{}', now())"
        )
    time.sleep(0)  # no ordering by sleeps: the connect below is what must sequence it
    with es.connect(pg_schema_url, validate=False) as reopened:
        assert [e.event_type for e in reopened.read_all(after=cursor)][-1] == "orphan2"
