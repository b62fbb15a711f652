"""`mlevents archive`: sealed, old partitions to Parquet, read through transparently
(docs/archive.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from psycopg import sql

import event_sourcing as es
from event_sourcing.cli import main
from event_sourcing.errors import IntegrityError
from event_sourcing.stores import postgres_archive, postgres_archive_files
from event_sourcing.stores.postgres_archive import ARCHIVE_STREAM, ArchiveError, archive

SIZE = 5
LATER = datetime.now(UTC) + timedelta(days=1)


def ev(n: int, occurred: datetime | None = None) -> es.NewEvent:
    return es.NewEvent("thing_happened", {"n": n, "text": "x" * (n % 7), "f": n / 3},
                       metadata={"m": n} if n % 3 else None, occurred_at=occurred)


def _fill(store: es.EventStore) -> None:
    # Streams a.. end early (their heads are in old partitions until moved on); "hot" goes on.
    for n in range(1, 31):
        stream = f"s{n % 4}"
        store.append(stream, [ev(n, datetime(2020, 1, 1, tzinfo=UTC) if n == 7 else None)],
                     correlation_id="c1" if n % 5 == 0 else None)
    for n in range(4):  # every stream's head moves past the old partitions
        store.append(f"s{n}", [ev(100 + n)])


def _everything(store: es.EventStore) -> dict[str, object]:
    streams = {f"s{n}": store.read_stream(f"s{n}") for n in range(4)}
    def own(events: object) -> list[es.RecordedEvent]:  # without the archive's own events
        return [e for e in events if e.stream_id != ARCHIVE_STREAM]  # type: ignore[attr-defined]

    log = own(store.read_all())
    return {
        "all": log,
        "pages": list(store.read_all(after=3, limit=17)),
        "sealed": own(store.read_all(after=2, until=LATER)),
        "typed": list(store.read_all(event_types=["thing_happened"], until=LATER)),
        "streams": streams,
        "ids": [store.get_event(e.id) for e in log],
        "correlated": store.read_correlated("c1"),
        "as_of": own(store.read_as_of(LATER)),
        "as_of_2020": list(store.read_as_of(datetime(2020, 6, 1, tzinfo=UTC))),
        "counts": store.counts_by_type().get("thing_happened"),
        "middle": store.read_stream("s1", 2, 4),
    }


@pytest.mark.parametrize("row_group", [50_000, 2])
def test_archived_history_reads_exactly_as_before(
    tiny: es.EventStore, archive_artifacts: Path, row_group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_archive, "ROW_GROUP", row_group)  # many groups per file
    monkeypatch.setattr(postgres_archive_files, "_SLICE", max(1, row_group // 2))
    _fill(tiny)
    tiny.seal()
    before = _everything(tiny)
    # A reader that was open (and had read) before the archive.
    early = es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False)
    assert _everything(early) == before
    done = archive(tiny, LATER)
    assert done and all(r.count > 0 and r.seal_roots for r in done)
    parts = [r[0] for r in tiny.recorder.query("SELECT name FROM mlevents_partitions()")]
    assert all(r.partition not in parts for r in done)
    assert len(tiny.recorder.query("SELECT * FROM mlevents_archives")) == len(done)
    after = _everything(tiny)
    for key in before:
        assert after[key] == before[key], key
    assert _everything(early) == before
    early.close()
    assert tiny.verify().ok
    # The archive_created events, with their seal roots.
    created = tiny.read_stream(ARCHIVE_STREAM)
    assert [e.payload["from_position"] for e in created] == [r.from_position for r in done]
    # Appends go on, also to streams whose old events are archived; a new seal verifies.
    for n in range(4):
        tiny.append(f"s{n}", [ev(200 + n)], expected_version=tiny.stream_version(f"s{n}"))
    tiny.append("s0", [ev(300)])
    tiny.seal()
    assert tiny.verify().ok
    # A second run archives nothing new twice; a fresh connection reads the same.
    with es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False) as other:
        assert list(other.read_all(limit=len(before["all"]))) == before["all"]  # type: ignore[arg-type]


def test_filtered_and_business_time_reads_of_many_archived_row_groups(
    tiny: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Row groups of 2 rows, pages of 3: reads that filter in Arrow cross groups, files and
    # pages, with business times tied (then ordered by position) and out of position order.
    from event_sourcing.stores import business_time

    monkeypatch.setattr(postgres_archive, "ROW_GROUP", 2)
    monkeypatch.setattr(business_time, "_PAGE", 3)
    early = datetime(2021, 1, 1, tzinfo=UTC)
    for n in range(1, 41):
        occurred = None if n % 3 == 0 else early + timedelta(days=(n * 7) % 5)
        tiny.append(f"s{n % 4}", [ev(n, occurred)],
                    correlation_id=f"c{n % 6}" if n % 2 else None)
    known = tiny.read_all(after=tiny.head_position() - 1)
    middle = next(iter(known)).created_at  # recorded at or before: all but later appends
    for n in range(4):
        tiny.append(f"s{n}", [ev(100 + n)])  # every head moves past the old partitions
    tiny.seal()

    def reads() -> dict[str, object]:
        return {
            "as_of": [e for e in tiny.read_as_of(LATER) if e.stream_id != ARCHIVE_STREAM],
            "as_of_2021": list(tiny.read_as_of(early + timedelta(days=2))),
            "known_at": list(tiny.read_as_of(LATER, known_at=middle)),
            "correlated": [tiny.read_correlated(f"c{n}") for n in range(6)],
            "typed": list(tiny.read_all(event_types=["thing_happened"], until=middle)),
            "pages": list(tiny.read_all(after=5, limit=7)),
        }

    before = reads()
    assert len(before["as_of_2021"]) > 3 and before["correlated"][1]  # type: ignore[arg-type]
    assert archive(tiny, LATER)
    assert tiny.recorder.query("SELECT count(*) FROM mlevents_archives")[0][0] >= 2
    after = reads()
    for key in before:
        assert after[key] == before[key], key


def test_a_store_without_an_archive_never_loads_pyarrow_or_pandas(pg_schema_url: str) -> None:
    # (in a process of its own: this one has loaded them for other tests)
    script = f"""
