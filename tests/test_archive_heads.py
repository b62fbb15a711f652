"""Streams whose head (latest event) is archived (docs/archive.md): appends in every head
mode and imports go on from the archived head, with its chain, version, type and time;
stale expectations, retries and races fail or return as they do on a hot head."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import event_sourcing as es
from event_sourcing.errors import ConcurrencyError, EventStoreError
from event_sourcing.stores import postgres_archive, postgres_archive_files, postgres_heads
from event_sourcing.stores.imports import ImportRecord
from event_sourcing.stores.postgres_archive import archive

SIZE = 5
LATER = datetime.now(UTC) + timedelta(days=1)
RUNS = [f"run{n}" for n in range(4)]


def ev(n: int, id: str | None = None) -> es.NewEvent:
    return es.NewEvent("thing_happened", {"n": n}, metadata={"m": n} if n % 3 else None,
                       **({"id": id} if id else {}))


@pytest.fixture
def cold(tiny: es.EventStore) -> Iterator[es.EventStore]:
    """Another store object on the same schema: no head of any stream cached."""
    with es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False) as other:
        yield other


IDS = {run: [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{v}")) for v in (1, 2)] for run in RUNS}


def archive_heads(store: es.EventStore) -> dict[str, list[es.RecordedEvent]]:
    """run0..run3 (type "training", two events each) end in the first partitions, which
    are archived; "busy" goes on past them. Each run's events, as recorded."""
    for version in (0, 1):
        for run in RUNS:
            store.append(run, [ev(version, IDS[run][version])], stream_type="training")
    for n in range(8):
        store.append("busy", [ev(100 + n)])
    before = {run: store.read_stream(run) for run in RUNS}
    store.seal()
    done = archive(store, LATER)
    assert done
    heads = [events[-1].position for events in before.values()]
    assert max(heads) <= done[-1].to_position  # every run's head is archived
    assert store.recorder.query(
        "SELECT count(*) FROM event_store WHERE left(stream_id, 3) = 'run'"
    ) == [(0,)]
    return before


def check(store: es.EventStore, before: list[es.RecordedEvent], run: str, versions: int) -> None:
    """The whole stream in order, its old events as before, the type kept, the log verified."""
    events = store.read_stream(run)
    assert [e.version for e in events] == list(range(1, versions + 1))
    assert events[:len(before)] == before
    assert {e.stream_type for e in events} == {"training"}
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(events))
    report = store.verify()
    assert report.ok, report.problems


@pytest.mark.parametrize("which", ["cold", "warm"])
def test_append_without_expectation(
    tiny: es.EventStore, cold: es.EventStore, which: str
) -> None:
    before = archive_heads(tiny)
    store = cold if which == "cold" else tiny
    for run in RUNS:
        appended = store.append(run, [ev(3)])
        assert [e.version for e in appended] == [3]
        check(store, before[run], run, 3)
    # A batch (the statement's other form), again with no expectation.
    appended = store.append("run0", [ev(4), ev(5)])
    assert [e.version for e in appended] == [4, 5]
    check(store, before["run0"], "run0", 5)


@pytest.mark.parametrize("which", ["cold", "warm"])
def test_append_expecting_the_archived_version(
    tiny: es.EventStore, cold: es.EventStore, which: str
) -> None:
    before = archive_heads(tiny)
    store = cold if which == "cold" else tiny
    for run in RUNS:
        events = [ev(3)] if run != "run1" else [ev(3), ev(4)]
        appended = store.append(run, events, expected_version=2)
        assert [e.version for e in appended] == list(range(3, 3 + len(events)))
        check(store, before[run], run, 2 + len(events))
    # The cache now holds the new heads: expecting them needs no lookup.
    store.append("run0", [ev(9)], expected_version=3)
    check(store, before["run0"], "run0", 4)


@pytest.mark.parametrize("which", ["cold", "warm"])
def test_a_stale_expectation_names_the_true_version(
    tiny: es.EventStore, cold: es.EventStore, which: str
) -> None:
    before = archive_heads(tiny)
    store = cold if which == "cold" else tiny
    for expected in (0, 1, 3, 7):
        with pytest.raises(ConcurrencyError) as raised:
            store.append("run2", [ev(3)], expected_version=expected)
        assert (raised.value.expected, raised.value.actual) == (expected, 2)
        assert isinstance(raised.value, EventStoreError)
    check(store, before["run2"], "run2", 2)


