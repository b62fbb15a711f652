"""Tamper evidence: every kind of tampering, done as the database's owner with a raw
connection (dropping or disabling the append-only triggers first), is named by `verify`.

Each test runs on SQLite and on PostgreSQL (see the `store_url` fixture).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PG_URL, latest_schema_version, sqlite_texts_inline

import event_sourcing as es
from event_sourcing.cli import main
from event_sourcing.events import new_event_id
from event_sourcing.integrity.audit import (
    ALERT_STREAM,
    SEAL_STREAM,
    IntegrityError,
    IntegrityWarning,
    seals,
)
from event_sourcing.integrity.hashing import (
    EMPTY_ROOT,
    GENESIS,
    canonical_json,
    canonical_json_bytes,
    chain_hash,
    content_hash,
    leaf_hash,
    merkle_root,
    seal_chain,
)
from event_sourcing.stores.postgres_append import append_query
from event_sourcing.stores.recorder import EventRow
from event_sourcing.stores.values import encode_marked

Raw = Callable[..., list[tuple[Any, ...]]]

# Tampering drops triggers; every reconnect then warns (tests that check it use pytest.warns).
pytestmark = pytest.mark.filterwarnings(
    "ignore::event_sourcing.integrity.audit.IntegrityWarning"
)


def ev(step: int, **extra: Any) -> es.NewEvent:
    return es.NewEvent("training_progress", {"step": step, "loss": 1.0 / step, **extra})


@contextmanager
def raw_owner(store_url: str) -> Iterator[Raw]:
    """A raw connection as the database's owner: run(sql, *params) with `?` placeholders,
    autocommitted, returning the rows. The append-only triggers are off while it is open."""
    if store_url.startswith("sqlite"):
        connection = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("DROP TRIGGER IF EXISTS event_store_no_update")
        connection.execute("DROP TRIGGER IF EXISTS event_store_no_delete")

        def run_sqlite(query: str, *params: Any) -> list[tuple[Any, ...]]:
            return connection.execute(query, params).fetchall()

        try:
            yield run_sqlite
        finally:
            connection.close()
        return
    schema = store_url.partition("?schema=")[2]
    with psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}") as pg:
        pg.execute("ALTER TABLE event_store DISABLE TRIGGER USER")

        def run_pg(query: str, *params: Any) -> list[tuple[Any, ...]]:
            cursor = pg.execute(query.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

        yield run_pg


def json_value(store: es.EventStore, text: str) -> str:
    """A JSON literal as the backend's payload column takes it."""
    return text if store.dialect == "sqlite" else json.dumps(json.loads(text))


@pytest.fixture
def history(make_store: Callable[..., es.EventStore]) -> es.EventStore:
    """Two training runs of 3 events each (one batch among them), interleaved."""
    store = make_store()
    store.append("run-a", [ev(1)], expected_version=0)
    store.append("run-b", [ev(1), ev(2)], expected_version=0)
    store.append("run-a", [ev(2)], expected_version=1)
    store.append("run-a", [ev(3)])
    store.append("run-b", [ev(3)], metadata={"user": "alice"})
    return store


def position_of(store: es.EventStore, stream: str, version: int) -> int:
    return store.read_stream(stream, version, version)[0].position


def first_problem(store: es.EventStore, **options: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntegrityWarning)
        report = store.verify(**options)
    assert not report.ok, "tampering went unnoticed"
    return report.first


