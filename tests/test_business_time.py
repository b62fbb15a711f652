"""Business time (occurred_at) beside record time (created_at): appends, bitemporal as-of
reads, the store clock that never goes backwards, and the v6 migration. Every test runs on
SQLite and on PostgreSQL (the `store_url` fixture).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from conftest import PG_URL, latest_schema_version, sqlite_texts_inline

import event_sourcing as es
from event_sourcing import serving as es_serving
from event_sourcing.catalog import ModelDeployed
from event_sourcing.cli import main
from event_sourcing.events import new_event_id
from event_sourcing.projections import (
    as_of,
    deployed_model_at,
    list_deployments,
)
from event_sourcing.projections.projection import iso
from event_sourcing.stores import postgres_write
from event_sourcing.stores.imports import ImportRecord
from event_sourcing.stores.postgres import ClockBehind, PostgresRecorder

MakeStore = Callable[..., es.EventStore]


class Clock:
    """A store clock the test sets by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def deployed(model_id: str, version: int) -> ModelDeployed:
    return ModelDeployed(model_id=model_id, model_name="wine-clf", version=version)


# -- appending ----------------------------------------------------------------------------------
def test_occurred_at_defaults_to_the_time_of_recording(store: es.EventStore) -> None:
    recorded = store.append("s", [es.NewEvent("training_progress", {"step": 1, "loss": 1.0})])
    (read,) = store.read_all()
    assert recorded[0].occurred_at == recorded[0].created_at
    assert read == recorded[0]
    assert read.occurred_at == read.created_at
    assert read.to_dict()["occurred_at"] == read.created_at.isoformat()


def test_occurred_at_per_event_per_typed_event_and_per_append(store: es.EventStore) -> None:
    jan, feb = utc(2024, 1, 1), utc(2024, 2, 1, 12)
    paris = datetime(2024, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    recorded = store.append(
        "s",
        [
            es.NewEvent("training_progress", {"step": 1, "loss": 1.0}, occurred_at=feb),
            es.NewEvent.of(deployed("m1", 1), occurred_at=paris),
            es.NewEvent("training_progress", {"step": 2, "loss": 0.5}),
            deployed("m2", 2),
        ],
        occurred_at=jan,
    )
    expected = [feb, utc(2024, 3, 1), jan, jan]
    assert [e.occurred_at for e in recorded] == expected
    assert all(e.occurred_at.tzinfo is UTC for e in recorded)
    assert list(store.read_all()) == recorded
    assert store.read_stream("s") == recorded
    assert store.get_event(recorded[1].id) == recorded[1]
    assert store.verify().ok


@pytest.mark.parametrize(
    ("occurred_at", "message"),
    [
        (datetime(2024, 1, 1), "naive"),
        ("2024-01-01T00:00:00Z", "timezone-aware datetime"),
        (1704067200, "timezone-aware datetime"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))), "time range"),
        (datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "time range"),
    ],
)
def test_a_bad_occurred_at_is_refused_before_anything_is_written(
    store: es.EventStore, occurred_at: object, message: str
) -> None:
    event = es.NewEvent("training_progress", {"step": 1, "loss": 1.0})
    with pytest.raises(es.EventValidationError, match=message) as per_event:
        store.append("s", [event, es.NewEvent(event.type, event.payload,
                                              occurred_at=occurred_at)])  # type: ignore[arg-type]
    assert "events[1].occurred_at" in str(per_event.value)
    with pytest.raises(es.EventValidationError, match=message):
        store.append("s", [event], occurred_at=occurred_at)  # type: ignore[arg-type]
    with pytest.raises(es.EventValidationError, match=message):
        store.append("s", [es.NewEvent.of(deployed("m1", 1),
                                          occurred_at=occurred_at)])  # type: ignore[arg-type]
    assert store.head_position() == 0


