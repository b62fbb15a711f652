"""The partitioned PostgreSQL event_store (docs/partitions.md): ids and stream versions
unique across partitions, appends racing at a partition boundary, the no-skip order and the
append-only triggers on tiny partitions, partitions kept ahead, and the move of a schema v6
store into partitions. (SQLite's event_store is not partitioned.)"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PG_URL, latest_schema_version
from psycopg import sql
from test_import import check_log, progress_lines, write_lines

import event_sourcing as es
from event_sourcing.cli import main
from event_sourcing.stores.import_readers import read_records

Raw = Callable[..., list[tuple[Any, ...]]]
SIZE = 4  # positions per partition: every few appends cross a boundary


def ev(n: int = 1, event_id: str | None = None) -> es.NewEvent:
    return es.NewEvent("thing_happened", {"n": n}, id=event_id or str(uuid.uuid4()))


def _schema(url: str) -> str:
    return url.partition("?schema=")[2]


@pytest.fixture
def tiny(pg_schema_url: str) -> Iterator[es.EventStore]:
    with es.connect(pg_schema_url, partition_size=SIZE, validate=False) as store:
        yield store


@pytest.fixture
def owner(pg_schema_url: str) -> Iterator[Raw]:
    """Raw SQL as the store's owner, one autocommit statement at a time."""
    with psycopg.connect(
        PG_URL, autocommit=True, options=f"-c search_path={_schema(pg_schema_url)}"
    ) as connection:

        def run(statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

        yield run


def _partitions(run: Raw) -> list[tuple[str, int | None, int]]:
    return [tuple(row) for row in run("SELECT * FROM mlevents_partitions()")]  # type: ignore[misc]


def _empty_ahead(run: Raw) -> int:
    head = run("SELECT mlevents_last_position()")[0][0]
    return sum(1 for _, lower, _ in _partitions(run) if lower is not None and lower > head)


# -- the shape --------------------------------------------------------------------------------
def test_event_store_is_partitioned_with_partitions_kept_ahead(
    tiny: es.EventStore, owner: Raw
) -> None:
    assert owner("SELECT relkind FROM pg_class WHERE oid = 'event_store'::regclass") == [("p",)]
    assert owner("SELECT size FROM mlevents_partitioning") == [(SIZE,)]
    assert _empty_ahead(owner) >= 2
    for n in range(1, 6 * SIZE):
        tiny.append(f"s{n % 3}", [ev(n)])
        assert _empty_ahead(owner) >= 1  # the append that reaches the last but one adds more
    assert _empty_ahead(owner) >= 2
    partitions = _partitions(owner)
    assert len(partitions) >= 8
    assert all(a[2] == b[1] for a, b in itertools.pairwise(partitions))  # no hole
    # no DEFAULT partition, and no per-partition index on id or (stream, version): the key
    # table holds them for every partition
    assert owner(
        "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'event_store'::regclass "
        "AND partdefid <> 0"
    ) == [(0,)]
    indexed = {row[0] for row in owner(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename LIKE 'event_store%%'"
    )}
    assert not [d for d in indexed if "(id)" in d or "(stream_id, version)" in d]
    assert tiny.verify().ok


@pytest.mark.parametrize("size", [0, -5, 2.5, "10", True])
def test_a_partition_size_must_be_a_positive_count(pg_schema_url: str, size: Any) -> None:
    with pytest.raises(es.ConfigurationError, match="partition_size"):
        es.connect(pg_schema_url, partition_size=size)


def test_an_append_past_the_last_partition_adds_partitions_and_goes_on(
    tiny: es.EventStore, owner: Raw
) -> None:
    tiny.append("s", [ev(1)])
    for name, lower, _ in _partitions(owner):
        if lower is not None and lower > 0:
            owner(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)).as_string(None))
    assert _empty_ahead(owner) == 0
    batch = [ev(n) for n in range(2, 3 * SIZE)]  # more than what is left of the partition
    appended = tiny.append("s", batch, expected_version=1)
    assert [e.version for e in appended] == list(range(2, 3 * SIZE))
    assert _empty_ahead(owner) >= 2
    assert [e.version for e in tiny.read_stream("s")] == list(range(1, 3 * SIZE))
    assert tiny.verify().ok


