"""The SQLite schema: ids and times in compact form (v5) and shared texts stored once (v7),
decoded exactly, and the migration of a real version 4 database (text ids, times, types and
metadata, a created_at index) that keeps every event and leaves `verify` passing."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

import event_sourcing as es
from event_sourcing.integrity.audit import IntegrityWarning
from event_sourcing.integrity.hashing import GENESIS, chain_hash, content_hash, timestamp_text
from event_sourcing.stores import sqlite, sqlite_schema, sqlite_texts
from event_sourcing.stores.sqlite_schema import id_text, id_value, time_of, time_text, time_value

# The version 4 DDL as it shipped (event_store and its indexes; the rest is unchanged).
V4_EVENT_STORE = """
CREATE TABLE mlevents_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL,
    description TEXT NOT NULL);
CREATE TABLE streams (stream_id TEXT PRIMARY KEY CHECK (length(stream_id) BETWEEN 1 AND 255),
    stream_type TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE event_store (
    position       INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    stream_id      TEXT NOT NULL,
    stream_type    TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL,
    correlation_id TEXT,
    causation_id   TEXT,
    content_hash   BLOB,
    chain_hash     BLOB,
    UNIQUE (stream_id, version)
);
CREATE INDEX idx_event_store_type ON event_store (event_type, position);
CREATE INDEX idx_event_store_time ON event_store (created_at);
CREATE INDEX idx_event_store_correlation ON event_store (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store
BEGIN SELECT RAISE(ABORT, 'event_store is append-only: events cannot be updated'); END;
CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store
BEGIN SELECT RAISE(ABORT, 'event_store is append-only: events cannot be deleted'); END;
INSERT INTO mlevents_schema VALUES (1, '2026-01-01', 'v1'), (2, '2026-02-01', 'v2'),
    (3, '2026-03-01', 'v3'), (4, '2026-04-01', 'v4');
"""
LEGACY_ID = "ABCDEF01-2345-4678-9ABC-DEF012345678"  # not canonical (upper case): stays text
ROWS = [  # stream, type, payload, metadata, time, correlation, causation, id
    ("run-a", "training_started", '{"seed":7}', "{}", datetime(2026, 5, 1, 12, tzinfo=UTC),
     "run-a", None, str(uuid.uuid4())),
    ("run-b", "training_started", '{"note":"é😀"}', '{"user":"ada"}',
     datetime(999, 5, 1, tzinfo=UTC), None, None, str(uuid.uuid4())),
    ("run-a", "training_progress", '{"step":1}', "{}",
     datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC), "run-a", "cause", LEGACY_ID),
    ("run-a", "training_progress", '{"step":2}', "{}", datetime(1, 1, 1, tzinfo=UTC),
     "run-a", None, str(uuid.uuid4())),
]


def _version_4_store(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(V4_EVENT_STORE)
    heads: dict[str, tuple[int, bytes]] = {}
    for position, (stream, kind, payload, metadata, at, correlation, causation, event_id) in (
        enumerate(ROWS, start=1)
    ):
        version, previous = heads.get(stream, (0, GENESIS))
        stamp = timestamp_text(at)
        content = content_hash(event_id, stream, kind, 1, payload, metadata, stamp,
                               correlation, causation)
        chain = chain_hash(previous, version + 1, "training_run", content)
        heads[stream] = (version + 1, chain)
        connection.execute(
            "INSERT INTO event_store VALUES (?, ?, ?, 'training_run', ?, ?, 1, ?, ?, ?, ?, ?, "
            "?, ?)",
            (position, event_id, stream, version + 1, kind, payload, metadata, stamp,
             correlation, causation, content, chain),
        )
        if version == 0:
            connection.execute("INSERT INTO streams VALUES (?, 'training_run', ?)",
                               (stream, stamp))
    connection.commit()
    connection.close()


def test_a_version_4_database_is_compacted_on_connect(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _version_4_store(path)

    with es.connect(f"sqlite:///{path}", validate=False) as store:
        events = list(store.read_all())
        assert [(e.id, e.stream_id, e.version, e.event_type, e.payload, e.metadata,
                 e.created_at, e.correlation_id, e.causation_id) for e in events] == [
            (event_id, stream, version, kind, es.stores.values.decode(payload),
             es.stores.values.decode(metadata), at, correlation, causation)
            for (stream, kind, payload, metadata, at, correlation, causation, event_id), version
            in zip(ROWS, [1, 1, 2, 3], strict=True)
        ]
        found = store.get_event(ROWS[0][7])
        assert found is not None and found.position == 1
        report = store.verify()
        assert report.ok and report.events == 4, report.problems
        store.append("run-a", [es.NewEvent("training_progress", {"step": 3})],
                     expected_version=3)
        dated = datetime(2024, 1, 1, 0, 0, 0, 7, tzinfo=UTC)  # v6: business time
        (backfilled,) = store.append(
            "run-b", [es.NewEvent("training_progress", {"step": 1}, occurred_at=dated)]
        )
        assert backfilled.occurred_at == dated == store.read_stream("run-b")[-1].occurred_at
        assert {e.id for e in store.read_as_of(dated)} == {
            e.id for e in events if e.created_at <= dated
        } | {backfilled.id}
        assert all(e.occurred_at == e.created_at for e in store.read_all() if e != backfilled)
        assert store.verify().ok

    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT max(version) FROM mlevents_schema").fetchone() == (
            sqlite.SCHEMA_VERSION,
        )
        assert connection.execute(
            "SELECT typeof(id), typeof(created_at), typeof(occurred_at) FROM event_store "
            "ORDER BY position"
        ).fetchall() == [("blob", "integer", "null"), ("blob", "integer", "null"),
                         ("text", "integer", "null"), ("blob", "integer", "null"),
                         ("blob", "integer", "null"), ("blob", "integer", "integer")]
        # v7: stream type, event type and metadata as numbers of texts stored once
        assert connection.execute(
            "SELECT DISTINCT typeof(stream_type), typeof(event_type), typeof(metadata) "
            "FROM event_store"
        ).fetchall() == [("integer", "integer", "integer")]
        assert sorted(row[0] for row in connection.execute("SELECT text FROM event_texts")) == (
            sorted({"training_run", "training_started", "training_progress", "{}",
                    '{"user":"ada"}'})
        )
        indexes = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event_store'"
        )}
        assert "idx_event_store_time" not in indexes
        assert {
            "idx_event_store_type", "idx_event_store_correlation", "idx_event_store_occurred"
        } <= indexes
        assert connection.execute(
            "SELECT name FROM sqlite_master WHERE name IN ('event_store_v4', 'event_store_v6')"
        ).fetchone() is None
        for statement in ("UPDATE event_store SET payload = '{}'", "DELETE FROM event_store"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                connection.execute(statement)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(
                "REPLACE INTO event_store (position, id, stream_id, stream_type, version, "
                "event_type, schema_version, payload, created_at) "
                "SELECT 9, id, 'x', 'y', 1, 't', 1, '{}', 0 FROM event_store WHERE position = 1"
            )
    finally:
        connection.close()


@pytest.mark.parametrize("at", [
    datetime(1, 1, 1, tzinfo=UTC), datetime(999, 5, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
])
def test_times_are_stored_as_microseconds_and_decode_exactly(at: datetime) -> None:
    stored = time_value(at)
    assert isinstance(stored, int)
    assert time_of(stored) == at and time_of(stored).tzinfo is UTC
    assert time_text(stored) == timestamp_text(at)  # what the content hash covers
    assert time_text(timestamp_text(at)) == timestamp_text(at)  # text left by a migration


def test_ids_are_stored_as_16_bytes_and_decode_to_their_text() -> None:
    event_id = str(uuid.uuid4())
    assert len(id_value(event_id)) == 16
    assert id_text(bytes(id_value(event_id))) == event_id
    assert id_text(LEGACY_ID) == LEGACY_ID


def test_the_stored_columns_are_compact(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        [event] = store.append("s", [es.NewEvent("thing_happened", {"n": 1})])
        assert store.get_event(event.id) == event
        assert list(store.read_all(until=event.created_at)) == [event]
        assert list(store.read_all(until=datetime(2000, 1, 1, tzinfo=UTC))) == []
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT id, created_at FROM event_store").fetchone()
    finally:
        connection.close()
    assert row == (uuid.UUID(event.id).bytes, time_value(event.created_at))


def test_occurred_at_is_stored_as_microseconds_and_text_is_still_read(tmp_path: Path) -> None:
    """A given occurred_at is stored like created_at (integer microseconds; NULL when not
    given); the hash covers its text, so a text value (as a migration may leave a time)
    reads and verifies the same."""
    path = tmp_path / "events.db"
    dated = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        undated, backfilled = store.append("s", [
            es.NewEvent("thing_happened", {"n": 1}),
            es.NewEvent("thing_happened", {"n": 2}, occurred_at=dated),
        ])
    connection = sqlite3.connect(path)
    try:
        assert connection.execute(
            "SELECT occurred_at FROM event_store ORDER BY position"
        ).fetchall() == [(None,), (time_value(dated),)]
        with connection:  # as text, the way a time the v5 migration kept is stored
            connection.execute("DROP TRIGGER event_store_no_update")
            connection.execute("UPDATE event_store SET occurred_at = ? WHERE position = 2",
                               (timestamp_text(dated),))
        connection.executescript(sqlite_schema.SCHEMA)  # (the trigger back)
    finally:
        connection.close()
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        assert list(store.read_all()) == [undated, backfilled]
        assert backfilled.occurred_at == dated and undated.occurred_at == undated.created_at
        report = store.verify()
        assert report.ok, report.problems


# -- shared texts (v7) -----------------------------------------------------------------------
def _texts(path: Path) -> list[tuple[int, str]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT id, text FROM event_texts ORDER BY id").fetchall()
    finally:
        connection.close()


def test_shared_texts_are_stored_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    metadata = {"dagster_run_id": "r-1", "asset_key": "model"}
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        written = [
            *store.append("a", [es.NewEvent("thing_happened", {"n": n}) for n in range(3)],
                          metadata=metadata),
            *store.append("b", [es.NewEvent("other_thing", {"n": 9})], stream_type="kind",
                          metadata=metadata),
            *store.append("a", [es.NewEvent("thing_happened", {"n": 4})]),
        ]
        assert list(store.read_all()) == written
        assert [e.event_type for e in store.read_all(event_types=["other_thing"])] == [
            "other_thing"
        ]
        assert list(store.read_all(event_types=["never_appended"])) == []
        assert store.counts_by_type() == {"other_thing": 1, "thing_happened": 4}
        assert store.verify().ok
    texts = [text for _, text in _texts(path)]
    assert len(texts) == len(set(texts)) == 6  # default, kind, the two types, two metadata
    assert sum(text.startswith('{"asset_key"') for text in texts) == 1
    with es.connect(f"sqlite:///{path}", validate=False) as store:  # a fresh cache
        assert list(store.read_all()) == written


def test_a_rolled_back_append_leaves_no_number_behind(tmp_path: Path) -> None:
    """Numbers given in a transaction that rolls back are not remembered: another
    connection may give the same number to another text."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with es.connect(url, validate=False) as first, es.connect(url, validate=False) as second:
        [taken] = first.append("s", [es.NewEvent("thing_happened", {"n": 1})])
        with pytest.raises(es.EventStoreError):  # numbers the new type, then collides
            first.append("t", [es.NewEvent("rolled_back_type", {"n": 2}),
                               es.NewEvent("thing_happened", {"n": 3}, id=taken.id)],
                         metadata={"rolled": "back"})
        [other] = second.append("u", [es.NewEvent("second_type", {"n": 4})],
                                metadata={"second": True})
        [again] = first.append("t", [es.NewEvent("rolled_back_type", {"n": 5})],
                               metadata={"rolled": "back"})
        for store in (first, second):
            assert [(e.event_type, e.metadata) for e in store.read_all()] == [
                ("thing_happened", {}), ("second_type", {"second": True}),
                ("rolled_back_type", {"rolled": "back"}),
            ]
            assert store.get_event(other.id) == other and store.get_event(again.id) == again
            assert store.verify().ok


def test_event_texts_are_append_only_and_an_edited_text_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        store.append("s", [es.NewEvent("thing_happened", {"n": 1})])
        [second] = store.append("s", [es.NewEvent("thing_happened", {"n": 2})],
                                metadata={"who": "ada"})
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (
            "UPDATE event_texts SET text = 'x'", "DELETE FROM event_texts",
            "REPLACE INTO event_texts (id, text) VALUES (1, 'x')",
            "INSERT INTO event_texts (text) SELECT text FROM event_texts LIMIT 1",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                connection.execute(statement)
        connection.execute("DROP TRIGGER event_texts_no_update")
        connection.execute(
            "UPDATE event_texts SET text = ? WHERE text = ?",
            ('{"who":"eve"}', '{"who":"ada"}'),
        )
    finally:
        connection.close()
    with pytest.warns(IntegrityWarning, match="event_texts_no_update was missing"), \
            es.connect(f"sqlite:///{path}", validate=False) as store:
        assert store.get_event(second.id).metadata == {"who": "eve"}  # what is there now
        report = store.verify()
        assert not report.ok
        assert report.problems[0].position == second.position, report.problems


def test_verify_reads_the_texts_as_stored_not_as_a_recorder_cached_them(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        [event] = store.append("s", [es.NewEvent("thing_happened", {"n": 1})],
                               metadata={"who": "ada"})
        assert store.get_event(event.id) == event  # every text of it now cached
        connection = sqlite3.connect(path, isolation_level=None)
        try:  # another process edits the text under the running store
            connection.execute("DROP TRIGGER event_texts_no_update")
            connection.execute(
                "UPDATE event_texts SET text = ? WHERE text = ?",
                ('{"who":"eve"}', '{"who":"ada"}'),
            )
        finally:
            connection.close()
        with pytest.warns(IntegrityWarning, match="event_texts_no_update was missing"):
            report = store.verify()  # (which also puts the trigger back, saying so)
        assert not report.ok
        assert report.problems[0].position == event.position, report.problems


def test_a_recorders_cache_of_texts_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every append bringing new metadata: the cache starts again empty when full, and what
    is read and appended stays right."""
    monkeypatch.setattr(sqlite_texts, "MAX_CACHED", 3)
    with es.connect(f"sqlite:///{tmp_path / 'events.db'}", validate=False) as store:
        written = [
            event
            for n in range(12)
            for event in store.append(f"s-{n % 2}", [es.NewEvent(f"type_{n % 5}", {"n": n})],
                                      metadata={"request": n})
        ]
        assert list(store.read_all()) == written
        assert [e.event_type for e in store.read_all(event_types=["type_4"])] == [
            "type_4", "type_4"
        ]
        assert store.verify().ok
        stored = len(_texts(tmp_path / "events.db"))  # 18: a stream type, 5 types, 12 metadata
        cache = store.recorder._texts  # each way, it was emptied when full: holds few
        assert stored == 18 and max(len(cache._numbers), len(cache._texts)) < 8
