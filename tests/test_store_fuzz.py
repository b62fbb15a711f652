"""Property-based test: random append/read arguments, run on SQLite and PostgreSQL side by side.

Whatever the input, both backends give the same verdict; every failure is an EventStoreError
and writes nothing; whatever is accepted reads back equal, types included, on both.
Bounded: MLEVENTS_FUZZ_EXAMPLES examples (default 100), no deadline (the machine may be slow).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import event_sourcing as es
from tests.conftest import PG_URL, require_pg
from tests.test_store_inputs import same

BASE = datetime(2026, 12, 1, tzinfo=UTC)
SPECIAL = ["\x00", "\ud800", "\udfff", "\ufffd", "e+1", "-0.0", "\\u0000", '"', "\\", "é", "😀"]
STREAMS = ["s1", "s2", "s3"]
TYPES = ["t", "u", "training_progress"]


class Clock:
    """One clock for both stores: an operation gets the same time on each backend."""

    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> datetime:
        return self.now


# -- values: mostly valid (so that appends succeed and are read back), sometimes hostile --------
def mostly(
    valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], one_in: int = 8
) -> st.SearchStrategy[Any]:
    """`odd` one time in `one_in`, else `valid`."""
    return st.integers(1, one_in).flatmap(lambda n: odd if n == one_in else valid)


plain_text = st.text(max_size=6)  # no surrogates (hypothesis leaves them out by default)
odd_text = st.lists(
    st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL)), max_size=5
).map("".join)
text = mostly(plain_text, odd_text, 30)  # inside values, where there are many of them
names = mostly(st.sampled_from(STREAMS), st.one_of(odd_text, st.integers(), st.none()))
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e23, -1e23, 1e16, 1.5e300, 5e-324, -0.0, 1.7976931348623157e308, 1e-7]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
    mostly(floats, st.floats(), 30), text,
)
keys = mostly(text, st.one_of(st.integers(), st.none(), st.booleans(), st.floats()), 30)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return mostly(
        st.one_of(st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)),
        st.one_of(st.tuples(children), st.frozensets(st.integers(), max_size=2)),
        30,
    )


json_values = st.recursive(scalars, _containers, max_leaves=8)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


mappings = mostly(
    st.dictionaries(keys, json_values, max_size=4),
    st.one_of(st.integers(98, 102).map(_nested), st.just([1, 2])),
)
typed_payloads = st.fixed_dictionaries(
    {"step": st.integers(-1, 2**64)},
    optional={"loss": floats, "metrics": st.dictionaries(text, floats, max_size=2)},
)
event_ids = mostly(
    st.one_of(st.none(), st.uuids().map(str)),
    st.sampled_from(["00000000-0000-4000-8000-000000000001", "not-a-uuid", "\x00"]),
)
events = st.builds(
    es.NewEvent,
    type=mostly(st.sampled_from(["t", "u"]), st.one_of(odd_text, st.integers())),
    payload=mappings,
    id=event_ids,
    metadata=st.one_of(st.none(), mappings),
) | st.builds(
    es.NewEvent,
    type=st.just("training_progress"),
    payload=mostly(typed_payloads, mappings),
    id=event_ids,
    metadata=st.one_of(st.none(), mappings),
)
ints = mostly(
    st.integers(-1, 6), st.sampled_from([2**63 - 1, 2**63, True, "1", 1.0, None])
)

# -- operations: (method name, keyword arguments) ---------------------------------------------
# `after` is given as ("index", k): after the k-th event, whatever its position on each backend
# (PostgreSQL positions may have gaps that SQLite's have not).
appends = st.fixed_dictionaries(
    {"stream_id": names, "events": mostly(
        st.lists(events, min_size=1, max_size=3), st.sampled_from([[], "abc", {"a": 1}])
    )},
    optional={
        "expected_version": st.one_of(st.none(), ints), "stream_type": names,
        "correlation_id": names, "causation_id": names, "metadata": st.one_of(st.none(), mappings),
    },
).map(lambda kwargs: ("append", kwargs))
untils = st.one_of(
    st.none(),
    st.integers(-2, 10).map(lambda n: BASE + timedelta(seconds=n)),
    st.datetimes(timezones=st.just(UTC)),  # the whole range both backends hold
    st.sampled_from([datetime(2026, 1, 1), date(2026, 1, 1), "2026-01-01", 0]),
)
type_filters = st.one_of(
    st.none(), st.sampled_from(TYPES), st.lists(st.one_of(st.sampled_from(TYPES), text,
                                                          st.integers()), max_size=3),
)
reads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "after": mostly(
                st.integers(0, 12).map(lambda k: ("index", k)),
                st.sampled_from([-1, 2**63 - 1, 2**63, True, "1", 1.0, None]),
            ),
            "event_types": type_filters, "until": untils, "limit": ints,
        },
    ).map(lambda kwargs: ("read_all", kwargs)),
    st.fixed_dictionaries(
        {"stream_id": names}, optional={"from_version": ints, "to_version": ints}
    ).flatmap(lambda kwargs: st.sampled_from([("read_stream", kwargs), ("iter_stream", kwargs)])),
    st.fixed_dictionaries({"correlation_id": names}).map(lambda kw: ("read_correlated", kw)),
    st.fixed_dictionaries({"event_id": event_ids}).map(lambda kw: ("get_event", kw)),
    st.fixed_dictionaries({"stream_id": names}).map(lambda kw: ("stream_version", kw)),
)
operations = st.one_of(appends, appends, reads)


# -- running one operation on one store -------------------------------------------------------
def _snapshot(store: es.EventStore) -> list[tuple[Any, ...]]:
    return [(e.id, e.stream_id, e.version, e.position) for e in store.read_all()]


def _comparable(result: Any) -> Any:
    """A result without positions (they may differ across backends; their order may not)."""
    if isinstance(result, es.RecordedEvent):  # generated ids differ too
        return result._replace(position=0, id="")
    if isinstance(result, list):
        return [_comparable(item) for item in result]
    return result


def _run(store: es.EventStore, name: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(outcome, result): outcome is "ok" or the EventStoreError class raised."""
    after = kwargs.get("after")
    if isinstance(after, tuple):
        log = [e.position for e in store.read_all()]
        kwargs = {**kwargs, "after": log[after[1] - 1] if 0 < after[1] <= len(log) else 0}
    try:
        result = getattr(store, name)(**kwargs)
        if isinstance(result, Iterator):
            result = list(result)
    except es.EventStoreError as exc:
        return type(exc), None
    return "ok", result


