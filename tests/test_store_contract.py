"""The event-store contract, run against every backend (SQLite file and real PostgreSQL)."""

from __future__ import annotations

import gc
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import psycopg
import pytest
from conftest import latest_schema_version, sqlite_texts_inline

import event_sourcing as es
from event_sourcing.catalog import TrainingProgress, TrainingStarted
from event_sourcing.events import new_event_id

SHA = "a" * 64


class Clock:
    """A settable clock: tests choose when events happen."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def ev(kind: str = "thing_happened", **payload: Any) -> es.NewEvent:
    return es.NewEvent(kind, payload or {"n": 1})


@pytest.fixture
def loose(make_store: Callable[..., es.EventStore]) -> es.EventStore:
    """A store that accepts unregistered event types."""
    return make_store(validate=False)


def raw_execute(store_url: str, statement: str) -> None:
    """Run SQL outside the library, as a person with a SQL shell would."""
    if store_url.startswith("sqlite"):
        connection = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            connection.execute(statement)
            connection.commit()
        finally:
            connection.close()
    else:
        base, _, schema = store_url.partition("?schema=")
        with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
            conn.execute(statement)  # type: ignore[arg-type]


# -- append and read ------------------------------------------------------------------------
def test_append_returns_recorded_events(loose: es.EventStore) -> None:
    recorded = loose.append(
        "run-1",
        [ev(step=1), ev(step=2)],
        stream_type="training_run",
        correlation_id="corr-1",
        causation_id="cause-1",
        metadata={"user": "ada"},
    )
    assert [e.version for e in recorded] == [1, 2]
    assert recorded[0].position < recorded[1].position
    first = recorded[0]
    assert first.stream_id == "run-1" and first.stream_type == "training_run"
    assert first.payload == {"step": 1} and first.metadata == {"user": "ada"}
    assert first.correlation_id == "corr-1" and first.causation_id == "cause-1"
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert uuid.UUID(first.id)
    assert loose.read_stream("run-1") == recorded
    assert list(loose.read_all()) == recorded
    assert loose.get_event(first.id) == first
    assert loose.get_event(str(uuid.uuid4())) is None


def test_generated_ids_are_time_ordered_uuid7(loose: es.EventStore) -> None:
    first = loose.append("s", [ev()])[0].id
    later = loose.append("s", [ev()])[0].id
    assert uuid.UUID(first).version == 7
    assert first[:13] <= later[:13]  # the millisecond timestamp leads the id


def test_new_event_id_is_an_rfc_9562_uuid7() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(10_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # 48 bits of Unix milliseconds lead
    assert {text[19] for text in ids} == set("89ab")  # the variant digit carries 2 random bits
    assert len({text[15:18] for text in ids}) > 3000  # rand_a is random


def test_positions_are_global_and_versions_per_stream(loose: es.EventStore) -> None:
    loose.append("a", [ev(), ev()])
    loose.append("b", [ev()])
    loose.append("a", [ev()])
    events = list(loose.read_all())
    assert [(e.stream_id, e.version) for e in events] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))
    assert loose.head_position() == positions[-1]
    assert loose.stream_version("a") == 3
    assert loose.stream_version("b") == 1
    assert loose.stream_version("nope") == 0
    assert loose.counts_by_type() == {"thing_happened": 4}


def test_empty_store(loose: es.EventStore) -> None:
    assert loose.head_position() == 0
    assert list(loose.read_all()) == []
    assert loose.read_stream("x") == []
    assert loose.counts_by_type() == {}


def test_read_stream_range(loose: es.EventStore) -> None:
    loose.append("s", [ev(i=i) for i in range(1, 6)])
    middle = loose.read_stream("s", from_version=2, to_version=4)
    assert [e.payload["i"] for e in middle] == [2, 3, 4]
    assert [e.version for e in loose.read_stream("s", from_version=5)] == [5]


def test_read_all_filters(make_store: Callable[..., es.EventStore]) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock = Clock(t0)
    store = make_store(validate=False, clock=clock)
    store.append("s", [ev("a"), ev("b")])
    clock.now = t0 + timedelta(hours=1)
    store.append("s", [ev("a"), ev("c")])
    everything = list(store.read_all())
    assert [e.event_type for e in store.read_all(event_types={"a"})] == ["a", "a"]
    assert [e.event_type for e in store.read_all(event_types=["b", "c"])] == ["b", "c"]
    assert list(store.read_all(event_types=[])) == []
    assert [e.event_type for e in store.read_all(until=t0)] == ["a", "b"]
    assert len(list(store.read_all(until=t0 + timedelta(hours=1)))) == 4
    assert list(store.read_all(after=everything[1].position)) == everything[2:]
    assert list(store.read_all(limit=3)) == everything[:3]
    assert list(store.read_all(after=everything[-1].position)) == []
    assert everything[2].created_at == t0 + timedelta(hours=1)


def test_read_all_pages_through_large_logs(loose: es.EventStore) -> None:
    from event_sourcing.stores import store as store_module

    loose.append("big", [ev(i=i) for i in range(store_module.READ_PAGE_SIZE + 250)])
    seen = [e.payload["i"] for e in loose.read_all()]
    assert seen == list(range(store_module.READ_PAGE_SIZE + 250))
    assert len(list(loose.read_all(limit=store_module.READ_PAGE_SIZE + 1))) == (
        store_module.READ_PAGE_SIZE + 1
    )


def test_read_correlated(loose: es.EventStore) -> None:
    loose.append("x", [ev()], correlation_id="job-7")
    loose.append("y", [ev()], correlation_id="other")
    loose.append("z", [ev(), ev()], correlation_id="job-7")
    assert [(e.stream_id, e.version) for e in loose.read_correlated("job-7")] == [
        ("x", 1), ("z", 1), ("z", 2)
    ]


def test_metadata_per_event_overrides_batch(loose: es.EventStore) -> None:
    recorded = loose.append(
        "m",
        [es.NewEvent("t", {"a": 1}, metadata={"k": "event", "e": 1}), ev()],
        metadata={"k": "batch", "b": 2},
    )
    assert recorded[0].metadata == {"k": "event", "e": 1, "b": 2}
    assert recorded[1].metadata == {"k": "batch", "b": 2}


def test_reopen_keeps_events_and_schema_is_idempotent(
    make_store: Callable[..., es.EventStore],
) -> None:
    first = make_store(validate=False)
    first.append("s", [ev()])
    first.close()
    again = make_store(validate=False)
    assert again.stream_version("s") == 1
    again.append("s", [ev()])
    assert [e.version for e in again.read_all()] == [1, 2]


def _stream_columns(store: es.EventStore) -> set[str]:
    with store.transaction() as tx:
        if store.dialect == "sqlite":
            return {row[1] for row in tx.execute("PRAGMA table_info(streams)").fetchall()}
        rows = tx.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'streams'"
        ).fetchall()
        return {row[0] for row in rows}


def test_a_version_1_database_is_migrated_on_connect(
    make_store: Callable[..., es.EventStore],
) -> None:
    """Schema v1 kept each stream's version in a `streams` counter row (and, on PostgreSQL,
    appended through a mlevents_append function); connect lifts it to v2 in place."""
    old = make_store(validate=False)
    old.append("s", [ev(), ev()])
    with old.transaction() as tx:  # put the database back into its v1 shape
        tx.execute("ALTER TABLE streams ADD COLUMN version bigint NOT NULL DEFAULT 0")
        tx.execute("ALTER TABLE streams ADD COLUMN updated_at text")
        tx.execute("UPDATE streams SET version = 2, updated_at = 'then'")
        tx.execute("DELETE FROM mlevents_schema")
        tx.execute(
            "INSERT INTO mlevents_schema (version, applied_at, description) "
            "VALUES (1, '2026-01-01', 'v1')"
        )
        if old.dialect == "postgresql":
            tx.execute(
                "CREATE FUNCTION mlevents_append(jsonb) RETURNS integer LANGUAGE sql "
                "AS 'SELECT 1'"
            )
        else:  # SQLite v1 stored types and metadata as text in each row
            sqlite_texts_inline(tx)
    assert "version" in _stream_columns(old)
    old.close()

    migrated = make_store(validate=False)
    assert _stream_columns(migrated) == {"stream_id", "stream_type", "created_at"}
    with migrated.transaction() as tx:
        assert tx.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0] == (
            latest_schema_version(migrated.dialect))
        if migrated.dialect == "postgresql":
            found = tx.execute("SELECT to_regprocedure('mlevents_append(jsonb)')").fetchone()
            assert found[0] is None
    assert migrated.stream_version("s") == 2
    migrated.append("s", [ev()], expected_version=2)
    assert [e.version for e in migrated.read_all()] == [1, 2, 3]


def test_a_newer_schema_is_refused(make_store: Callable[..., es.EventStore]) -> None:
    store = make_store(validate=False)
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO mlevents_schema (version, applied_at, description) "
            "VALUES (99, '2030-01-01', 'from the future')"
        )
    with pytest.raises(es.SchemaVersionError, match="version 99, newer than this mlevents"):
        make_store(validate=False)


# -- optimistic concurrency and idempotency ------------------------------------------------
def test_expected_version(loose: es.EventStore) -> None:
    loose.append("s", [ev()], expected_version=0)
    loose.append("s", [ev()], expected_version=1)
    with pytest.raises(es.ConcurrencyError) as caught:
        loose.append("s", [ev(), ev()], expected_version=1)
    assert caught.value.expected == 1 and caught.value.actual == 2
    assert "version 2" in str(caught.value)
    with pytest.raises(es.ConcurrencyError):
        loose.append("s", [ev()], expected_version=0)
    with pytest.raises(es.ConcurrencyError):
        loose.append("new", [ev()], expected_version=3)
    assert loose.stream_version("s") == 2
    assert loose.stream_version("new") == 0
    assert len(list(loose.read_all())) == 2


def test_expecting_a_version_beyond_the_head_leaves_no_gap(loose: es.EventStore) -> None:
    loose.append("s", [ev(), ev()], stream_type="run")
    with pytest.raises(es.ConcurrencyError) as caught:
        loose.append("s", [ev()], expected_version=5)
    assert caught.value.actual == 2
    assert [e.version for e in loose.read_stream("s")] == [1, 2]


def test_a_writer_that_fell_behind_another_is_refused(
    make_store: Callable[..., es.EventStore],
) -> None:
    """A store that wrote a stream up to version 2 must not trust that memory once another
    store has moved the stream on; the stream keeps the type of its first append."""
    first, second = make_store(validate=False), make_store(validate=False)
    first.append("s", [ev(), ev()], expected_version=0, stream_type="run")
    second.append("s", [ev()], expected_version=2, stream_type="ignored")
    with pytest.raises(es.ConcurrencyError) as caught:
        first.append("s", [ev()], expected_version=2)
    assert caught.value.actual == 3
    [fourth] = first.append("s", [ev()], expected_version=3, stream_type="other")
    assert (fourth.version, fourth.stream_type) == (4, "run")
    assert [e.stream_type for e in second.read_stream("s")] == ["run"] * 4


@pytest.mark.parametrize("expected", [0, 2])
def test_racing_writers_exactly_one_wins(loose: es.EventStore, expected: int) -> None:
    if expected:
        loose.append("race", [ev(), ev()])
    writers = 6
    barrier = threading.Barrier(writers)
    outcomes: list[str] = []

    def write(n: int) -> None:
        barrier.wait()
        try:
            loose.append("race", [ev(writer=n), ev(writer=n)], expected_version=expected)
            outcomes.append("won")
        except es.ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * (writers - 1) + ["won"]
    events = loose.read_stream("race")
    assert [e.version for e in events] == list(range(1, expected + 3))
    assert len({e.payload.get("writer") for e in events[expected:]}) == 1


def test_retry_with_same_ids_is_idempotent(loose: es.EventStore) -> None:
    batch = [es.NewEvent("t", {"i": i}, id=str(uuid.uuid4())) for i in range(3)]
    first = loose.append("s", batch, expected_version=0)
    head = loose.head_position()
    # A retry after a lost reply: same ids, same content, even the same expected version.
    assert loose.append("s", batch, expected_version=0) == first
    assert loose.append("s", batch) == first
    assert loose.head_position() == head
    assert loose.stream_version("s") == 3


def test_reused_id_with_other_content_is_rejected(loose: es.EventStore) -> None:
    event_id = str(uuid.uuid4())
    loose.append("s", [es.NewEvent("t", {"i": 1}, id=event_id)])
    head = loose.head_position()
    with pytest.raises(es.DuplicateEventError, match="different content"):
        loose.append("s", [es.NewEvent("t", {"i": 2}, id=event_id)])
    with pytest.raises(es.DuplicateEventError, match="different content"):
        loose.append("other", [es.NewEvent("t", {"i": 1}, id=event_id)])
    with pytest.raises(es.DuplicateEventError, match="same batch"):
        loose.append("s", [es.NewEvent("t", {"i": 1}, id=event_id), ev()])
    assert loose.head_position() == head
    assert loose.stream_version("other") == 0


# -- immutability -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE event_store SET payload = '{\"hacked\": true}'",
        "UPDATE event_store SET event_type = 'rewritten'",
        "DELETE FROM event_store",
        "DELETE FROM event_store WHERE version = 1",
    ],
)
def test_history_cannot_be_rewritten_even_with_raw_sql(
    loose: es.EventStore, store_url: str, statement: str
) -> None:
    loose.append("s", [ev(), ev()])
    before = list(loose.read_all())
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        raw_execute(store_url, statement)
    assert list(loose.read_all()) == before


def test_truncate_is_refused_on_postgres(pg_schema_url: str) -> None:
    # SQLite has no TRUNCATE: its DELETE trigger (tested above) covers the same ground.
    with es.connect(pg_schema_url, validate=False) as pg:
        pg.append("s", [ev()])
        with pytest.raises(psycopg.Error, match="append-only"):
            raw_execute(pg_schema_url, "TRUNCATE event_store")
        assert pg.head_position() == 1


# -- bad input: a specific error and nothing written ------------------------------------------
class _Unserialisable:
    pass


BAD_APPENDS: ClassVar[list[Any]] = [
    ({"stream_id": ""}, es.EventValidationError, "stream_id"),
    ({"stream_id": "x" * 256}, es.EventValidationError, "at most 255"),
    ({"stream_id": 42}, es.EventValidationError, "stream_id"),
    ({"expected_version": -1}, es.EventValidationError, "expected_version"),
    ({"expected_version": True}, es.EventValidationError, "expected_version"),
    ({"events": [es.NewEvent("t", {"tags": {"a", "b"}})]}, es.EventValidationError, "sets"),
    ({"events": [es.NewEvent("t", {"blob": b"raw"})]}, es.EventValidationError, "bytes"),
    ({"events": [es.NewEvent("t", {"loss": math.nan})]}, es.EventValidationError, "NaN"),
    ({"events": [es.NewEvent("t", {"loss": math.inf})]}, es.EventValidationError, "NaN"),
    ({"events": [es.NewEvent("t", {"x": _Unserialisable()})]}, es.EventValidationError, "JSON"),
    ({"events": [es.NewEvent("t", {"x": "y" * (1024 * 1024)})]}, es.PayloadTooLargeError,
     "artifact"),
    ({"metadata": ["not", "a", "mapping"]}, es.EventValidationError, "metadata must be a mapping"),
    ({"events": [es.NewEvent("t", {}, metadata=[1])]}, es.EventValidationError, "mapping"),
    ({"events": [es.NewEvent("t", [1, 2])]}, es.EventValidationError, "payload must be a mapping"),
    ({"events": [es.NewEvent("", {})]}, es.EventValidationError, "type"),
    ({"events": [es.NewEvent("t", {}, id="not-a-uuid")]}, es.EventValidationError, "UUID"),
    ({"events": []}, es.EventValidationError, "at least one event"),
    ({"events": es.NewEvent("t", {})}, es.EventValidationError, "sequence"),
    ({"events": ["nope"]}, es.EventValidationError, "NewEvent"),
]


@pytest.mark.parametrize(("override", "error", "match"), BAD_APPENDS)
def test_bad_input_is_rejected_and_writes_nothing(
    loose: es.EventStore, override: dict[str, Any], error: type[Exception], match: str
) -> None:
    loose.append("existing", [ev()])
    arguments: dict[str, Any] = {"stream_id": "s", "events": [ev(), ev()]}
    arguments.update(override)
    # A bad event after a good one: the good one must not be written either.
    if "events" in override and isinstance(override["events"], list) and override["events"]:
        arguments["events"] = [ev(), *override["events"]]
    with pytest.raises(error, match=match):
        loose.append(**arguments)
    assert loose.head_position() == 1
    assert loose.stream_version("s") == 0


def test_payload_limit_is_configurable(make_store: Callable[..., es.EventStore]) -> None:
    small = make_store(validate=False, max_payload_bytes=100)
    small.append("s", [ev(x="y" * 50)])
    with pytest.raises(es.PayloadTooLargeError, match="limit of 100 bytes"):
        small.append("s", [ev(x="y" * 200)])
    assert small.stream_version("s") == 1


def test_bad_read_arguments(loose: es.EventStore) -> None:
    with pytest.raises(es.EventValidationError):
        list(loose.read_all(after=-1))
    with pytest.raises(es.EventValidationError, match="timezone"):
        list(loose.read_all(until=datetime(2026, 1, 1)))
    with pytest.raises(es.EventValidationError):
        loose.read_stream("")


# -- typed events and validation ---------------------------------------------------------------
def started(**overrides: Any) -> dict[str, Any]:
    payload = {"config": {"model": "logreg"}, "dataset_id": "wine", "dataset_version": SHA}
    payload.update(overrides)
    return payload


def test_typed_events_are_validated_and_normalized(store: es.EventStore) -> None:
    typed = TrainingStarted(config={"model": "rf"}, dataset_id="wine", dataset_version=SHA, seed=7)
    recorded = store.append("run", [typed, TrainingProgress(step=1, loss=0.5)])
    assert recorded[0].event_type == es.EventTypes.TRAINING_STARTED
    assert recorded[0].payload["seed"] == 7
    assert recorded[1].payload["loss"] == 0.5
    assert store.registry.parse(recorded[0]) == typed
    by_name = store.append("run", [es.NewEvent("training_progress", {"step": 2})])
    assert by_name[0].payload["step"] == 2 and by_name[0].schema_version == 1


def test_invalid_typed_payload_names_the_field_and_writes_nothing(store: es.EventStore) -> None:
    with pytest.raises(es.EventValidationError, match="dataset_version"):
        store.append(
            "run",
            [es.NewEvent("training_progress", {"step": 1}),
             es.NewEvent("training_started", started(dataset_version="short"))],
        )
    with pytest.raises(es.EventValidationError, match="step"):
        store.append("run", [es.NewEvent("training_progress", {"step": -3})])
    assert store.head_position() == 0


def test_unknown_types_rejected_unless_registered_or_relaxed(
    store: es.EventStore, make_store: Callable[..., es.EventStore]
) -> None:
    with pytest.raises(es.UnknownEventTypeError, match="validate=False"):
        store.append("s", [es.NewEvent("drift_detected", {"psi": 0.3})])
    assert store.head_position() == 0
    with pytest.raises(es.UnknownEventTypeError, match="did you mean 'training_progress'"):
        store.append("s", [es.NewEvent("training_progres", {"step": 1})])
    assert store.head_position() == 0

    registry = es.default_registry.copy()

    @registry.register
    class DriftDetected(es.DomainEvent):
        event_type = "drift_detected"
        psi: float

    custom = make_store(registry=registry)
    recorded = custom.append("s", [DriftDetected(psi=0.3)])
    assert recorded[0].payload == {"psi": 0.3}
    with pytest.raises(es.EventValidationError, match="psi"):
        custom.append("s", [es.NewEvent("drift_detected", {"psi": "high"})])
    relaxed = make_store(validate=False)
    assert relaxed.append("t", [es.NewEvent("anything", {"ok": True})])[0].event_type == "anything"


def test_events_written_as_v1_are_read_as_v2(make_store: Callable[..., es.EventStore]) -> None:
    old = es.EventRegistry()

    @old.register
    class ModelScoredV1(es.DomainEvent):
        event_type = "model_scored"
        schema_version = 1
        acc: float

    make_store(registry=old).append("m", [ModelScoredV1(acc=0.9)])

    new = es.EventRegistry()

    @new.register
    class ModelScored(es.DomainEvent):
        event_type = "model_scored"
        schema_version = 2
        metrics: dict[str, float]

    @new.upcaster("model_scored", 1)
    def lift(payload: dict[str, Any]) -> dict[str, Any]:
        return {"metrics": {"accuracy": payload.pop("acc")}}

    reader = make_store(registry=new)
    [event] = reader.read_stream("m")
    assert event.payload == {"metrics": {"accuracy": 0.9}}
    assert event.schema_version == 2 and event.recorded_schema_version == 1
    assert list(reader.read_all()) == [event]
    assert new.parse(event) == ModelScored(metrics={"accuracy": 0.9})
    # The stored row still holds v1: old readers see it as written.
    assert make_store(registry=old).read_stream("m")[0].payload == {"acc": 0.9}
    # Newly written events carry the new version.
    assert reader.append("m", [ModelScored(metrics={"f1": 0.5})])[0].schema_version == 2
    with pytest.raises(es.SchemaVersionError, match="schema version 2"):
        list(make_store(registry=old).read_all())


# -- opening stores -----------------------------------------------------------------------
def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(es.ConfigurationError, match="unknown store URL scheme 'mysql'"):
        es.connect("mysql://root:hunter2@localhost/db")


def test_unknown_scheme_message_hides_password() -> None:
    with pytest.raises(es.ConfigurationError) as caught:
        es.connect("mysql://root:hunter2@localhost/db")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_not_a_url() -> None:
    with pytest.raises(es.ConfigurationError, match="not a URL"):
        es.connect("events.db")


def test_unreachable_postgres_names_url_without_password() -> None:
    with pytest.raises(es.StoreUnavailableError) as caught:
        es.connect("postgresql://mlevents:s3cret@127.0.0.1:1/nowhere", connect_timeout=1)
    message = str(caught.value)
    assert "s3cret" not in message
    assert "postgresql://mlevents:***@127.0.0.1:1/nowhere" in message


def test_unopenable_sqlite_path(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(es.EventStoreError):
        es.connect(f"sqlite:///{blocker}/sub/events.db")


def test_memory_store_works_across_threads() -> None:
    with es.connect("sqlite:///:memory:", validate=False) as memory:
        threads = [
            threading.Thread(target=memory.append, args=(f"s{n}", [ev()])) for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert memory.head_position() == 4


def test_read_model_transaction_commits_or_rolls_back(loose: es.EventStore) -> None:
    with loose.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS notes (k TEXT PRIMARY KEY, v INTEGER)")
        tx.execute("INSERT INTO notes VALUES (?, ?)", ("a", 1))
    with pytest.raises(RuntimeError), loose.transaction() as tx:
        tx.execute("INSERT INTO notes VALUES (?, ?)", ("b", 2))
        raise RuntimeError("handler failed")
    with loose.transaction() as tx:
        assert tx.execute("SELECT k, v FROM notes ORDER BY k").fetchall() == [("a", 1)]


# -- PostgreSQL connections -----------------------------------------------------------------
def _backend_alive(url: str, pid: int) -> bool:
    with psycopg.connect(url.partition("?schema=")[0], autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return bool(row.fetchone()[0])


def test_append_reconnects_after_the_server_drops_its_connection(pg_schema_url: str) -> None:
    store = es.connect(pg_schema_url, validate=False)
    store.append("s", [ev()])
    pid = store.recorder._append_cursor().connection.info.backend_pid
    with psycopg.connect(pg_schema_url.partition("?schema=")[0], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    recorded = store.append("s", [ev()], expected_version=1)
    assert recorded[0].version == 2
    assert [e.version for e in store.read_all()] == [1, 2]
    store.close()


def test_a_finished_threads_append_connection_is_closed(pg_schema_url: str) -> None:
    store = es.connect(pg_schema_url, validate=False)
    pids: list[int] = []

    def append_once() -> None:
        store.append("s", [ev()])
        pids.append(store.recorder._append_cursor().connection.info.backend_pid)

    worker = threading.Thread(target=append_once)
    worker.start()
    worker.join()
    gc.collect()
    deadline = time.monotonic() + 10
    while _backend_alive(pg_schema_url, pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _backend_alive(pg_schema_url, pids[0]), "the ended thread's connection is still open"
    assert store.stream_version("s") == 1
    store.close()