def test_the_earliest_and_latest_times_are_accepted(store: es.EventStore) -> None:
    first, last = utc(1, 1, 1), datetime.max.replace(tzinfo=UTC)
    recorded = store.append("s", [
        es.NewEvent("training_progress", {"step": 1, "loss": 1.0}, occurred_at=first),
        es.NewEvent("training_progress", {"step": 2, "loss": 1.0}, occurred_at=last),
    ])
    assert [e.occurred_at for e in store.read_all()] == [first, last] == [
        e.occurred_at for e in recorded
    ]
    assert store.verify().ok


# -- as of a business time, known at a record time ----------------------------------------------
def test_a_backfilled_deployment_is_seen_as_of_when_it_happened(make_store: MakeStore) -> None:
    """The docs/temporal.md story: a 2024-01-01 deployment recorded only on 2024-09-01."""
    clock = Clock(utc(2024, 9, 1))
    store = make_store(clock=clock)
    store.append("model-m1", [es.NewEvent.of(deployed("m1", 1), occurred_at=utc(2024, 1, 1))])
    served = deployed_model_at(store, "wine-clf", utc(2024, 6, 1))
    assert served is not None and served["model_id"] == "m1"
    assert served["deployed_at"].startswith("2024-01-01")
    assert deployed_model_at(store, "wine-clf", utc(2023, 12, 31)) is None
    # Bitemporal: on 2024-08-01 the log did not know yet; on 2024-10-01 it did.
    assert deployed_model_at(store, "wine-clf", utc(2024, 6, 1), known_at=utc(2024, 8, 1)) is None
    known = deployed_model_at(store, "wine-clf", utc(2024, 6, 1), known_at=utc(2024, 10, 1))
    assert known is not None and known["model_id"] == "m1"
    # read_all(until=...) stays record time.
    assert list(store.read_all(until=utc(2024, 6, 1))) == []


def test_as_of_applies_events_in_business_time_order(make_store: MakeStore) -> None:
    """m2 was deployed live in July; m1's January deployment is recorded later. As of
    December m2 serves: m1 is applied first, as it happened, not last, as it was recorded."""
    clock = Clock(utc(2024, 7, 1))
    store = make_store(clock=clock)
    store.append("model-m2", [deployed("m2", 2)])
    clock.now = utc(2024, 9, 1)
    store.append("model-m1", [es.NewEvent.of(deployed("m1", 1), occurred_at=utc(2024, 1, 1))])
    served = deployed_model_at(store, "wine-clf", utc(2024, 12, 1))
    assert served is not None and served["model_id"] == "m2"
    served = deployed_model_at(store, "wine-clf", utc(2024, 3, 1))
    assert served is not None and served["model_id"] == "m1"
    with as_of(store, "deployments", utc(2024, 12, 1)) as snapshot:
        rows = snapshot.query("SELECT model_id, retired_at FROM deployments ORDER BY 1")
        assert snapshot.position == store.head_position()
    assert rows == [
        {"model_id": "m1", "retired_at": utc(2024, 7, 1).isoformat(timespec="microseconds")},
        {"model_id": "m2", "retired_at": None},
    ]


def test_a_backfill_never_changes_what_serves_now(make_store: MakeStore) -> None:
    """The live deployments read model (applied in record order) replaces by business time
    too: m1's January deployment, recorded after m2's July one, does not displace m2."""
    clock = Clock(utc(2024, 7, 1))
    store = make_store(clock=clock)
    store.append("model-m2", [deployed("m2", 2)])
    first = es_serving.current_deployment(store, model_name="wine-clf")
    assert first is not None and first.model_id == "m2"
    clock.now = utc(2024, 9, 1)
    store.append("model-m1", [es.NewEvent.of(deployed("m1", 1), occurred_at=utc(2024, 1, 1))])
    serving = es_serving.current_deployment(store, model_name="wine-clf")
    assert serving is not None and serving.model_id == "m2"
    history = {row["model_id"]: row for row in list_deployments(store)}
    assert history["m1"]["retired_at"] == iso(utc(2024, 7, 1))
    assert history["m1"]["replaced_by_model_id"] == "m2"
    assert history["m2"]["retired_at"] is None