# -- the hashes themselves ---------------------------------------------------------------------
def _rfc6962(leaves: list[bytes]) -> bytes:
    """MTH as RFC 6962 section 2.1 defines it (recursive split at the largest power of 2)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc6962(leaves[:k]) + _rfc6962(leaves[k:])).digest()


def test_merkle_root_is_rfc6962_for_every_size() -> None:
    for n in range(0, 40):
        leaves = [leaf_hash(p, hashlib.sha256(str(p).encode()).digest()) for p in range(1, n + 1)]
        assert merkle_root(leaves) == _rfc6962(leaves)
    assert merkle_root([]) == EMPTY_ROOT


def test_canonical_json_matches_what_postgresql_jsonb_gives_back() -> None:
    """jsonb keeps values, not text: these are the numbers it prints differently."""
    sent = {"b": 1e20, "a": -0.0, "c": [1.0, 1.5e-07, 10**30, "e+ -0.0"], "é": None}
    returned = {"a": 0.0, "b": 100000000000000000000, "c": [1.0, 1.5e-07, 10**30, "e+ -0.0"],
                "é": None}
    assert canonical_json(sent) == canonical_json(returned)
    assert canonical_json(sent).startswith('{"a":0.0,"b":100000000000000000000,')
    # the number forms docs/integrity.md spells out
    assert canonical_json([1e-05, 100.0, 1.5e-07, 9.99e-06, 0.30000000000000004, 2**70, 1e300]) == (
        "[0.00001,100.0,1.5e-7,9.99e-6,0.30000000000000004,1180591620717411303424,1"
        + "0" * 300 + "]"
    )
    assert canonical_json({"é": "\u2028\x1f\"\\\n"}) == '{"é":"\u2028\\u001f\\"\\\\\\n"}'


def test_chains_seals_and_hashes_are_recomputable_from_the_documented_encoding(
    history: es.EventStore,
) -> None:
    """An auditor's recomputation from docs/integrity.md, independent of the store's code
    paths (client-computed, batch and statement-computed chains all agree)."""
    heads: dict[str, bytes] = {}
    rows = history.recorder.hashed_rows(0, history.head_position(), 1000)
    for row in rows:
        def field(value: str | bytes | None) -> bytes:  # SQLite gives payloads as bytes
            if value is None:
                return b"\xff\xff\xff\xff"
            data = value.encode() if isinstance(value, str) else value
            return len(data).to_bytes(4, "big") + data

        content = hashlib.sha256(
            field(row[1]) + field(row[2]) + field(row[5]) + row[6].to_bytes(8, "big")
            + field(row[7]) + field(row[8]) + field(row[9]) + field(row[10]) + field(row[11])
            + (b"" if row[14] is None else field(row[14]))  # occurred_at, only when given
        ).digest()
        assert bytes(row[12]) == content
        chain = hashlib.sha256(
            heads.get(row[2], bytes(32)) + row[4].to_bytes(8, "big") + field(row[3]) + content
        ).digest()
        assert bytes(row[13]) == chain
        heads[row[2]] = chain
    sealed = history.seal()
    root = merkle_root([leaf_hash(row[0], bytes(row[13])) for row in rows])
    assert (sealed.from_position, sealed.to_position, sealed.count) == (0, rows[-1][0], 6)
    assert sealed.root == root.hex()
    assert sealed.chain == seal_chain(GENESIS, 0, rows[-1][0], 6, root).hex()


# -- an intact log -----------------------------------------------------------------------------
def test_an_untouched_log_verifies(history: es.EventStore) -> None:
    history.seal()
    history.append("run-a", [ev(4)])
    report = history.verify()
    assert report.ok, report.problems
    assert (report.events, report.seals) == (8, 1)


# -- each kind of tampering --------------------------------------------------------------------
def test_every_value_the_store_accepts_verifies(
    make_store: Callable[..., es.EventStore],
) -> None:
    """Hashes cover what the store keeps for every value it accepts (exact floats, integers
    beyond 64 bits, non-ASCII text, times before year 1000), so an honest log verifies."""
    values = {
        "big": 1e23, "huge": 1.7976931348623157e308, "tiny": 5e-324, "neg": -0.0,
        "wide": 2**70, "wider": -(10**300), "text": "é😀 \\u0000 as text", "nested": [[{}], []],
    }
    store = make_store(validate=False)
    store.append("edge", [es.NewEvent("edge_values", values, metadata={"k": 2**65})])
    past = make_store(validate=False, clock=lambda: datetime(999, 5, 1, tzinfo=UTC))
    past.append("edge", [es.NewEvent("edge_values", {"when": "then"})])
    store.seal()
    report = store.verify()
    assert report.ok, report.problems
    assert report.events == 3


def test_an_edited_payload_is_named(history: es.EventStore, store_url: str) -> None:
    target = position_of(history, "run-b", 2)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET payload = ? WHERE position = ?",
            json_value(history, '{"step":2,"loss":0.001}'), target)
    problem = first_problem(history)
    assert (problem.position, problem.stream_id, problem.version, problem.kind) == (
        target, "run-b", 2, "content")


def test_edited_metadata_is_named(history: es.EventStore, store_url: str) -> None:
    target = position_of(history, "run-b", 3)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET metadata = ? WHERE position = ?",
            json_value(history, '{"user":"mallory"}'), target)
    problem = first_problem(history)
    assert (problem.position, problem.kind) == (target, "content")


def test_an_edited_time_is_named(history: es.EventStore, store_url: str) -> None:
    target = position_of(history, "run-a", 2)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET created_at = ? WHERE position = ?",
            "2020-01-01T00:00:00.000000+00:00", target)
    problem = first_problem(history)
    assert (problem.position, problem.stream_id, problem.kind) == (target, "run-a", "content")


def test_business_time_is_hashed_only_when_given(history: es.EventStore) -> None:
    """An event without occurred_at hashes as before business time existed; one with it
    hashes F(occurred_at) last (docs/integrity.md)."""
    jan = datetime(2024, 1, 1, tzinfo=UTC)
    dated, undated = history.append("run-c", [es.NewEvent(ev(1).type, ev(1).payload,
                                                          occurred_at=jan), ev(2)])
    rows = history.recorder.hashed_rows(dated.position - 1, undated.position, 2)
    for row, occurred in zip(rows, ("2024-01-01T00:00:00.000000+00:00", None), strict=True):
        assert row[14] == occurred
        fields = (*row[1:3], *row[5:12])
        assert bytes(row[12]) == content_hash(*fields, occurred_at=row[14])
        if occurred is None:
            assert bytes(row[12]) == content_hash(*fields)
        else:
            assert bytes(row[12]) != content_hash(*fields)
    assert history.verify().ok


def test_an_edited_occurred_at_is_named(history: es.EventStore, store_url: str) -> None:
    jan = datetime(2024, 1, 1, tzinfo=UTC)
    (dated,) = history.append("run-c", [ev(1)], occurred_at=jan)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET occurred_at = ? WHERE position = ?",
            "2023-01-01T00:00:00.000000+00:00", dated.position)
    problem = first_problem(history)
    assert (problem.position, problem.stream_id, problem.kind) == (
        dated.position, "run-c", "content")


def test_an_occurred_at_slipped_into_an_event_is_named(
    history: es.EventStore, store_url: str
) -> None:
    """Backdating an event that had no business time changes its hash too."""
    target = position_of(history, "run-a", 2)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET occurred_at = ? WHERE position = ?",
            "2020-01-01T00:00:00.000000+00:00", target)
    problem = first_problem(history)
    assert (problem.position, problem.stream_id, problem.kind) == (target, "run-a", "content")


def test_an_edit_with_recomputed_content_hash_breaks_the_chain(
    history: es.EventStore, store_url: str
) -> None:
    target = position_of(history, "run-a", 2)
    with raw_owner(store_url) as run:
        row = history.recorder.hashed_rows(target - 1, target, 1)[0]
        new_payload = '{"loss":0.001,"step":2}'
        forged = content_hash(row[1], row[2], row[5], row[6], new_payload, row[8], row[9],
                              row[10], row[11])
        run("UPDATE event_store SET payload = ?, content_hash = ? WHERE position = ?",
            new_payload, forged, target)
    problem = first_problem(history)
    assert (problem.position, problem.kind) == (target, "chain")


def test_a_deleted_event_is_named(history: es.EventStore, store_url: str) -> None:
    gone = position_of(history, "run-a", 2)
    after = position_of(history, "run-a", 3)
    with raw_owner(store_url) as run:
        run("DELETE FROM event_store WHERE position = ?", gone)
    report_first = first_problem(history)
    if history.dialect == "sqlite":  # contiguous positions: the hole itself is named
        assert (report_first.position, report_first.kind) == (gone, "missing")
    problems = history.verify().problems
    assert any(
        (p.position, p.stream_id, p.version, p.kind) == (after, "run-a", 3, "version")
        for p in problems
    ), problems


def test_deleting_a_streams_last_event_inside_a_seal_is_named(
    history: es.EventStore, store_url: str
) -> None:
    """No chain notices a stream losing its last event; the seal's Merkle root does."""
    sealed = history.seal()
    with raw_owner(store_url) as run:
        run("DELETE FROM event_store WHERE position = ?", position_of(history, "run-b", 3))
    problems = history.verify().problems
    seal_problem = next(p for p in problems if p.kind == "seal")
    assert seal_problem.position == sealed.position
    assert "Merkle root differs" in seal_problem.detail