# -- uniqueness across partitions -------------------------------------------------------------
def test_ids_are_unique_across_partitions(tiny: es.EventStore, owner: Raw) -> None:
    old = [ev(1), ev(2)]
    first = tiny.append("s", old, expected_version=0)
    for n in range(3 * SIZE):  # the log moves on, several partitions later
        tiny.append("filler", [ev(n)])
    assert first[0].position < SIZE < tiny.head_position() - SIZE
    head = tiny.head_position()
    # The old batch again (a retry after a lost reply): the recorded events, nothing new.
    assert tiny.append("s", old, expected_version=0) == first
    assert tiny.append("s", old) == first
    # The old id with other content, in another stream, or beside a new event: refused.
    with pytest.raises(es.DuplicateEventError, match="different content"):
        tiny.append("s", [es.NewEvent("thing_happened", {"n": 9}, id=old[0].id)])
    with pytest.raises(es.DuplicateEventError, match="different content"):
        tiny.append("other", [old[0]])
    with pytest.raises(es.DuplicateEventError, match="same batch"):
        tiny.append("s", [old[1], ev(3)])
    assert tiny.head_position() == head and tiny.stream_version("other") == 0
    # Raw SQL as the owner, straight into the newest partition: the key table refuses it.
    newest = _partitions(owner)[-1][0]
    with pytest.raises(psycopg.errors.UniqueViolation, match="event_keys_pkey"):
        owner(
            f"INSERT INTO {newest} (id, stream_id, stream_type, version, event_type, "
            "schema_version, payload, metadata, created_at) "
            "VALUES (%s, 'x', 'default', 1, 't', 1, '{}', '{}', now())",
            (old[0].id,),
        )
    assert [e.id for e in tiny.recorder.read_ids([old[0].id])] == [old[0].id]


def test_a_stream_version_is_taken_once_across_a_boundary(
    tiny: es.EventStore, owner: Raw
) -> None:
    tiny.append("s", [ev(1)])
    for n in range(2 * SIZE):
        tiny.append("filler", [ev(n)])
    with pytest.raises(es.ConcurrencyError):
        tiny.append("s", [ev(2)], expected_version=0)
    (second,) = tiny.append("s", [ev(2)], expected_version=1)
    assert second.position > 2 * SIZE  # a partition of its own, far from version 1
    with pytest.raises(psycopg.errors.UniqueViolation, match="event_keys_stream_id_version"):
        owner(
            "INSERT INTO event_store (id, stream_id, stream_type, version, event_type, "
            "schema_version, payload, metadata, created_at) "
            "VALUES (%s, 's', 'default', 2, 't', 1, '{}', '{}', now())",
            (str(uuid.uuid4()),),
        )
    assert [e.version for e in tiny.read_stream("s")] == [1, 2]
    assert tiny.stream_version("s") == 2