import sys
from datetime import UTC, datetime
import event_sourcing as es
with es.connect({pg_schema_url!r}, validate=False) as store:
    store.append("s", [es.NewEvent("thing_happened", {{"n": 1}})], correlation_id="c")
    list(store.read_all()); store.read_correlated("c"); list(store.read_as_of(datetime.now(UTC)))
    store.counts_by_type(); store.seal(); assert store.verify().ok
    print(sorted(name for name in ("pyarrow", "pandas", "numpy") if name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_partition_holding_stream_heads_is_archived(tiny: es.EventStore) -> None:
    for n in range(1, 13):
        tiny.append(f"only{n}", [ev(n)])  # every event is its stream's head
    tiny.seal()
    done = archive(tiny, LATER)
    assert done and done[0].from_position <= 1
    assert [e.version for e in tiny.read_stream("only1")] == [1]
    # Appends go on from the archived head (tests/test_archive_heads.py: every head mode).
    tiny.append("only1", [ev(99)], expected_version=1)
    assert [e.payload["n"] for e in tiny.read_stream("only1")] == [1, 99]
    assert tiny.verify().ok


def test_unsealed_or_recent_partitions_are_kept(tiny: es.EventStore) -> None:
    _fill(tiny)
    assert archive(tiny, LATER) == []  # nothing sealed
    tiny.seal()
    assert archive(tiny, datetime(2000, 1, 1, tzinfo=UTC)) == []  # nothing that old


def test_pandas_reads_the_archive_files(tiny: es.EventStore, archive_artifacts: Path) -> None:
    _fill(tiny)
    tiny.seal()
    done = archive(tiny, LATER)
    # The documented example (docs/archive.md): the files are plain Parquet.
    uris = [row[0] for row in tiny.recorder.query("SELECT uri FROM mlevents_archives")]
    assert sorted(uris) == sorted(r.uri for r in done)
    files = [tiny.recorder.artifacts.path_for(uri) for uri in uris]
    frame = pd.concat(pd.read_parquet(path) for path in files)
    frame["payload"] = frame["payload"].map(json.loads)
    assert len(frame) == sum(r.count for r in done)
    assert list(frame["position"]) == sorted(frame["position"])
    by_type = frame.groupby("event_type").size().to_dict()
    assert by_type == {"thing_happened": len(frame)}
    assert frame["payload"].iloc[0]["n"] >= 1


def test_archive_cli(pg_schema_url: str, archive_artifacts: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    with es.connect(pg_schema_url, partition_size=SIZE, validate=False) as store:
        _fill(store)
        store.seal()
    assert main(["archive", pg_schema_url, "--before", LATER.isoformat(), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["archived"] and out["archived"][0]["count"] > 0
    assert main(["archive", pg_schema_url, "--before", "last tuesday"]) == 2
    assert "not an ISO 8601 date" in capsys.readouterr().err


def test_sqlite_refuses_to_archive(tmp_path: Path, archive_artifacts: Path) -> None:
    with es.connect(f"sqlite:///{tmp_path / 's.db'}", validate=False) as store:
        store.append("a", [ev(1)])
        store.seal()
        with pytest.raises(ArchiveError, match="PostgreSQL"):
            archive(store, LATER)
    assert main(["archive", f"sqlite:///{tmp_path / 's.db'}", "--before", "2030-01-01"]) == 2


def test_a_file_that_does_not_read_back_drops_nothing(
    tiny: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(tiny)
    tiny.seal()
    before = list(tiny.read_all())
    forged = postgres_archive._SELECT.replace(
        "payload, metadata", "payload || '{\"forged\": 1}'::jsonb, metadata"
    )
    monkeypatch.setattr(postgres_archive, "_SELECT", forged)
    with pytest.raises(IntegrityError, match="nothing was dropped"):
        archive(tiny, LATER)
    assert tiny.recorder.query("SELECT * FROM mlevents_archives") == []
    assert tiny.read_stream(ARCHIVE_STREAM) == []
    assert list(tiny.read_all()) == before


def test_a_changed_archive_file_is_refused(tiny: es.EventStore, archive_artifacts: Path) -> None:
    _fill(tiny)
    tiny.seal()
    done = archive(tiny, LATER)
    path = tiny.recorder.artifacts.path_for(done[0].uri)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with (
        es.connect(tiny.recorder.url, schema=tiny.recorder.schema, validate=False) as other,
        pytest.raises(ArchiveError, match="cannot be read"),
    ):
        list(other.read_all())


def test_a_projection_rebuild_reads_the_archive(tiny: es.EventStore) -> None:
    from _projection_worker import counter_projection, totals

    from event_sourcing.projections import ProjectionRunner

    total = 0
    for value in range(1, 41):
        tiny.append(f"t{value % 4}", [es.NewEvent("tick", {"value": value})])
        total += value
    for n in range(4):  # the streams' heads move past the old partitions
        tiny.append(f"t{n}", [es.NewEvent("noise", {})])
    runner = ProjectionRunner(tiny, [counter_projection()])
    runner.run()
    assert totals(tiny) == (40, total)
    tiny.seal()
    assert archive(tiny, LATER)
    stats = runner.rebuild("counter", batch_size=7)
    assert stats.rebuilt and totals(tiny) == (40, total)


@pytest.fixture
def role_url(pg_schema_url: str) -> Iterator[Callable[[str], str]]:
    """A LOGIN role granted `kind` (mlevents grant): its store URL. Dropped afterwards."""
    from conftest import PG_URL

    roles: list[str] = []

    def make(kind: str) -> str:
        role = f"mlev_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        roles.append(role)
        assert main(["grant", role, f"--{kind}", pg_schema_url, "--apply"]) == 0
        host = PG_URL.removeprefix("postgresql://").partition("@")[2]
        schema = pg_schema_url.partition("schema=")[2]
        return f"postgresql://{role}@{host}?schema={schema}"

    yield make
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        for role in roles:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_reader_reads_through_and_only_the_owner_archives(
    tiny: es.EventStore, role_url: Callable[[str], str]
) -> None:
    _fill(tiny)
    tiny.seal()
    before = _everything(tiny)
    with es.connect(role_url("appender"), validate=False) as appender, pytest.raises(
        es.AccessDeniedError, match="owner"
    ):
        archive(appender, LATER)
    assert tiny.recorder.query("SELECT * FROM mlevents_archives") == []
    assert archive(tiny, LATER)
    with es.connect(role_url("reader"), validate=False) as reader:
        assert _everything(reader) == before
    # The refused run recorded its archive_created; the owner's run of the same file, once.
    assert len(tiny.read_stream(ARCHIVE_STREAM)) == len(
        tiny.recorder.query("SELECT * FROM mlevents_archives")
    )
    assert tiny.verify().ok