def test_an_inserted_forged_event_is_named(history: es.EventStore, store_url: str) -> None:
    """A row INSERTed behind the store's back, with hashes copied from a real event."""
    with raw_owner(store_url) as run:
        head = history.head_position()
        source = run("SELECT stream_type, content_hash, chain_hash FROM event_store "
                     "WHERE position = ?", head)[0]
        # SQLite positions are max + 1; PostgreSQL's come from the sequence
        position = "?" if history.dialect == "sqlite" else "nextval('event_position_seq')"
        forged = run(
            "INSERT INTO event_store (position, id, stream_id, stream_type, version, "
            "event_type, schema_version, payload, metadata, created_at, content_hash, "
            f"chain_hash) VALUES ({position}, ?, 'run-a', ?, 4, 'model_deployed', 1, ?, ?, ?, "
            "?, ?) RETURNING position",
            *([head + 1] if history.dialect == "sqlite" else []),
            "00000000-0000-4000-8000-000000000001", source[0],
            json_value(history, '{"model_id":"m","model_version":1}'),
            json_value(history, "{}"), "2026-12-01T00:00:00.000000+00:00", source[1],
            source[2],
        )[0][0]
    problem = first_problem(history)
    assert (problem.position, problem.stream_id, problem.version) == (forged, "run-a", 4)
    assert problem.kind == "content"