def test_racing_appends_at_partition_boundaries_take_each_version_once(
    pg_schema_url: str,
) -> None:
    """Writers race for each next version of one stream while their positions straddle a
    boundary (two positions per partition): exactly one wins every round."""
    writers, rounds = 4, 12
    stores = [es.connect(pg_schema_url, partition_size=2, validate=False)
              for _ in range(writers)]
    try:
        outcomes: list[list[str]] = [[] for _ in range(rounds)]
        barrier = threading.Barrier(writers)

        def write(store: es.EventStore, writer: int) -> None:
            for version in range(rounds):
                barrier.wait()
                try:
                    store.append("race", [es.NewEvent("thing_happened", {"writer": writer})],
                                 expected_version=version)
                    outcomes[version].append("won")
                except es.ConcurrencyError:
                    outcomes[version].append("conflict")
                store.append(f"own-{writer}", [ev(version)])  # move the log on meanwhile

        threads = [threading.Thread(target=write, args=(store, n))
                   for n, store in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(sorted(o) == ["conflict"] * (writers - 1) + ["won"] for o in outcomes)
        store = stores[0]
        assert [e.version for e in store.read_stream("race")] == list(range(1, rounds + 1))
        with psycopg.connect(PG_URL, options=f"-c search_path={_schema(pg_schema_url)}") as c:
            (parts,) = c.execute("SELECT count(*) FROM mlevents_partitions()").fetchone() or (0,)
        assert parts > rounds  # the appends crossed many boundaries
        assert store.verify().ok
    finally:
        for store in stores:
            store.close()


# -- the no-skip order and the append-only triggers on partitions ------------------------------
def test_imports_and_appends_keep_the_no_skip_order_across_partitions(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """A tailing reader while an import and an appender run, partitions of 50 positions:
    every event once, positions increasing, partitions added under way."""
    count = 1200
    path = write_lines(tmp_path / "h.jsonl", progress_lines(count, streams=4))
    importer = es.connect(pg_schema_url, partition_size=50)
    appender, reader = es.connect(pg_schema_url), es.connect(pg_schema_url)
    stop = threading.Event()
    appended: list[str] = []
    errors: list[BaseException] = []

    def append_loop() -> None:
        try:
            for n in itertools.count():
                if stop.is_set():
                    return
                [event] = appender.append(
                    ("other", "run-1")[n % 2], [es.NewEvent("training_progress", {"step": n})]
                )
                appended.append(event.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def run_import() -> None:
        try:
            importer.import_events(read_records(path), batch_size=120)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append_loop), threading.Thread(target=run_import)]
    for thread in threads:
        thread.start()
    seen: list[es.RecordedEvent] = []
    cursor = 0
    try:
        while threads[1].is_alive():
            for event in reader.read_all(after=cursor):
                assert event.position > cursor
                seen.append(event)
                cursor = event.position
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for store in (importer, appender):
        store.close()
    assert not errors, errors
    seen.extend(reader.read_all(after=cursor))
    assert [event.id for event in reader.read_all()] == [event.id for event in seen]
    assert len(seen) == count + len(appended)
    check_log(reader, len(seen))
    with reader.transaction() as tx:
        parts = tx.execute("SELECT count(*) FROM mlevents_partitions()").fetchone()[0]
    assert parts >= len(seen) // 50
    reader.close()


@pytest.mark.parametrize("statement", [
    "UPDATE {part} SET payload = '{{\"hacked\": 1}}'",
    "DELETE FROM {part}",
    "TRUNCATE {part}",
    "INSERT INTO {part} (position, id, stream_id, stream_type, version, event_type, "
    "schema_version, payload, metadata, created_at) VALUES (1, '{new}', 'x', 'default', 1, "
    "'t', 1, '{{}}', '{{}}', now())",
    # a forged note of the last position the default handed out
    "SELECT set_config('mlevents.position', '2', false); INSERT INTO event_store (position, "
    "id, stream_id, stream_type, version, event_type, schema_version, payload, metadata, "
    "created_at) VALUES (2, '{new}', 'x', 'default', 1, 't', 1, '{{}}', '{{}}', now())",
])
def test_a_partition_is_append_only_for_its_owner_too(
    tiny: es.EventStore, owner: Raw, statement: str
) -> None:
    tiny.append("s", [ev(1), ev(2)])
    before = list(tiny.read_all())
    part = _partitions(owner)[0][0]
    with pytest.raises(psycopg.Error, match=r"append-only|set by the store|currval"):
        for one in statement.format(part=part, new=uuid.uuid4()).split("; "):
            owner(one)
    assert list(tiny.read_all()) == before
    assert tiny.verify().ok


def test_a_partition_s_missing_trigger_is_found_and_restored(
    tiny: es.EventStore, owner: Raw
) -> None:
    tiny.append("s", [ev(1)])
    part = _partitions(owner)[1][0]
    owner(f"DROP TRIGGER event_store_no_delete ON {part}")
    owner(f"ALTER TABLE {part} DISABLE TRIGGER event_store_assign_position")
    with pytest.warns(Warning, match=f"event_store_no_delete on {part} was missing"):
        report = tiny.verify()
    assert report.ok or report.problems
    assert tiny.recorder.restore_triggers() == ([], None)  # restored by verify
    with pytest.raises(psycopg.Error, match="append-only"):
        owner(f"DELETE FROM {part}")


def test_an_appender_cannot_reach_a_partition(
    pg_schema_url: str, tiny: es.EventStore, owner: Raw
) -> None:
    tiny.append("s", [ev(1)])
    role = f"mlev_{uuid.uuid4().hex[:12]}"
    owner(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))
    try:
        assert main(["grant", role, "--appender", pg_schema_url, "--apply"]) == 0
        host = PG_URL.removeprefix("postgresql://").partition("@")[2]
        url = f"postgresql://{role}@{host}?schema={_schema(pg_schema_url)}"
        with es.connect(url, validate=False) as store:
            for n in range(2, 4 * SIZE):  # the appender adds partitions ahead as it goes
                store.append("s", [ev(n)], expected_version=n - 1)
            assert _empty_ahead(owner) >= 2
            part = _partitions(owner)[0][0]
            with psycopg.connect(url.partition("?")[0], autocommit=True,
                                 options=f"-c search_path={_schema(pg_schema_url)}") as conn:
                for attack in (f"SELECT * FROM {part}", f"DELETE FROM {part}",
                               "DELETE FROM event_keys", "SELECT mlevents_protect_partition("
                               f"'{part}')"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(attack)
        assert tiny.verify().ok
    finally:
        owner(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)).as_string(None))
        owner(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string(None))


