"""Readers of the log beside the recorder's own reads, with archived history
(docs/archive.md): `forget`'s erasure report, `log_counts` (`mlevents status`), the chain
of a stream whose previous event is archived, and reads racing an archive's commit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import event_sourcing as es
from event_sourcing.integrity.checker import HashChecker
from event_sourcing.privacy import LocalKeyProvider
from event_sourcing.privacy.forget import erasure_report
from event_sourcing.projections.counts import _read_counts, log_counts
from event_sourcing.stores import postgres
from event_sourcing.stores import store as store_module
from event_sourcing.stores.postgres_archive import ARCHIVE_STREAM, ArchiveError, archive
from event_sourcing.stores.postgres_archive_files import ArchiveFiles

SIZE = 5
LATER = datetime.now(UTC) + timedelta(days=1)
ALICE = "alice-7f3c9e@example.com"
BOB = "bob-52d1a0@example.com"


def ev(n: int) -> es.NewEvent:
    return es.NewEvent("thing_happened", {"n": n}, metadata={"m": n} if n % 3 else None)


@pytest.fixture
def reader(tiny: es.EventStore) -> Iterator[es.EventStore]:
    """Another process's store on the same schema (its own connections and manifest)."""
    with es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False) as other:
        yield other


def fill(store: es.EventStore, first: int, last: int) -> None:
    """Events first..last in streams s0..s3, then every stream's head moves past them."""
    for n in range(first, last + 1):
        store.append(f"s{n % 4}", [ev(n)])
    move_heads(store)


def move_heads(store: es.EventStore) -> None:
    """An event more in each of s0..s3: their heads leave the partitions before."""
    for n in range(4):
        store.append(f"s{n}", [ev(1000 + n)])


def own(events: Any) -> list[es.RecordedEvent]:
    return [e for e in events if e.stream_id != ARCHIVE_STREAM]


# -- forget ---------------------------------------------------------------------------------------
def test_forget_lists_the_subjects_archived_events(tiny: es.EventStore) -> None:
    private = es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False,
                         key_provider=LocalKeyProvider(os.urandom(32)))
    alice: list[str] = []
    for n in range(24):
        subject = ALICE if n % 3 else BOB
        [event] = private.append(f"s{n % 4}", [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"email": f"{n}@x.org"},
        })], metadata={"subject_id": subject})
        if subject == ALICE:
            alice.append(event.id)
    move_heads(private)
    private.seal()
    done = archive(private, LATER)
    assert done
    for n in range(3):  # and more, not archived
        [event] = private.append(f"s{n}", [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"email": f"{n}@y.org"},
        })], metadata={"subject_id": ALICE})
        alice.append(event.id)
    archived = {e.id for e in private.read_all() if e.position <= done[-1].to_position}
    assert archived & set(alice) and set(alice) - archived  # some archived, some not

    erased = private.forget(ALICE, reason="GDPR art. 17 request #12")

    assert erased.payload["affected_count"] == len(alice)
    assert erased.payload["affected_events"] == alice  # in position order
    assert erased.payload["affected_types"] == {"inference_requested": len(alice)}
    assert private.verify().ok
    private.close()


# -- log_counts ---------------------------------------------------------------------------------
def _expected(store: es.EventStore) -> tuple[dict[str, int], int]:
    events = list(store.read_all())
    return (
        dict(sorted(store.counts_by_type().items())),
        len({e.stream_id for e in events}),
    )


def test_log_counts_first_computed_after_an_archive(tiny: es.EventStore) -> None:
    fill(tiny, 1, 30)
    tiny.seal()
    assert archive(tiny, LATER)
    tiny.append("late", [ev(99)])
    by_type, streams = _expected(tiny)
    assert sum(by_type.values()) == len(list(tiny.read_all()))
    readonly = _read_counts(tiny)  # a role that may only read
    assert (readonly.by_type, readonly.streams) == (by_type, streams)
    counts = log_counts(tiny)
    assert (counts.by_type, counts.streams) == (by_type, streams)
    assert log_counts(tiny) == counts