def test_swapped_versions_are_named(history: es.EventStore, store_url: str) -> None:
    second, third = position_of(history, "run-a", 2), position_of(history, "run-a", 3)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET version = 99 WHERE position = ?", second)
        run("UPDATE event_store SET version = 2 WHERE position = ?", third)
        run("UPDATE event_store SET version = 3 WHERE position = ?", second)
    problem = first_problem(history)
    assert (problem.position, problem.stream_id, problem.version) == (second, "run-a", 3)
    assert problem.kind == "version"


def test_a_truncated_tail_after_the_last_seal_is_named(
    history: es.EventStore, store_url: str
) -> None:
    history.seal()
    history.append("run-a", [ev(4)])
    tail = history.append("run-c", [ev(1)])[0].position
    assert history.verify().ok  # remembers how far it got
    with raw_owner(store_url) as run:
        run("DELETE FROM event_store WHERE position >= ?", tail - 1)
    for since in (False, True):
        problems = history.verify(since_last_verified=since).problems
        assert [(p.kind, p.position) for p in problems] == [("truncated", tail)], problems


def test_truncating_the_last_seal_itself_is_named(
    history: es.EventStore, store_url: str
) -> None:
    history.seal()
    last = history.seal()
    assert history.verify(since_last_verified=True).ok
    with raw_owner(store_url) as run:
        run("DELETE FROM event_store WHERE position >= ?", last.position)
    problems = history.verify(since_last_verified=True).problems
    assert {p.kind for p in problems} == {"seal", "truncated"}, problems
    assert any(p.kind == "seal" and "is gone" in p.detail for p in problems)


# -- triggers ----------------------------------------------------------------------------------
def _trigger_off(store_url: str, how: str) -> None:
    """Drop (SQLite, PostgreSQL) or disable (PostgreSQL) the no-update trigger."""
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as connection:
            connection.execute("DROP TRIGGER event_store_no_update")
        return
    schema = store_url.partition("?schema=")[2]
    with psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}") as pg:
        if how == "missing":
            pg.execute("DROP TRIGGER event_store_no_update ON event_store")
        else:
            pg.execute("ALTER TABLE event_store DISABLE TRIGGER event_store_no_update")


def _restores_and_reports(store: es.EventStore, store_url: str, how: str,
                          caplog: pytest.LogCaptureFixture) -> None:
    edited = position_of(store, "run-a", 1)
    _trigger_off(store_url, how)
    with raw_owner(store_url) as run:  # the edit the missing trigger let through
        run("UPDATE event_store SET payload = ? WHERE position = ?",
            json_value(store, '{"step":1,"loss":0.999}'), edited)
    # (raw_owner turned every trigger off: put the others back, as the attacker would)
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as connection:
            connection.execute(
                "CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store "
                "BEGIN SELECT RAISE(ABORT, 'event_store is append-only'); END"
            )
    else:
        schema = store_url.partition("?schema=")[2]
        with psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}") as pg:
            pg.execute("ALTER TABLE event_store ENABLE TRIGGER event_store_no_delete")
            pg.execute("ALTER TABLE event_store ENABLE TRIGGER event_store_no_truncate")
            pg.execute("ALTER TABLE event_store ENABLE TRIGGER event_store_assign_position")
    with pytest.warns(IntegrityWarning, match=f"event_store_no_update was {how}"):
        reopened = es.connect(store_url)
    try:
        assert "not append-only" in caplog.text
        [alert] = reopened.read_stream(ALERT_STREAM)
        assert alert.event_type == "integrity_triggers_restored"
        assert alert.payload["restored"] is True
        assert alert.payload["problems"] == [f"trigger event_store_no_update was {how}"]
        with pytest.raises(Exception, match="append-only"), reopened.transaction() as tx:
            tx.execute("UPDATE event_store SET payload = payload")
        report = reopened.verify()
        assert [(p.position, p.kind) for p in report.problems] == [(edited, "content")]
        assert [(w.position, w.kind) for w in report.warnings] == [(alert.position, "triggers")]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing left to restore: connect stays quiet
            es.connect(store_url).close()
    finally:
        reopened.close()