def test_read_as_of_is_bitemporal_and_in_business_time_order(make_store: MakeStore) -> None:
    clock = Clock(utc(2024, 1, 10))
    store = make_store(clock=clock)

    def progress(step: int, **options: datetime) -> es.NewEvent:
        return es.NewEvent("training_progress", {"step": step, "loss": 1.0}, **options)

    store.append("a", [progress(1)])  # occurred = recorded = Jan 10
    clock.now = utc(2024, 2, 10)
    store.append("a", [progress(2, occurred_at=utc(2024, 1, 5))])  # a late report
    store.append("b", [progress(3, occurred_at=utc(2024, 12, 1))])  # planned, in the future
    store.append("b", [progress(4)])  # Feb 10
    store.append("c", [deployed("m1", 1)], occurred_at=utc(2024, 1, 1))

    def steps(at: datetime, **options: datetime) -> list[object]:
        return [e.payload.get("step", e.event_type)
                for e in store.read_as_of(at, **options)]  # type: ignore[arg-type]

    assert steps(utc(2024, 3, 1)) == ["model_deployed", 2, 1, 4]
    assert steps(utc(2024, 1, 31)) == ["model_deployed", 2, 1]
    assert steps(utc(2024, 3, 1), known_at=utc(2024, 1, 31)) == [1]
    assert steps(utc(2025, 1, 1)) == ["model_deployed", 2, 1, 4, 3]
    assert steps(utc(2024, 1, 4)) == ["model_deployed"]
    typed = store.read_as_of(utc(2025, 1, 1), event_types=["training_progress"])
    assert [e.payload["step"] for e in typed] == [2, 1, 4, 3]
    with pytest.raises(es.EventValidationError, match="known_at"):
        store.read_as_of(utc(2024, 1, 1), known_at=datetime(2024, 1, 1))
    with pytest.raises(es.EventValidationError, match="as-of time"):
        store.read_as_of("2024-01-01")  # type: ignore[arg-type]
    with pytest.raises(es.EventValidationError, match="not a position"):
        as_of(store, "deployments", 3, known_at=utc(2024, 1, 1))