def test_log_counts_checkpoint_inside_what_is_archived_later(tiny: es.EventStore) -> None:
    fill(tiny, 1, 12)
    log_counts(tiny)  # counted up to the middle of a partition archived below
    fill(tiny, 13, 30)
    tiny.seal()
    assert archive(tiny, LATER)
    by_type, streams = _expected(tiny)
    counts = log_counts(tiny)
    assert (counts.by_type, counts.streams) == (by_type, streams)


def test_log_counts_after_the_archive_read_no_file(
    tiny: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tiny, 1, 30)
    tiny.seal()
    assert archive(tiny, LATER)
    log_counts(tiny)
    tiny.append("late", [ev(99)])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("log_counts read an archive file for new events")

    monkeypatch.setattr(ArchiveFiles, "tables", refuse)
    counts = log_counts(tiny)
    assert counts.by_type["thing_happened"] == 35 and counts.position == tiny.head_position()


# -- the chain of a stream whose previous event is archived ---------------------------------------
def test_seal_and_verify_link_to_an_archived_previous_event(tiny: es.EventStore) -> None:
    for n in range(1, 11):
        tiny.append(f"s{n % 4}", [ev(n)])
    sealed = tiny.seal()
    move_heads(tiny)  # after the seal
    chains = {(row[2], row[4]): (row[0], bytes(row[13]))
              for row in tiny.recorder.hashed_rows(0, sealed.to_position, 100)}
    done = archive(tiny, LATER)
    assert done
    # Each stream's event after the seal links to its previous event, archived or not.
    checker = HashChecker(tiny, sealed.to_position, incremental=True)
    archived = 0
    for n in range(4):
        version = tiny.stream_version(f"s{n}")
        position, chain = chains[(f"s{n}", version - 1)]
        assert checker._head(f"s{n}", version) == (version - 1, chain)
        archived += position <= done[-1].to_position
    assert archived  # at least one previous event was read from the archive
    # The first seal's own event, the heads, and the archive's events.
    assert tiny.seal().count == 1 + 4 + len(done)
    report = tiny.verify()
    assert report.ok, report.problems
    assert tiny.verify(since_last_verified=True).ok


# -- reads racing an archive ----------------------------------------------------------------------
def _ready(store: es.EventStore) -> None:
    fill(store, 1, 30)
    store.seal()