# -- the v6 -> v7 migration -------------------------------------------------------------------
V6_SHAPE = """
CREATE TABLE event_store_plain (LIKE event_store INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO event_store_plain SELECT * FROM event_store;
DROP TABLE event_store, event_keys, mlevents_partitioning;
DROP FUNCTION mlevents_add_partitions(bigint), mlevents_partitions(),
    mlevents_protect_partition(text);
ALTER TABLE event_store_plain RENAME TO event_store;
ALTER TABLE event_store ALTER COLUMN position DROP DEFAULT,
    ADD CONSTRAINT event_store_pkey PRIMARY KEY (id),
    ADD CONSTRAINT event_store_position_key UNIQUE (position),
    ADD CONSTRAINT event_store_stream_id_version_key UNIQUE (stream_id, version);
CREATE INDEX idx_event_store_type ON event_store (event_type, position);
CREATE INDEX idx_event_store_time_range ON event_store USING brin (created_at);
CREATE INDEX idx_event_store_correlation ON event_store (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX idx_event_store_occurred ON event_store (occurred_at, position)
    WHERE occurred_at IS NOT NULL;
CREATE OR REPLACE FUNCTION mlevents_assign_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.position IS NOT NULL THEN
        RAISE EXCEPTION 'event_store positions are set by the store: an insert may not name one'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.position := nextval('event_position_seq');
    RETURN NEW;
END $$;
CREATE TRIGGER event_store_assign_position BEFORE INSERT ON event_store
FOR EACH ROW EXECUTE FUNCTION mlevents_assign_position();
CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();
CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();
CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON event_store
FOR EACH STATEMENT EXECUTE FUNCTION mlevents_reject_mutation();
DELETE FROM mlevents_schema;
INSERT INTO mlevents_schema (version, description) VALUES (6, 'v6');
"""


def test_a_v6_store_moves_into_partitions_unchanged_and_verifies(
    pg_schema_url: str, owner: Raw
) -> None:
    role = f"mlev_{uuid.uuid4().hex[:12]}"
    owner(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))
    try:
        with es.connect(pg_schema_url, validate=False) as store:
            for n in range(1, 6):
                store.append(f"run-{n % 2}", [ev(n), ev(n + 10)], correlation_id="job")
            store.seal()
            store.append("run-0", [ev(99)])
            before = list(store.read_all())
            hashes = store.recorder.hashed_rows(0, 10**9, 1000)
        owner(V6_SHAPE)
        assert owner("SELECT relkind FROM pg_class WHERE oid = 'event_store'::regclass") == [
            ("r",)]
        # a role granted on the v6 store keeps appending after the migration
        owner(sql.SQL(
            "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.mlevents_schema, "
            "{s}.streams, {s}.event_store TO {r}; GRANT INSERT ON {s}.event_store, {s}.streams "
            "TO {r}; GRANT USAGE, SELECT ON SEQUENCE {s}.event_position_seq TO {r}; "
            "GRANT SELECT, INSERT ON {s}.mlevents_subject_keys TO {r}"
        ).format(s=sql.Identifier(_schema(pg_schema_url)), r=sql.Identifier(role))
            .as_string(None))
        with es.connect(pg_schema_url, partition_size=SIZE, validate=False) as migrated:
            assert owner("SELECT relkind FROM pg_class WHERE oid = 'event_store'::regclass") == [
                ("p",)]
            assert owner("SELECT max(version) FROM mlevents_schema") == [
                (latest_schema_version("postgresql"),)]
            assert list(migrated.read_all()) == before
            assert migrated.recorder.hashed_rows(0, 10**9, 1000) == hashes
            first = _partitions(owner)[0]
            assert first[0] == "event_store_p0" and first[1] is None  # from MINVALUE
            # the v6 indexes serve the partition (none built twice, none on id left)
            assert len(owner("SELECT indexname FROM pg_indexes WHERE schemaname = "
                             "current_schema() AND tablename = 'event_store_p0'")) == len(
                owner("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                      "AND tablename = 'event_store'"))
            assert _empty_ahead(owner) >= 2
            assert migrated.verify().ok
            assert [e.version for e in migrated.read_stream("run-0")] == list(range(1, 6))
            with pytest.raises(es.ConcurrencyError):
                migrated.append("run-0", [ev(7)], expected_version=4)
            with pytest.raises(es.DuplicateEventError):
                migrated.append("new", [es.NewEvent("thing_happened", {"n": 1},
                                                    id=before[0].id)])
            (appended,) = migrated.append("run-0", [ev(7)], expected_version=5)
            assert appended.position > before[-1].position  # (refused appends leave gaps)
            with pytest.raises(psycopg.Error, match="append-only"):
                owner("DELETE FROM event_store_p0")
        host = PG_URL.removeprefix("postgresql://").partition("@")[2]
        url = f"postgresql://{role}@{host}?schema={_schema(pg_schema_url)}"
        with es.connect(url, validate=False) as as_role:
            for n in range(3 * SIZE):
                as_role.append("role-stream", [ev(n)], expected_version=n)
            assert [e.version for e in as_role.read_stream("run-0")] == list(range(1, 7))
            assert _empty_ahead(owner) >= 2
        with es.connect(pg_schema_url, validate=False) as again:
            assert again.verify().ok
    finally:
        owner(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)).as_string(None))
        owner(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string(None))