def test_the_streams_type_is_kept_when_another_is_given(
    tiny: es.EventStore, cold: es.EventStore
) -> None:
    before = archive_heads(tiny)
    # As on a hot head: an existing stream keeps its type.
    assert cold.append("run0", [ev(3)], stream_type="other")[0].stream_type == "training"
    assert cold.append("run1", [ev(3)], stream_type="other",
                       expected_version=2)[0].stream_type == "training"
    assert tiny.append("run2", [ev(3)], stream_type="other",
                       expected_version=2)[0].stream_type == "training"
    for run in ("run0", "run1", "run2"):
        check(cold, before[run], run, 3)


@pytest.mark.parametrize("which", ["cold", "warm"])
def test_a_retry_of_an_archived_batch_returns_it(
    tiny: es.EventStore, cold: es.EventStore, which: str
) -> None:
    before = archive_heads(tiny)
    store = cold if which == "cold" else tiny
    for expected in (None, 1, 2):
        again = store.append("run3", [ev(1, IDS["run3"][1])], expected_version=expected)
        assert again == before["run3"][1:]
    # A retry of a batch appended after the archive, too.
    batch = [ev(3, str(uuid.uuid4())), ev(4, str(uuid.uuid4()))]
    first = store.append("run3", batch, expected_version=2)
    assert store.append("run3", batch, expected_version=2) == first
    assert store.append("run3", batch) == first
    check(store, before["run3"], "run3", 4)


def test_the_archived_heads_time_counts(pg_schema_url: str, archive_artifacts: Path) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=2)  # a writer whose clock runs ahead
    with es.connect(pg_schema_url, partition_size=SIZE, validate=False,
                    clock=lambda: ahead) as fast:
        before = archive_heads(fast)
    for expected in (None, 2):
        with es.connect(pg_schema_url, validate=False) as slow:  # a cold cache each time
            run = "run0" if expected is None else "run1"
            appended = slow.append(run, [ev(3)], expected_version=expected)
            assert appended[0].created_at >= before[run][-1].created_at == ahead
            check(slow, before[run], run, 3)
    with es.connect(pg_schema_url, validate=False) as slow:
        slow.import_events([ImportRecord("line 1", 1, "run2", "thing_happened", {"n": 3})])
        assert slow.read_stream("run2")[-1].created_at >= ahead
        check(slow, before["run2"], "run2", 3)


@pytest.mark.parametrize("which", ["cold", "warm"])
def test_an_import_into_streams_whose_heads_are_archived(
    tiny: es.EventStore, cold: es.EventStore, which: str
) -> None:
    before = archive_heads(tiny)
    store = cold if which == "cold" else tiny
    records = [
        ImportRecord(f"line {n}", n, RUNS[n % 3], "thing_happened", {"n": n})
        for n in range(1, 7)
    ] + [
        ImportRecord("line 7", 7, "fresh", "thing_happened", {"n": 7}),
        ImportRecord("line 8", 8, "busy", "thing_happened", {"n": 8}),  # its head is hot
    ]
    report = store.import_events(records)
    assert (report.written, report.skipped) == (8, 0)
    for run in RUNS[:3]:
        check(store, before[run], run, 4)
    assert [e.version for e in store.read_stream("fresh")] == [1]
    assert [e.version for e in store.read_stream("busy")] == list(range(1, 10))
    assert store.import_events(records).skipped == 8  # run again: every record is there
    # Appends carry on after the imported events.
    store.append("run1", [ev(9)], expected_version=4)
    check(store, before["run1"], "run1", 5)


# In-flight markers of the schema held right now (each holds back every reader's horizon)
MARKERS_HELD = """
    SELECT count(*) FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.objsubid = 2
      AND l.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
      AND l.classid::bigint = mod(mlevents_inflight_key()::bigint + 4294967296, 4294967296)"""


