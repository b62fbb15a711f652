"""Bulk import (`store.import_events`, `mlevents import`) on both backends: every input
format, idempotent re-runs, resuming, bad input, personal data, the hash chains, and on
PostgreSQL the no-skip global order while imports and appends run together."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PG_URL

import event_sourcing as es
from event_sourcing.cli import main
from event_sourcing.errors import (
    DuplicateEventError,
    EventStoreError,
    EventValidationError,
    UnknownEventTypeError,
)
from event_sourcing.privacy import LocalKeyProvider
from event_sourcing.stores.import_readers import ColumnMapping, read_records
from event_sourcing.stores.imports import ImportRecord, ImportReport
from event_sourcing.stores.sqlite_texts import text_of

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def progress_lines(count: int, streams: int = 3) -> list[dict[str, Any]]:
    return [
        {"stream_id": f"run-{n % streams}", "type": "training_progress",
         "payload": {"step": n, "loss": 1 / (n + 1)}}
        for n in range(count)
    ]


def check_log(store: es.EventStore, expected: int) -> None:
    """Every event once, versions 1..n per stream in position order, chains verified."""
    events = list(store.read_all())
    assert len(events) == expected
    assert len({event.id for event in events}) == expected
    for stream in {event.stream_id for event in events}:
        versions = [event.version for event in events if event.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))
    report = store.verify()
    assert report.problems == [] and report.events == expected


def test_json_lines_keep_file_order_per_stream_and_verify(
    store: es.EventStore, tmp_path: Path
) -> None:
    given = str(uuid.uuid4())
    lines = [
        {"stream_id": "run-a", "type": "training_progress", "payload": {"step": 1},
         "stream_type": "training", "correlation_id": "c-1", "metadata": {"source": "csv"}},
        {"stream_id": "run-b", "event_type": "training_progress", "payload": {"step": 7}},
        {"stream_id": "run-a", "type": "training_progress", "payload": {"step": 2, "loss": 0.5},
         "id": given.upper(), "causation_id": "c-1", "occurred_at": "2023-01-02T03:04:05Z"},
    ]
    path = write_lines(tmp_path / "history.jsonl", lines)
    records = list(read_records(path))
    assert records[2].occurred_at == datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC)
    report = store.import_events(records)
    assert (report.read, report.written, report.skipped) == (3, 3, 0)
    run_a = store.read_stream("run-a")
    assert [(e.version, e.payload["step"]) for e in run_a] == [(1, 1), (2, 2)]
    assert run_a[0].stream_type == "training" and run_a[1].stream_type == "training"
    assert run_a[0].correlation_id == "c-1" and run_a[0].metadata == {"source": "csv"}
    assert run_a[1].id == given and run_a[1].causation_id == "c-1"
    # business time is stored (and hashed: check_log verifies)
    assert run_a[1].occurred_at == datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert run_a[0].occurred_at == run_a[0].created_at
    assert run_a[1].payload["loss"] == 0.5 and run_a[1].payload["metrics"] == {}  # catalog
    assert store.read_stream("run-b")[0].version == 1
    check_log(store, 3)
    # Appends carry on after imported events, on the same chains.
    store.append("run-a", [es.NewEvent("training_progress", {"step": 3})], expected_version=2)
    check_log(store, 4)


def test_awkward_text_survives_the_copy(make_store: Any, tmp_path: Path) -> None:
    stream = "run\\1\t\u00fc\r\nx"
    payload = {"note": "back\\slash \"quoted\"\n\ttab \u20ac \U0001f600", "k\\": [1.5e300]}
    path = write_lines(tmp_path / "h.jsonl", [
        {"stream_id": stream, "type": "free_text", "payload": payload,
         "correlation_id": "c\\\n1", "metadata": {"m": "\\N"}},
    ])
    unvalidated = make_store(validate=False)
    unvalidated.import_events(read_records(path))
    [event] = unvalidated.read_stream(stream)
    assert (event.payload, event.correlation_id, event.metadata) == (
        payload, "c\\\n1", {"m": "\\N"}
    )
    assert unvalidated.verify().problems == []


def test_an_imported_event_is_stored_exactly_as_an_appended_one(
    make_store: Any, store_url: str
) -> None:
    appended = make_store(clock=lambda: T0)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    when = [None, datetime(2023, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), None]
    appended.append("run-1", [
        es.NewEvent("training_progress", {"step": n}, id=ids[n], occurred_at=when[n])
        for n in range(3)
    ], stream_type="training", correlation_id="corr")
    rows = appended.recorder.hashed_rows(0, 10, 10)
    other = store_url.replace("events.db", "other.db") if "sqlite" in store_url else None
    if other is None:  # PostgreSQL: another schema on the same server
        other = store_url.replace("schema=", "schema=x")
    imported = es.connect(other, clock=lambda: T0)
    try:
        imported.import_events([
            ImportRecord(f"line {n}", n, "run-1", "training_progress", {"step": n}, id=ids[n],
                         stream_type="training", correlation_id="corr", occurred_at=when[n])
            for n in range(3)
        ])
        assert imported.recorder.hashed_rows(0, 10, 10) == rows
        # and stored in the same representation (SQLite: ids as blobs, times as integers)
        stored = "SELECT * FROM event_store ORDER BY position"
        assert imported.recorder.query(stored) == appended.recorder.query(stored)
    finally:
        imported.close()
        if "schema=" in other:
            with psycopg.connect(PG_URL, autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA IF EXISTS "{other.split("schema=")[1]}" CASCADE')


def test_csv_through_a_column_mapping(store: es.EventStore, tmp_path: Path) -> None:
    path = tmp_path / "train_log.csv"
    path.write_text(
        "run_id,step,loss,note,when\n"
        "r1,0,2.5,warm-up,2024-01-01T00:00:00+00:00\n"
        "r2,0,3.0,,2024-01-01T00:00:01+00:00\n"
        "r1,1,1.25,\"a, b\",\n"
    )
    mapping = ColumnMapping.parse(
        ["stream=run_id", "payload.step=step", "payload.loss=loss", "occurred_at=when",
         "metadata.note=note"],
        ["type=training_progress"],
    )
    records = list(read_records(path, mapping=mapping))
    assert [r.where for r in records] == ["row 1", "row 2", "row 3"]
    assert records[0].occurred_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert records[2].occurred_at is None
    store.import_events(records)
    r1 = store.read_stream("r1")
    assert [(e.payload["step"], e.payload["loss"]) for e in r1] == [(0, 2.5), (1, 1.25)]
    assert type(r1[0].payload["step"]) is int
    assert r1[1].metadata == {"note": "a, b"}
    assert store.read_stream("r2")[0].metadata == {}  # an empty cell is absent
    check_log(store, 3)


def test_a_mapping_file_and_unmapped_columns_as_the_payload(
    store: es.EventStore, tmp_path: Path
) -> None:
    (tmp_path / "log.csv").write_text("run,step,loss\nr1,5,0.25\n")
    (tmp_path / "mapping.toml").write_text(
        '[map]\nstream = "run"\n\n[set]\ntype = "training_progress"\n'
    )
    mapping = ColumnMapping.parse(file=tmp_path / "mapping.toml")
    store.import_events(read_records(tmp_path / "log.csv", mapping=mapping))
    [event] = store.read_stream("r1")
    assert (event.payload["step"], event.payload["loss"]) == (5, 0.25)


def test_parquet(make_store: Any, tmp_path: Path) -> None:
    store = make_store(validate=False)  # (also a type outside the catalog)
    table = pa.table({
        "run_id": ["p1", "p1", "p2"], "step": [0, 1, 0], "loss": [0.9, 0.8, None],
        "at": pa.array([T0, T0, None], pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, tmp_path / "log.parquet")
    mapping = ColumnMapping.parse(
        ["stream_id=run_id", "payload.step=step", "payload.loss=loss", "occurred_at=at"],
        ["event_type=training_progress"],
    )
    records = list(read_records(tmp_path / "log.parquet", mapping=mapping))
    assert records[0].occurred_at == T0 and records[2].occurred_at is None
    everything = ColumnMapping.parse(["stream_id=run_id"], ["type=parquet_row"])
    store.import_events(read_records(tmp_path / "log.parquet", mapping=everything))
    assert store.read_stream("p1")[0].payload == {
        "step": 0, "loss": 0.9, "at": "2024-05-01T12:00:00+00:00"
    }
    report = store.import_events(records)
    assert report.written == 3
    assert [e.payload["loss"] for e in store.read_stream("p1")[2:]] == [0.9, 0.8]
    assert store.read_stream("p2")[1].payload["loss"] is None
    check_log(store, 6)
    assert store.import_events(read_records(tmp_path / "log.parquet", mapping=mapping)).written == 0


def test_importing_the_same_file_again_writes_nothing(
    store: es.EventStore, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "h.jsonl", progress_lines(25))
    first = store.import_events(read_records(path), batch_size=10)
    assert (first.written, first.batches) == (25, 3)
    head = store.head_position()
    again = store.import_events(read_records(path), batch_size=7)
    assert (again.read, again.written, again.skipped) == (25, 0, 25)
    assert store.head_position() == head
    # A file that grew at its end: only the new lines are written.
    grown = write_lines(tmp_path / "h.jsonl", progress_lines(30))
    assert store.import_events(read_records(grown)).written == 5
    check_log(store, 30)


def test_recorded_events_further_into_the_file_are_found_and_skipped(
    store: es.EventStore, tmp_path: Path
) -> None:
    """Ids are looked up only until a batch finds none recorded; a later batch the database
    refuses for a recorded id is looked up then."""
    path = write_lines(tmp_path / "h.jsonl", progress_lines(30))
    middle = list(read_records(path))[10:20]
    store.import_events(middle)
    report = store.import_events(read_records(path), batch_size=10)
    assert (report.written, report.skipped, report.batches) == (20, 10, 3)
    events = list(store.read_all())
    assert len(events) == 30 and store.verify().problems == []


def test_an_interrupted_import_resumes_where_it_stopped(
    store: es.EventStore, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "h.jsonl", progress_lines(50))

    def stop_after_two(report: ImportReport) -> None:
        if report.batches == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.import_events(read_records(path), batch_size=10, progress=stop_after_two)
    committed = store.head_position()
    assert 20 <= committed <= 30  # two batches, and the one in flight when it stopped
    resumed = store.import_events(read_records(path), batch_size=10)
    assert (resumed.skipped, resumed.written) == (committed, 50 - committed)
    check_log(store, 50)


def test_killing_the_command_mid_import_then_running_it_again(
    store_url: str, tmp_path: Path
) -> None:
    count = 20_000
    path = write_lines(tmp_path / "big.jsonl", progress_lines(count, streams=5))
    command = [sys.executable, "-m", "event_sourcing.cli", "import", str(path), "--url",
               store_url, "--batch-size", "200"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = es.connect(store_url)
    try:
        deadline = time.monotonic() + 120
        while store.head_position() == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the import never wrote anything"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        partial = store.head_position()
        assert partial > 0, process.stderr.read() if process.stderr else ""
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        summary = json.loads(done.stdout)
        assert summary["written"] + summary["skipped"] == count
        assert summary["skipped"] >= partial - 1  # positions may have gaps, never fewer
        check_log(store, count)
    finally:
        store.close()


def test_bad_input_names_its_line_and_earlier_batches_stay(
    store: es.EventStore, tmp_path: Path
) -> None:
    lines = [json.dumps(line) for line in progress_lines(4)]
    cases = [
        ("{not json", EventValidationError, "line 5: not valid JSON"),
        (json.dumps({"stream_id": "r", "type": "training_progress", "payload": {"step": -1}}),
         EventValidationError, "line 5: training_progress payload invalid"),
        (json.dumps({"stream_id": "r", "type": "no_such_type"}), UnknownEventTypeError,
         "line 5"),
        (json.dumps({"stream_id": "r", "type": "t", "colour": 1}), EventValidationError,
         "line 5: unknown field 'colour'"),
        (json.dumps({"type": "training_progress"}), EventValidationError,
         "line 5: no 'stream_id'"),
        (json.dumps({"stream_id": "", "type": "training_progress", "payload": {"step": 1}}),
         EventValidationError, "line 5: stream_id must be a non-empty string"),
        (json.dumps({"stream_id": "r", "type": "training_progress", "payload": {"step": 1},
                     "id": "nope"}), EventValidationError, "line 5: id 'nope' is not a UUID"),
        (json.dumps({"stream_id": "r", "type": "training_progress", "payload": {"step": 1},
                     "occurred_at": "yesterday"}), EventValidationError, "line 5: occurred_at"),
    ]
    for n, (bad, error, message) in enumerate(cases):
        path = tmp_path / f"bad{n}.jsonl"
        path.write_text("\n".join([*lines, bad, *lines]) + "\n")
        with pytest.raises(error, match=message):
            store.import_events(read_records(path), batch_size=2)
        assert store.head_position() == 4  # lines 1-4: two committed batches, once
    check_log(store, 4)


def test_bad_csv_rows_and_mappings(store: es.EventStore, tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("run,step\nr1,1\nr1,x\n")
    mapping = ColumnMapping.parse(["stream=run", "payload.step=step"],
                                  ["type=training_progress"])
    with pytest.raises(EventValidationError, match="row 2: training_progress payload invalid"):
        store.import_events(read_records(path, mapping=mapping))
    with pytest.raises(EventValidationError, match="has no column 'nope'"):
        read_records(path, mapping=ColumnMapping.parse(["stream=nope"], ["type=t"])).__next__()
    with pytest.raises(EventValidationError, match="gives no type"):
        read_records(path, mapping=ColumnMapping.parse(["stream=run"])).__next__()
    with pytest.raises(EventValidationError, match=r"payload\.KEY"):
        ColumnMapping.parse(["colour=run"])
    with pytest.raises(EventValidationError, match="needs a column mapping"):
        read_records(path)
    with pytest.raises(EventValidationError, match="cannot tell the format"):
        read_records(tmp_path / "log.txt")


def test_an_id_recorded_on_another_stream_is_refused(
    store: es.EventStore, tmp_path: Path
) -> None:
    taken = str(uuid.uuid4())
    store.append("elsewhere", [es.NewEvent("training_progress", {"step": 1}, id=taken)])
    path = write_lines(tmp_path / "h.jsonl", [
        {"stream_id": "r", "type": "training_progress", "payload": {"step": 1}, "id": taken},
    ])
    with pytest.raises(DuplicateEventError, match=r"line 1: event id .* already recorded"):
        store.import_events(read_records(path))
    twice = write_lines(tmp_path / "twice.jsonl", [
        {"stream_id": "r", "type": "training_progress", "payload": {"step": 1},
         "id": str(uuid.UUID(int=7))},
    ] * 2)
    with pytest.raises(DuplicateEventError, match=r"line 2: .* also the id of line 1"):
        store.import_events(read_records(twice))


def test_personal_data_is_encrypted_and_forgettable(
    make_store: Any, tmp_path: Path
) -> None:
    store = make_store(key_provider=LocalKeyProvider(os.urandom(32)))
    path = write_lines(tmp_path / "h.jsonl", [
        {"stream_id": "inference-1", "type": "inference_requested",
         "payload": {"model_id": "m", "model_version": 1, "inputs": {"email": "a@example.com"}},
         "metadata": {"subject_id": "alice"}},
    ])
    store.import_events(read_records(path))
    columns = (  # (SQLite stores a metadata text once, in event_texts)
        f"payload, {text_of('metadata')}" if store.dialect == "sqlite"
        else "payload::text, metadata::text"
    )
    stored = store.recorder.query(f"SELECT {columns} FROM event_store")
    assert "a@example.com" not in str(stored) and "alice" not in str(stored)
    [event] = store.read_stream("inference-1")
    assert event.payload["inputs"] == {"email": "a@example.com"}
    assert store.verify().problems == []
    store.forget("alice", reason="request")
    assert store.read_stream("inference-1")[0].payload["inputs"] != {"email": "a@example.com"}
    assert store.verify().problems == []


def test_the_command_line(store_url: str, tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "log.csv"
    path.write_text("run,step,loss\nr1,0,0.5\nr1,1,0.25\n")
    argv = ["import", str(path), "--url", store_url, "--map", "stream=run",
            "--set", "type=training_progress", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {
        "read": 2, "written": 2, "skipped": 0, "batches": 1, "streams": 1,
    }
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    assert main(["import", str(path), "--url", store_url]) == 2
    assert "needs a column mapping" in capsys.readouterr().err
    assert main(["verify", "--url", store_url]) == 0


@pytest.mark.slow
def test_imports_and_appends_together_keep_the_no_skip_order(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """A tailing reader while an import (small batches) and appenders (to streams of their
    own and to the imported streams) run: every event once, positions increasing."""
    count = 6000
    path = write_lines(tmp_path / "h.jsonl", progress_lines(count, streams=4))
    importer = es.connect(pg_schema_url)
    appender = es.connect(pg_schema_url)
    reader = es.connect(pg_schema_url)
    stop = threading.Event()
    appended: list[str] = []
    errors: list[BaseException] = []

    def append_loop(streams: list[str]) -> None:
        try:
            for n in itertools.count():
                if stop.is_set():
                    return
                [event] = appender.append(
                    streams[n % len(streams)], [es.NewEvent("training_progress", {"step": n})]
                )
                appended.append(event.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=append_loop, args=(streams,)) for streams in (
        ["other-1", "other-2"], ["run-0", "run-3"],  # the second races the import
    )]

    def run_import() -> None:
        try:
            importer.import_events(read_records(path), batch_size=150)
        except BaseException as exc:
            errors.append(exc)

    importing = threading.Thread(target=run_import)
    for thread in [*threads, importing]:
        thread.start()
    seen: list[es.RecordedEvent] = []
    cursor = 0
    try:
        while importing.is_alive():
            for event in reader.read_all(after=cursor):
                assert event.position > cursor
                seen.append(event)
                cursor = event.position
    finally:
        stop.set()
        for thread in [*threads, importing]:
            thread.join()
    assert not errors, errors
    seen.extend(reader.read_all(after=cursor))
    positions = [event.position for event in seen]
    assert all(a < b for a, b in itertools.pairwise(positions)), "not increasing"
    assert [event.id for event in reader.read_all()] == [event.id for event in seen]
    assert len(seen) == count + len(appended) and len(appended) > 10
    check_log(reader, len(seen))
    imported_steps = [e.payload["step"] for e in seen if e.stream_id == "run-1"]
    assert imported_steps == sorted(imported_steps)  # file order within a stream
    for store in (importer, appender, reader):
        store.close()


def test_errors_are_event_store_errors(store: es.EventStore) -> None:
    with pytest.raises(EventStoreError):
        store.import_events([], batch_size=0)
    with pytest.raises(EventValidationError, match="at most 10,000"):
        store.import_events([], batch_size=10_001)
    assert store.import_events([]).written == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_benchmark_runs(backend: str, request: pytest.FixtureRequest, capsys: Any) -> None:
    bench = str(Path(__file__).resolve().parent.parent / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import bench_import

    if backend == "postgresql":
        request.getfixturevalue("pg_schema_url")  # skips (or fails in CI) without a server
    bench_import.main(["--events", "300", "--repeats", "1", "--backend", backend,
                       "--pg-url", PG_URL])
    table = capsys.readouterr().out
    assert table.count(backend) == 6 and "raw load of the same rows" in table
    assert "floor: raw load + validate, encode, hash" in table