class StorePair:
    """An SQLite store and a PostgreSQL store (in a schema of its own) fed the same calls.

    Examples share the pair (opening one costs a schema's DDL); after a failing example,
    whose calls may have left the two apart, the next example gets a new, empty pair.
    """

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.schemas: list[str] = []
        self.stores: list[es.EventStore] = []
        self.clock = Clock()

    def get(self) -> list[es.EventStore]:
        if not self.stores:
            self.clock = Clock()
            self.schemas.append(f"t_fuzz_{uuid.uuid4().hex[:16]}")
            separator = "&" if "?" in PG_URL else "?"
            self.stores = [
                es.connect(f"sqlite:///{self.tmp_path / self.schemas[-1]}.db",
                           validate=False, clock=self.clock),
                es.connect(f"{PG_URL}{separator}schema={self.schemas[-1]}",
                           validate=False, clock=self.clock),
            ]
        return self.stores

    def discard(self) -> None:
        for store in self.stores:
            store.close()
        self.stores = []


@pytest.fixture
def pair(tmp_path: Any) -> Iterator[StorePair]:
    require_pg()
    stores = StorePair(tmp_path)
    yield stores
    stores.discard()
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        for schema in stores.schemas:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


@settings(
    max_examples=int(os.environ.get("MLEVENTS_FUZZ_EXAMPLES", "100")),
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
    ],
)
@given(ops=st.lists(operations, min_size=1, max_size=4))
def test_random_calls_get_one_verdict_and_exact_values_on_both_backends(
    pair: StorePair, ops: list[tuple[str, dict[str, Any]]]
) -> None:
    backends = pair.get()
    try:
        for name, kwargs in ops:
            _check_call(pair.clock, backends, name, kwargs)
    except BaseException:
        pair.discard()
        raise


def _check_call(
    clock: Clock, backends: list[es.EventStore], name: str, kwargs: dict[str, Any]
) -> None:
    clock.now += timedelta(seconds=1)
    before = [_snapshot(store) for store in backends]
    outcomes = [_run(store, name, kwargs) for store in backends]
    (sqlite_outcome, sqlite_result), (pg_outcome, pg_result) = outcomes
    assert sqlite_outcome == pg_outcome, (name, kwargs, outcomes)
    event(f"{name}: {getattr(sqlite_outcome, '__name__', sqlite_outcome)}")
    if sqlite_outcome != "ok":
        assert [_snapshot(store) for store in backends] == before, "a failed call wrote"
        return
    assert _comparable(sqlite_result) == _comparable(pg_result), (name, kwargs)
    if name == "append":
        _check_appended(backends, kwargs, sqlite_result, pg_result)
    elif name == "read_all":
        positions = [e.position for e in sqlite_result]
        assert positions == sorted(set(positions))


def _check_appended(
    backends: list[es.EventStore], kwargs: dict[str, Any], *results: list[es.RecordedEvent]
) -> None:
    for store, recorded in zip(backends, results, strict=True):
        for new, recorded_event in zip(kwargs["events"], recorded, strict=True):
            read = store.get_event(recorded_event.id)
            assert read == recorded_event
            assert same(read.payload, recorded_event.payload)
            assert same(read.metadata, recorded_event.metadata)
            if new.type not in es.default_registry.types():
                assert same(recorded_event.payload, dict(new.payload))