def test_a_read_all_started_before_an_archive_returns_each_event_once(
    tiny: es.EventStore, reader: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready(tiny)
    before = list(reader.read_all())
    monkeypatch.setattr(store_module, "READ_PAGE_SIZE", 3)
    events = reader.read_all()
    seen = [next(events) for _ in range(4)]
    assert archive(tiny, LATER)
    seen += list(events)
    assert own(seen) == before


def test_a_read_stream_started_before_an_archive_returns_each_event_once(
    tiny: es.EventStore, reader: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready(tiny)
    before = reader.read_stream("s1")
    monkeypatch.setattr(store_module, "READ_PAGE_SIZE", 2)
    events = reader.iter_stream("s1")
    seen = [next(events) for _ in range(3)]
    assert archive(tiny, LATER)
    seen += list(events)
    assert seen == before


def _twice(tiny: es.EventStore) -> int:
    """A first archive, then more history ready for a second: the first's upper bound."""
    fill(tiny, 1, 12)
    tiny.seal()
    first = archive(tiny, LATER)
    assert first
    fill(tiny, 13, 40)
    tiny.seal()
    return first[-1].to_position + 1


def _archive_once(tiny: es.EventStore) -> Callable[[], None]:
    done: list[object] = []

    def run() -> None:
        if not done:
            done.append(archive(tiny, LATER))
            assert done[0]

    return run


@pytest.mark.parametrize("page", [3, 7])
def test_an_archive_committed_between_a_page_scan_and_the_manifest_read(
    tiny: es.EventStore, reader: es.EventStore, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    bound = _twice(tiny)
    before = own(reader.read_all())
    before_s1 = reader.read_stream("s1")
    files = len(tiny.recorder.query("SELECT * FROM mlevents_archives"))
    again = _archive_once(tiny)
    scan = postgres.stream_on

    def scan_then_archive(connection: Any, query: str, params: Any) -> Any:
        found = scan(connection, query, params)
        if params[0] < bound - 1 <= params[0] + page:  # a page across the first bound
            again()
            # Another thread of the reader reads the manifest anew (a read_stream meeting
            # the newly archived events), before this page merges the archive in.
            assert reader.read_stream("s1") == before_s1
        return found

    monkeypatch.setattr(postgres, "stream_on", scan_then_archive)
    monkeypatch.setattr(store_module, "READ_PAGE_SIZE", page)
    seen = own(reader.read_all())
    assert len(tiny.recorder.query("SELECT * FROM mlevents_archives")) > files
    assert [e.position for e in seen] == [e.position for e in before]
    assert seen == before


def test_a_partition_archived_below_the_highest_archived_one_is_read(
    tiny: es.EventStore, reader: es.EventStore
) -> None:
    ahead = LATER + timedelta(days=1)
    with es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False,
                    clock=lambda: ahead) as fast:
        # Recorded by a clock ahead: the first partition is too young for the first archive.
        fast.append("lone", [ev(0)])
    fill(tiny, 1, 30)
    tiny.seal()
    first = archive(tiny, LATER)
    assert first and first[0].from_position > 1
    before = own(reader.read_all())  # the reader knows the manifest as it is now
    later = archive(tiny, ahead + timedelta(days=1))
    assert [r.from_position for r in later] == [0]  # below the highest archived bound
    assert own(reader.read_all())[:len(before)] == before
    assert own(reader.read_all(limit=len(before))) == before


def _archive_on_load(
    tiny: es.EventStore, reader: es.EventStore, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """Archive once when the reader next reads the manifest (before it when `first`)."""
    again = _archive_once(tiny)
    files: ArchiveFiles = reader.recorder._archives  # type: ignore[attr-defined]
    load = files.load

    def load_around(connection: Any) -> None:
        if first:
            again()
        load(connection)
        if not first:
            again()

    monkeypatch.setattr(files, "load", load_around)


@pytest.mark.parametrize("first", [True, False])
def test_counts_by_type_racing_an_archive(
    tiny: es.EventStore, reader: es.EventStore, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    _twice(tiny)
    before = reader.counts_by_type()
    _archive_on_load(tiny, reader, monkeypatch, first)
    after = reader.counts_by_type()
    assert after == {**before, "archive_created": after.get("archive_created", 0)}
    assert after["archive_created"] >= before["archive_created"]


@pytest.mark.parametrize("first", [True, False])
def test_verify_racing_an_archive(
    tiny: es.EventStore, reader: es.EventStore, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    _twice(tiny)
    _archive_on_load(tiny, reader, monkeypatch, first)
    report = reader.verify()
    assert report.ok, report.problems
    assert report.events == len([e for e in tiny.read_all() if e.position <= report.to_position])


@pytest.mark.parametrize("first", [True, False])
def test_forget_racing_an_archive(
    tiny: es.EventStore, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    kek = LocalKeyProvider(os.urandom(32))
    private = es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False,
                         key_provider=kek)
    alice = []
    for n in range(1, 41):
        [event] = private.append(f"s{n % 4}", [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"email": f"{n}@x.org"},
        })], metadata={"subject_id": ALICE})
        alice.append(event.id)
        if n == 12:
            move_heads(private)
            private.seal()
            assert archive(private, LATER)
    move_heads(private)
    private.seal()
    _archive_on_load(tiny, private, monkeypatch, first)
    erased = private.forget(ALICE, reason="race")
    assert erased.payload["affected_events"] == alice
    private.close()


def test_counts_and_forget_without_the_archive_files_raise_archive_error(
    tiny: es.EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tiny, 1, 30)
    tiny.seal()
    assert archive(tiny, LATER)
    monkeypatch.setenv("MLEVENTS_ARTIFACTS", str(tmp_path / "elsewhere"))
    with es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False,
                    key_provider=LocalKeyProvider(os.urandom(32))) as other:
        other.append("p", [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"email": "a@x.org"},
        })], metadata={"subject_id": ALICE})
        with pytest.raises(ArchiveError, match="MLEVENTS_ARTIFACTS"):
            log_counts(other)
        with pytest.raises(ArchiveError, match="MLEVENTS_ARTIFACTS"):
            other.forget(ALICE, reason="request #1")
        # Found before any key is destroyed: nothing was erased, nothing recorded.
        report = erasure_report(other, ALICE)
        assert report["holds_live_key"] and report["erasures"] == []