def test_an_import_reads_archived_heads_before_it_holds_back_readers(
    tiny: es.EventStore, cold: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = archive_heads(tiny)
    held: list[int] = []  # markers held each time an archive file was opened
    opened = postgres_archive_files.ArchiveFiles._open

    def watched(self: Any, archived: Any) -> Any:
        held.append(tiny.recorder.query(MARKERS_HELD)[0][0])
        return opened(self, archived)

    monkeypatch.setattr(postgres_archive_files.ArchiveFiles, "_open", watched)
    report = cold.import_events([
        ImportRecord(f"line {n}", n, run, "thing_happened", {"n": n})
        for n, run in enumerate(RUNS, start=1)
    ])
    assert report.written == len(RUNS)
    assert held and held == [0] * len(held), held  # fails if the marker is taken first
    monkeypatch.setattr(postgres_archive_files.ArchiveFiles, "_open", opened)
    for run in RUNS:
        check(cold, before[run], run, 3)


@pytest.mark.parametrize("expected", [None, 2])
@pytest.mark.parametrize("when", ["head lookup", "file read"])
def test_an_append_racing_the_archived_head_lookup(
    tiny: es.EventStore, cold: es.EventStore, monkeypatch: pytest.MonkeyPatch,
    expected: int | None, when: str,
) -> None:
    """Another writer appends after the statement met the archived head, before the head
    is looked up again or before it is read from the file (then the append continuing from
    it meets the new version): no expectation appends after it, a stale one is refused."""
    before = archive_heads(tiny)
    raced: list[Any] = []
    # The other writer's clock is behind: its event is not recorded after this append's
    # time (else the append would be sent again for that reason: ClockBehind).
    monkeypatch.setattr(tiny, "clock", lambda: datetime(2000, 1, 1, tzinfo=UTC))

    def race() -> None:
        if not raced:
            raced.append(tiny.append("run0", [ev(50)], expected_version=2))

    if when == "head lookup":
        lookup = postgres_heads.stream_head

        def append_then_look(*args: Any) -> Any:
            race()
            return lookup(*args)

        monkeypatch.setattr(postgres_heads, "stream_head", append_then_look)
    else:
        read = postgres_archive_files.ArchiveFiles.heads

        def read_then_append(self: Any, positions: Any) -> Any:
            found = read(self, positions)
            race()
            return found

        monkeypatch.setattr(postgres_archive_files.ArchiveFiles, "heads", read_then_append)
    if expected is None:
        assert [e.version for e in cold.append("run0", [ev(51)])] == [4]
        check(cold, before["run0"], "run0", 4)
    else:
        with pytest.raises(ConcurrencyError) as raised:
            cold.append("run0", [ev(51)], expected_version=expected)
        assert (raised.value.expected, raised.value.actual) == (2, 3)
        check(cold, before["run0"], "run0", 3)
    assert raced

def test_concurrent_appends_to_an_archived_head(
    tiny: es.EventStore, cold: es.EventStore
) -> None:
    """Writers (two store objects, several threads each) appending with no expectation to
    streams whose heads are archived: every event once, versions contiguous, chains whole."""
    before = archive_heads(tiny)
    errors: list[BaseException] = []

    def write(store: es.EventStore, n: int) -> None:
        try:
            for k in range(6):  # three appends to each of run0 and run1
                store.append(RUNS[k % 2], [ev(1000 * n + k)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(store, n))
        for n, store in enumerate([tiny, cold, tiny, cold])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for run in RUNS[:2]:
        check(cold, before[run], run, 2 + 4 * 3)


def test_an_import_reads_only_the_row_groups_holding_its_heads(
    tiny: es.EventStore, cold: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_archive, "ROW_GROUP", 1)  # a row group per event
    tiny.append("first", [ev(1)], stream_type="training")
    for n in range(12):
        tiny.append("middle", [ev(n)])
    tiny.append("last", [ev(2)], stream_type="training")
    before = {stream: tiny.read_stream(stream) for stream in ("first", "last")}
    tiny.seal()
    done = archive(tiny, LATER)
    assert done[-1].to_position >= before["last"][0].position
    groups: list[int] = []
    read = pq.ParquetFile.read_row_group

    def counted(self: Any, group: int, *args: Any, **kwargs: Any) -> Any:
        groups.append(group)
        return read(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    cold.import_events([
        ImportRecord("line 1", 1, "first", "thing_happened", {"n": 3}),
        ImportRecord("line 2", 2, "last", "thing_happened", {"n": 4}),
    ])
    assert len(groups) == 2  # the two heads' groups, not the twelve between
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read)
    for stream in ("first", "last"):
        check(cold, before[stream], stream, 2)