def test_connect_recreates_a_dropped_trigger_loudly_and_verify_shows_what_changed(
    history: es.EventStore, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _restores_and_reports(history, store_url, "missing", caplog)


def test_connect_reenables_a_disabled_postgresql_trigger(
    pg_schema_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = es.connect(pg_schema_url)
    store.append("run-a", [ev(1)])
    try:
        _restores_and_reports(store, pg_schema_url, "disabled", caplog)
    finally:
        store.close()


# -- seals, witnesses and incremental verification --------------------------------------------
def test_seals_chain_cover_contiguous_ranges_and_export(history: es.EventStore) -> None:
    first = history.seal()
    history.append("run-a", [ev(4)])
    second = history.seal()
    third = history.seal()
    assert [s.number for s in seals(history)] == [1, 2, 3]
    assert (first.from_position, first.count) == (0, 6)
    assert second.from_position == first.to_position and second.previous == first.chain
    assert second.count == 2  # the first seal's own event and the new one
    assert third.count == 1  # nothing new but the second seal's own event
    assert history.read_stream(SEAL_STREAM)[0].event_type == "integrity_sealed"


def test_a_postgresql_seal_covers_only_settled_positions(pg_schema_url: str) -> None:
    """An append in flight (uncommitted, its position taken) holds the seal below it, as it
    holds readers back (docs/ordering.md); the next seal covers it once committed."""
    store = es.connect(pg_schema_url)
    store.append("run-a", [ev(1)])
    base, _, schema = pg_schema_url.partition("?schema=")
    slow = psycopg.connect(base, options=f"-c search_path={schema}")  # not autocommit
    try:
        row = EventRow(new_event_id(), "training_progress", 1, '{"step":2,"loss":0.5}', "{}")
        in_flight = slow.execute(
            *append_query("run-b", None, None, [row], datetime.now(UTC), None, None)
        ).fetchone()[2]
        later = store.append("run-c", [ev(1)])[0].position
        first = store.seal()
        assert first.to_position < in_flight < later and first.count == 1
        slow.commit()
    finally:
        slow.close()
    second = store.seal()
    assert second.from_position == first.to_position
    assert second.count == 3  # the append that was in flight, run-c's, the first seal's own
    assert store.verify().ok
    store.close()


def test_seal_refuses_to_bless_a_tampered_range(history: es.EventStore, store_url: str) -> None:
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET created_at = ? WHERE position = ?",
            "2020-01-01T00:00:00.000000+00:00", position_of(history, "run-b", 1))
    with pytest.raises(IntegrityError, match="do not verify"):
        history.seal()
    assert seals(history) == []


def _recompute_everything(store: es.EventStore, run: Raw) -> None:
    """What an attacker with the algorithm does after an edit: recompute every content hash,
    chain and seal, so the store is consistent with itself again, and forget what earlier
    verifications saw."""
    run("DELETE FROM mlevents_integrity_checkpoint")
    heads: dict[str, bytes] = {}
    leaves: list[tuple[int, bytes]] = []
    previous_seal = GENESIS
    for row in store.recorder.hashed_rows(0, store.head_position(), 10_000):
        payload = row[7]
        if row[5] == "integrity_sealed":
            sealed = json.loads(payload)
            covered = [leaf for p, leaf in leaves
                       if sealed["from_position"] < p <= sealed["to_position"]]
            root = merkle_root(covered)
            sealed.update(root=root.hex(), count=len(covered), previous=previous_seal.hex())
            previous_seal = seal_chain(previous_seal, sealed["from_position"],
                                       sealed["to_position"], len(covered), root)
            sealed["chain"] = previous_seal.hex()
            payload = canonical_json(sealed)
            run("UPDATE event_store SET payload = ? WHERE position = ?",
                json_value(store, payload), row[0])
        content = content_hash(row[1], row[2], row[5], row[6], payload, row[8], row[9],
                               row[10], row[11])
        chain = chain_hash(heads.get(row[2], GENESIS), row[4], row[3], content)
        heads[row[2]] = chain
        leaves.append((row[0], leaf_hash(row[0], chain)))
        run("UPDATE event_store SET content_hash = ?, chain_hash = ? WHERE position = ?",
            content, chain, row[0])


def test_a_witness_catches_a_rewrite_with_every_hash_and_seal_recomputed(
    history: es.EventStore, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history.seal()
    witness = tmp_path / "witness.json"
    assert main(["seal", store_url, "--json"]) == 0
    witness.write_text(capsys.readouterr().out)
    target = position_of(history, "run-a", 2)
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET payload = ? WHERE position = ?",
            json_value(history, '{"loss":0.001,"step":2}'), target)
        _recompute_everything(history, run)
    assert history.verify().ok, "the rewrite is consistent: only a witness can tell"
    report = history.verify(against=witness)
    assert [(p.kind, p.version) for p in report.problems] == [("witness", 1), ("witness", 2)]
    assert "rewritten and re-sealed" in report.problems[0].detail
    assert main(["verify", store_url, "--against", str(witness)]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_verify_since_last_verified_reads_only_new_events(
    history: es.EventStore, store_url: str
) -> None:
    history.seal()
    assert history.verify(since_last_verified=True).events == 7  # first run: everything
    history.append("run-a", [ev(4)])
    history.append("run-d", [ev(1)])
    report = history.verify(since_last_verified=True)
    assert report.ok and report.events == 3  # the seal's own event and the two new ones
    history.seal()
    history.append("run-a", [ev(5)])
    # from the last seal a verification accepted (the first): 2 seals, 2 events since
    assert history.verify(since_last_verified=True).events == 5
    report = history.verify(since_last_verified=True)  # after the last verified seal only
    assert report.ok and report.events == 2
    edited = history.append("run-a", [ev(6)])[0].position
    with raw_owner(store_url) as run:
        run("UPDATE event_store SET created_at = ? WHERE position = ?",
            "2020-01-01T00:00:00.000000+00:00", edited)
    problem = first_problem(history, since_last_verified=True)
    assert (problem.position, problem.stream_id, problem.version) == (edited, "run-a", 6)


def test_cli_verify_reports_ok(history: es.EventStore, store_url: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seal", store_url]) == 0
    assert main(["verify", store_url, "--since-last-verified"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", store_url, "--against", "/nonexistent/witness.json"]) == 2


# -- migration ---------------------------------------------------------------------------------
def test_a_version_2_store_gets_its_chains_on_connect(
    make_store: Callable[..., es.EventStore], history: es.EventStore
) -> None:
    """Schema v2 had no hashes; connect adds them, computed in order exactly as appends
    compute them."""
    expected = [row[12:14] for row in history.recorder.hashed_rows(0, 10**9, 1000)]
    with history.transaction() as tx:  # put the database back into its v2 shape
        if history.dialect == "sqlite":
            sqlite_texts_inline(tx)
        tx.execute("ALTER TABLE event_store DROP COLUMN content_hash")
        tx.execute("ALTER TABLE event_store DROP COLUMN chain_hash")
        if history.dialect == "sqlite":
            tx.execute("DROP INDEX idx_event_store_occurred")
        tx.execute("ALTER TABLE event_store DROP COLUMN occurred_at")
        tx.execute("DELETE FROM mlevents_schema")
        tx.execute("INSERT INTO mlevents_schema (version, applied_at, description) "
                   "VALUES (2, '2026-01-01', 'v2')")
        if history.dialect == "postgresql":
            tx.execute("DROP AGGREGATE mlevents_chain(bytea, bytea)")
            tx.execute("DROP FUNCTION mlevents_chain_step(bytea, bytea, bytea)")
    history.close()
    migrated = make_store()
    rows = migrated.recorder.hashed_rows(0, 10**9, 1000)
    assert [tuple(bytes(h) for h in row[12:14]) for row in rows] == [
        tuple(bytes(h) for h in pair) for pair in expected
    ]
    with migrated.transaction() as tx:
        assert tx.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0] == (
            latest_schema_version(migrated.dialect))
        with pytest.raises(Exception, match="append-only"):
            tx.execute("UPDATE event_store SET version = version")
    migrated.append("run-a", [ev(4)], expected_version=3)
    migrated.append("run-b", [ev(4), ev(5)])
    assert migrated.verify().ok


def test_a_version_4_postgres_store_is_migrated_to_the_latest(pg_schema_url: str) -> None:
    """v5 replaces the B-tree on created_at by a block range index, v6 adds occurred_at;
    every event stays, verifies, and `until` reads and appends (dated ones too) go on."""
    store = es.connect(pg_schema_url)
    store.append("run-a", [ev(1), ev(2)], correlation_id="job")
    store.append("run-b", [ev(1)])
    store.seal()
    before = list(store.read_all())
    with store.transaction() as tx:  # put the database back into its v4 shape
        tx.execute("DROP INDEX idx_event_store_occurred")
        tx.execute("ALTER TABLE event_store DROP COLUMN occurred_at")
        tx.execute("DROP INDEX idx_event_store_time_range")
        tx.execute("CREATE INDEX idx_event_store_time ON event_store (created_at)")
        tx.execute("DELETE FROM mlevents_schema")
        tx.execute("INSERT INTO mlevents_schema (version, applied_at, description) "
                   "VALUES (4, '2026-01-01', 'v4')")
    store.close()
    migrated = es.connect(pg_schema_url)
    try:
        with migrated.transaction() as tx:
            assert tx.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0] == (
                latest_schema_version("postgresql"))
            indexes = {row[0]: row[1] for row in tx.execute(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename = 'event_store'"
            ).fetchall()}
        assert "idx_event_store_time" not in indexes
        assert "USING brin (created_at)" in indexes["idx_event_store_time_range"]
        assert "(occurred_at, \"position\") WHERE (occurred_at IS NOT NULL)" in (
            indexes["idx_event_store_occurred"])
        assert list(migrated.read_all()) == before
        assert list(migrated.read_all(until=before[0].created_at)) == [
            e for e in before if e.created_at <= before[0].created_at
        ]
        migrated.append("run-a", [ev(3)], expected_version=2)
        dated = datetime(2024, 1, 1, tzinfo=UTC)
        (backfilled,) = migrated.append("run-b", [ev(2)], occurred_at=dated)
        assert backfilled.occurred_at == dated == migrated.read_stream("run-b")[-1].occurred_at
        report = migrated.verify()
        assert report.ok, report.problems
        assert report.events == len(before) + 2
    finally:
        migrated.close()


class _Float(float):
    """A float subclass (as numpy's float64 is): orjson refuses it, the json module writes it."""


@pytest.mark.parametrize(("value", "marked"), [
    ({"b": 1, "a": [0.1, 1e-7, 1e15, 123456789012345.6], "é": "ü😀", "c": {"z": None}}, True),
    ({"max": 2**64 - 1, "min": -(2**63)}, True), ({}, True),
    ({"big": 1e23}, False), ({"neg": -0.0}, False), ({"wide": 2**70}, False),
    ({"text": "1e+5 as text"}, False), ({"sub": _Float(1e-7)}, False),
])
def test_text_marked_canonical_is_what_the_hash_covers(
    value: dict[str, Any], marked: bool
) -> None:
    """PostgreSQL hashes a payload's text as is when encode marks it canonical: it must then
    be byte for byte the canonical JSON of the value a reader decodes."""
    text, _, decoded, canonical = encode_marked(value, "payload")
    assert canonical == marked
    if canonical:
        assert text.encode() == canonical_json_bytes(decoded)


def test_events_hashed_from_their_text_verify(make_store: Callable[..., es.EventStore]) -> None:
    store = make_store(validate=False)
    store.append("mixed", [
        es.NewEvent("t", {"b": 1, "a": 0.1}, metadata={"z": 1, "y": "ü"}),
        es.NewEvent("t", {"big": 1e23}, metadata={"k": 2**65}),
        es.NewEvent("t", {"sub": _Float(1e-7)}),
    ], metadata={"run": "r"})
    report = store.verify()
    assert report.ok, report.problems