def test_cli_known_at(make_store: MakeStore, store_url: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(clock=Clock(utc(2024, 9, 1)))
    assert main(["append", store_url, "model-m1", "--type", "model_deployed", "--payload",
                 '{"model_id": "m1", "model_name": "wine-clf", "version": 1}',
                 "--occurred-at", "2024-01-01T00:00:00Z"]) == 0
    capsys.readouterr()
    assert main(["deployments", store_url, "--as-of", "2024-06-01T00:00:00Z", "--json"]) == 0
    assert '"m1"' in capsys.readouterr().out
    assert main(["deployments", store_url, "--as-of", "2024-06-01T00:00:00Z",
                 "--known-at", "2024-08-01T00:00:00Z", "--json"]) == 0
    assert '"m1"' not in capsys.readouterr().out
    assert main(["deployments", store_url, "--known-at", "2024-08-01T00:00:00Z"]) == 2
    assert "--known-at goes with --as-of TIME" in capsys.readouterr().err
    store.close()


# -- the store clock ---------------------------------------------------------------------------
def progress(step: int) -> es.NewEvent:
    return es.NewEvent("training_progress", {"step": step, "loss": 1.0})


def test_a_clock_going_backwards_is_clamped(make_store: MakeStore) -> None:
    """Both backends: a writer never records a time before one it recorded, nor before its
    stream's head, however the head is found (a new stream, a version the writer appended
    itself, one it did not, the latest)."""
    noon = utc(2025, 6, 1, 12)
    clock = Clock(noon)
    store = make_store(clock=clock)
    first = store.append("s", [progress(1)])
    clock.now = utc(2025, 6, 1, 11)  # an hour back (an NTP step, an injected clock)
    same_stream = store.append("s", [progress(2)], expected_version=1)  # known head
    other_stream = store.append("t", [progress(1)])  # latest (none)
    new_stream = store.append("u", [progress(1)], expected_version=0)
    # Another writer (another process) with a slower clock, on the streams it appends to.
    other = make_store(clock=Clock(utc(2020, 1, 1)))
    at_version = other.append("s", [progress(3), progress(4)], expected_version=2)
    latest = other.append("t", [progress(2)])
    known = other.append("s", [progress(5)], expected_version=4)
    behind = first + same_stream + other_stream + new_stream + at_version + latest + known
    assert {e.created_at for e in behind} == {noon}
    assert all(e.occurred_at == noon for e in behind)
    clock.now = utc(2025, 6, 1, 13)
    (later,) = store.append("s", [progress(6)])
    assert later.created_at == utc(2025, 6, 1, 13)
    events = list(store.read_all())
    assert events == [*behind, later]
    for stream in "stu":
        times = [e.created_at for e in store.read_stream(stream)]
        assert times == sorted(times)
    assert store.verify().ok
    other.close()


def test_sqlite_never_records_a_time_before_the_latest_in_the_store(tmp_path: Any) -> None:
    """SQLite serializes appends, so the guarantee is store-wide: created_at never goes
    backwards in position order, whatever stream and writer (docs/temporal.md)."""
    url = f"sqlite:///{tmp_path}/events.db"
    ahead = es.connect(url, clock=Clock(utc(2025, 6, 1, 12)))
    ahead.append("a", [progress(1)])
    slow = es.connect(url, clock=Clock(utc(2020, 1, 1)))
    (recorded,) = slow.append("b", [progress(1)], expected_version=0)
    assert recorded.created_at == utc(2025, 6, 1, 12)
    times = [e.created_at for e in slow.read_all()]
    assert times == sorted(times)
    assert slow.verify().ok
    ahead.close()
    slow.close()


def test_an_import_never_records_a_time_before_the_latest(store_url: str) -> None:
    """An import batch is recorded like an append: when the importing store's clock is
    behind, at the latest time in the store (SQLite) or in the batch's streams
    (PostgreSQL)."""
    ahead = es.connect(store_url, clock=Clock(utc(2025, 6, 1, 12)))
    ahead.append("a", [progress(1)])
    slow = es.connect(store_url, clock=Clock(utc(2020, 1, 1)))
    slow.import_events([ImportRecord("line 1", 1, "a", "training_progress",
                                     {"step": 2, "loss": 0.5})])
    times = [e.created_at for e in slow.read_all()]
    assert times == [utc(2025, 6, 1, 12)] * 2
    assert slow.verify().ok
    ahead.close()
    slow.close()


def test_a_postgresql_append_behind_again_moves_past_the_latest(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append whose clock is behind is sent again at the latest recorded time; behind
    once more (faster writers kept recording), at that time plus the time that passed, so
    a slow clock among busy writers is not starved."""
    store = es.connect(pg_schema_url, clock=Clock(utc(2025, 1, 1)))
    recorder = store.recorder
    assert isinstance(recorder, PostgresRecorder)
    send, sent = recorder._sent, []

    def behind_twice(*args: Any) -> Any:
        sent.append(args[1]["now"])
        if len(sent) <= 2:
            time.sleep(0.002)
            raise ClockBehind(utc(2025, 6, 1))
        return send(*args)

    monkeypatch.setattr(recorder, "_sent", behind_twice)
    (event,) = store.append("s", [es.NewEvent("training_progress", {"step": 1, "loss": 1.0})])
    assert sent[:2] == [utc(2025, 1, 1), utc(2025, 6, 1)]
    assert utc(2025, 6, 1) < sent[2] < utc(2025, 6, 1) + timedelta(minutes=1)
    assert event.created_at == sent[2] == store.read_stream("s")[0].created_at
    assert store.verify().ok
    store.close()


def test_a_postgresql_append_behind_every_time_gives_up_having_written_nothing(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose clock runs ahead records a later time to the stream before every
    attempt of an append behind it: after a bound of attempts the append gives up with a
    StoreTimeoutError, having written nothing."""
    monkeypatch.setattr(postgres_write, "APPEND_ATTEMPTS", 2)
    store = es.connect(pg_schema_url, clock=Clock(utc(2025, 1, 1)))
    ahead_clock = Clock(utc(2030, 1, 1))
    ahead = es.connect(pg_schema_url, clock=ahead_clock)
    recorder = store.recorder
    assert isinstance(recorder, PostgresRecorder)
    send, ahead_ids = recorder._sent, []

    def overtaken(*args: Any) -> Any:
        ahead_clock.now += timedelta(days=1)
        step = {"step": len(ahead_ids), "loss": 1.0}
        ahead_ids.extend(e.id for e in ahead.append("s", [es.NewEvent("training_progress", step)]))
        return send(*args)

    monkeypatch.setattr(recorder, "_sent", overtaken)
    mine = es.NewEvent("training_progress", {"step": 9, "loss": 0.5}, id=new_event_id())
    with pytest.raises(es.StoreTimeoutError, match="later time") as raised:
        store.append("s", [mine])
    assert "gave up after 2 attempts" in str(raised.value)
    assert "nothing was written" in str(raised.value)
    assert len(ahead_ids) == 2
    assert [e.id for e in store.read_stream("s")] == ahead_ids
    assert store.get_event(mine.id) is None
    assert store.verify().ok
    ahead.close()
    store.close()


# -- the v6 migration --------------------------------------------------------------------------
def _back_to_v5(store_url: str) -> None:
    """Put the database back into its schema v5 shape (no occurred_at), as the owner. (The
    migrations from v4, which also run v6's, are tested in test_sqlite_schema.py and
    test_integrity.py.)"""
    if store_url.startswith("sqlite"):
        connection = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            sqlite_texts_inline(connection)
            connection.execute("DROP INDEX idx_event_store_occurred")
            connection.execute("ALTER TABLE event_store DROP COLUMN occurred_at")
            connection.execute("DELETE FROM mlevents_schema")
            connection.execute("INSERT INTO mlevents_schema VALUES (5, '2026-01-01', 'v5')")
        finally:
            connection.close()
        return
    schema = store_url.partition("?schema=")[2]
    with psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}") as pg:
        pg.execute("DROP INDEX idx_event_store_occurred")
        pg.execute("ALTER TABLE event_store DROP COLUMN occurred_at")
        pg.execute("DELETE FROM mlevents_schema")
        pg.execute("INSERT INTO mlevents_schema (version, description) VALUES (5, 'v5')")


def test_a_v5_store_migrates_keeps_its_events_and_verifies(
    make_store: MakeStore, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    store.append("s", [es.NewEvent("training_progress", {"step": n, "loss": 1.0})
                       for n in (1, 2)])
    store.append("model-m1", [deployed("m1", 1)])
    store.seal()
    before = list(store.read_all())
    store.close()
    _back_to_v5(store_url)
    with caplog.at_level(logging.WARNING, logger="event_sourcing.stores"):
        migrated = make_store()
    # The migration is announced (it may take minutes, with other connections waiting),
    # and its end; a connect to the migrated store says nothing.
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 2, said
    latest, head = latest_schema_version(store.dialect), before[-1].position
    assert f"from schema v5 to v{latest} (events up to position {head})" in said[0]
    assert said[1].startswith("migrated the event store")
    assert f" to schema v{latest} in " in said[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="event_sourcing.stores"):
        make_store().close()
    assert not caplog.records
    with migrated.transaction() as tx:
        found = tx.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0]
        assert found == latest_schema_version(migrated.dialect)
    assert list(migrated.read_all()) == before
    report = migrated.verify()
    assert report.ok, report.problems
    assert report.events == len(before)
    migrated.append("s", [es.NewEvent("training_progress", {"step": 3, "loss": 1.0},
                                      occurred_at=utc(2024, 1, 1))])
    assert migrated.read_stream("s")[-1].occurred_at == utc(2024, 1, 1)
    assert [e.payload["step"] for e in migrated.read_as_of(utc(2024, 1, 2))] == [3]
    assert migrated.verify().ok
