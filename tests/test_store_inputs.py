"""Hostile values and arguments: same verdict on every backend, exact round trips, no raw errors."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

import event_sourcing as es
from event_sourcing.catalog import TrainingStarted
from event_sourcing.stores import store as store_module
from event_sourcing.stores.arguments import MAX_BATCH_BYTES, MAX_BATCH_EVENTS
from event_sourcing.stores.values import MAX_NESTING_DEPTH

SHA = "a" * 64


@pytest.fixture
def loose(make_store: Callable[..., es.EventStore]) -> es.EventStore:
    return make_store(validate=False)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def nested(depth: int) -> dict[str, Any]:
    """A payload whose objects nest `depth` levels deep (the payload itself is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# -- item 3: values round-trip exactly, type included -----------------------------------------
FLOATS = [
    1e23, -1e23, 1e16, 1.2345678901234567e16, 1.5e300, 1.7976931348623157e308, 5e-324,
    2.2250738585072014e-308, 1e-7, 1.5e-7, 0.1, 1.0, 0.0, 100.0, 123456789012345680.0,
]
INTS = [0, -1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 + 1, -(2**63) - 1, 10**100, -(10**300)]


def test_floats_and_big_ints_read_back_exactly(loose: es.EventStore) -> None:
    payload = {
        "floats": FLOATS, "ints": INTS, "f": 1e23, "i": 10**30, "mixed": [1, 1.0, True, None],
        "deep": {"x": [{"y": 1e300}]},
    }
    metadata = {"m": 1e23, "big": 2**70}
    appended = loose.append("s", [es.NewEvent("t", payload, metadata=metadata)])[0]
    read = [
        next(iter(loose.read_all())), loose.read_stream("s")[0],
        loose.get_event(appended.id), next(loose.iter_stream("s")),
    ]
    for event in [appended, *read]:
        assert event is not None
        assert same(event.payload, payload), event.payload
        assert same(event.metadata, metadata), event.metadata


def test_typed_event_floats_read_back_as_floats(store: es.EventStore) -> None:
    config = {"lr": 1e23, "eps": 1e-300, "n": 2**64}
    store.append("run", [TrainingStarted(config=config, dataset_id="wine", dataset_version=SHA)])
    (event,) = store.read_stream("run")
    assert same(event.payload["config"], config)
    assert same(es.default_registry.parse(event).config, config)


def test_negative_zero_reads_back_as_zero_on_every_backend(loose: es.EventStore) -> None:
    # PostgreSQL's numeric has no -0.0: both backends store 0.0 (they compare equal).
    appended = loose.append("s", [es.NewEvent("t", {"z": -0.0, "l": [-0.0]})])[0]
    for payload in (appended.payload, loose.read_stream("s")[0].payload):
        assert same(payload, {"z": 0.0, "l": [0.0]})
        assert math.copysign(1, payload["z"]) == 1


def test_retry_of_a_batch_with_large_floats_is_idempotent(loose: es.EventStore) -> None:
    batch = [es.NewEvent("t", {"x": f, "i": 2**70}, id=str(uuid.uuid4())) for f in FLOATS]
    first = loose.append("s", batch, expected_version=0)
    head = loose.head_position()
    assert loose.append("s", batch, expected_version=0) == first
    assert loose.append("s", batch) == first
    assert loose.head_position() == head


def test_idempotency_compares_types_not_just_values(loose: es.EventStore) -> None:
    event_id = str(uuid.uuid4())
    loose.append("s", [es.NewEvent("t", {"x": 1.0}, id=event_id)])
    for other in (1, True):  # equal to 1.0 in Python, but another value once stored
        with pytest.raises(es.DuplicateEventError, match="different content"):
            loose.append("s", [es.NewEvent("t", {"x": other}, id=event_id)])
    assert loose.head_position() == 1


def test_a_batch_mixing_new_and_recorded_ids_is_refused(loose: es.EventStore) -> None:
    recorded = str(uuid.uuid4())
    batch = [es.NewEvent("t", {"i": 1}), es.NewEvent("t", {"i": 2}, id=recorded)]
    loose.append("s", batch)
    # The fresh ids of the first event make this another batch, not a retry of the first.
    with pytest.raises(es.DuplicateEventError, match="same batch"):
        loose.append("s", batch)
    with pytest.raises(es.DuplicateEventError, match="same batch"):
        loose.append("s", [es.NewEvent("t", {"i": 1}, id=str(uuid.uuid4())), batch[1]])
    assert [e.version for e in loose.read_all()] == [1, 2]


def test_payload_stays_queryable_as_jsonb(pg_schema_url: str) -> None:
    with es.connect(pg_schema_url, validate=False) as pg:
        pg.append("s", [es.NewEvent("t", {"loss": 1e23, "name": "x", "n": [1, 2]})])
        with pg.transaction() as tx:
            row = tx.execute(
                "SELECT jsonb_typeof(payload), (payload->>'loss')::float8, payload->>'name', "
                "jsonb_array_length(payload->'n') FROM event_store"
            ).fetchone()
    assert tuple(row) == ("object", 1e23, "x", 2)


# -- item 4: one verdict on both backends, an EventStoreError, nothing written ---------------
def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


BAD_VALUES: list[Any] = [
    pytest.param({"payload": {"s": "a\x00b"}}, "NUL", id="nul-in-string"),
    pytest.param({"payload": {"a\x00": 1}}, "NUL", id="nul-in-key"),
    pytest.param({"payload": {"l": ["\x00"]}}, "NUL", id="nul-in-list"),
    pytest.param({"payload": {"s": "\u00e9\x00"}}, "NUL", id="nul-after-non-ascii"),
    pytest.param({"event_metadata": {"m": "\x00"}}, "NUL", id="nul-in-metadata"),
    pytest.param({"metadata": {"\x00": 1}}, "NUL", id="nul-in-batch-metadata-key"),
    pytest.param({"payload": {"s": "\ud800"}}, "surrogate", id="surrogate-in-string"),
    pytest.param({"payload": {"\udfff": 1}}, "surrogate", id="surrogate-in-key"),
    pytest.param({"payload": {"s": "ok \ud83d"}}, "surrogate", id="half-an-emoji"),
    pytest.param({"event_metadata": {"m": "\ud800"}}, "surrogate", id="surrogate-in-metadata"),
    pytest.param({"payload": nested(10_000)}, "levels deep", id="nesting-10000"),
    pytest.param({"payload": nested(MAX_NESTING_DEPTH + 1)}, "levels deep", id="nesting-101"),
    pytest.param({"payload": {"l": [[[[[[]]]]]] * 3, "d": nested(MAX_NESTING_DEPTH)}},
                 "levels deep", id="nesting-101-after-wide"),
    pytest.param({"metadata": nested(MAX_NESTING_DEPTH + 1)}, "levels deep",
                 id="nesting-in-metadata"),
    pytest.param({"payload": {"x": math.nan}}, "NaN", id="nan"),
    pytest.param({"payload": {"x": [-math.inf]}}, "NaN", id="minus-inf"),
    pytest.param({"payload": {1: "a"}}, "string keys", id="int-key"),
    pytest.param({"payload": {"d": {None: 1}}}, "string keys", id="none-key"),
    pytest.param({"payload": {"d": {1.5: 1, "1.5": 2}}}, "string keys", id="colliding-keys"),
    pytest.param({"payload": {True: 1}}, "string keys", id="bool-key"),
    pytest.param({"payload": {(1, 2): 1}}, "JSON", id="tuple-key"),
    pytest.param({"event_metadata": {2: "x"}}, "string keys", id="int-key-in-metadata"),
    pytest.param({"payload": {"t": (1, 2)}}, "tuple", id="tuple-value"),
    pytest.param({"payload": {"c": _circular()}}, "itself", id="circular"),
    pytest.param({"payload": {"n": 10**5000}}, "digits", id="int-of-5000-digits"),
    pytest.param({"stream_id": "s\x00"}, "NUL", id="nul-in-stream-id"),
    pytest.param({"stream_id": "s\ud800"}, "surrogate", id="surrogate-in-stream-id"),
    pytest.param({"stream_type": "k\x00"}, "NUL", id="nul-in-stream-type"),
    pytest.param({"correlation_id": "\x00"}, "NUL", id="nul-in-correlation-id"),
    pytest.param({"causation_id": "c\udc80"}, "surrogate", id="surrogate-in-causation-id"),
    pytest.param({"type": "t\x00"}, "NUL", id="nul-in-event-type"),
    pytest.param({"type": "\ud800"}, "surrogate", id="surrogate-in-event-type"),
    pytest.param({"type": ["t"]}, "type", id="unhashable-event-type"),
    pytest.param({"expected_version": 2**63}, "expected_version", id="expected-version-2**63"),
    pytest.param({"expected_version": "1"}, "expected_version", id="expected-version-str"),
    pytest.param({"expected_version": 1.0}, "expected_version", id="expected-version-float"),
    pytest.param({"events": "abc"}, "sequence", id="events-a-string"),
    pytest.param({"events": {"a": 1}}, "sequence", id="events-a-dict"),
]


@pytest.mark.parametrize(("case", "match"), BAD_VALUES)
def test_bad_values_are_refused_alike_and_write_nothing(
    loose: es.EventStore, case: dict[str, Any], match: str
) -> None:
    loose.append("existing", [es.NewEvent("t", {"n": 1})])
    case = dict(case)  # shared by both backends' runs
    event = es.NewEvent(
        case.pop("type", "t"), case.pop("payload", {"n": 1}),
        metadata=case.pop("event_metadata", None),
    )
    arguments: dict[str, Any] = {"stream_id": "s", "events": [es.NewEvent("t", {}), event]}
    arguments.update(case)
    with pytest.raises(es.EventValidationError, match=match):
        loose.append(**arguments)
    assert loose.head_position() == 1
    assert loose.stream_version("s") == 0
    assert [e.stream_id for e in loose.read_all()] == ["existing"]


@pytest.mark.parametrize(
    "config",
    [{"s": "a\x00"}, {"s": "\ud800"}, {"\ud800": 1}, {"k\udc00": [1]}, {"n": math.inf},
     nested(10_000)],
    ids=["nul", "surrogate", "surrogate-key", "surrogate-key-2", "inf", "nesting-10000"],
)
def test_bad_values_in_typed_events_are_refused(store: es.EventStore, config: Any) -> None:
    for event in (
        es.NewEvent("training_started", {"config": config, "dataset_id": "w",
                                         "dataset_version": SHA}),
        TrainingStarted.model_construct(config=config, dataset_id="w", dataset_version=SHA),
    ):
        with pytest.raises(es.EventValidationError):
            store.append("run", [event])
    assert store.head_position() == 0


def test_replacement_characters_given_as_such_are_kept(store: es.EventStore) -> None:
    config = {"\ufffd": "\ufffd", "k": 1}  # U+FFFD itself is valid text
    store.append("run", [TrainingStarted(config=config, dataset_id="w", dataset_version=SHA)])
    assert same(store.read_stream("run")[0].payload["config"], config)


def test_nesting_up_to_the_limit_is_accepted(loose: es.EventStore) -> None:
    payload = nested(MAX_NESTING_DEPTH)
    payload["s"] = "[[[[" * 50 + "{{" * 20  # brackets in strings do not count
    loose.append("s", [es.NewEvent("t", payload)])
    assert same(loose.read_stream("s")[0].payload, payload)


def test_escaped_backslashes_before_u0000_text_are_not_nul(loose: es.EventStore) -> None:
    payload = {"s": "\\u0000", "t": "\\\\u0000", "k\\u0000": "ok"}  # text, not NUL
    loose.append("s", [es.NewEvent("t", payload)])
    assert same(loose.read_stream("s")[0].payload, payload)


def test_control_and_non_bmp_characters_round_trip(loose: es.EventStore) -> None:
    payload = {"\x01\x1f\x7f": "\ufffe\uffff\U0010ffff\U0001f600 e+1 -0.0", "\u2028": "\t\n"}
    loose.append("s", [es.NewEvent("t", payload)], stream_type="k\u00e9\U0001f600")
    assert same(loose.read_stream("s")[0].payload, payload)


# Every read and lookup argument is checked when the method is called, before any I/O.
BAD_CALLS: list[Any] = [
    pytest.param(lambda s: s.read_all(after=True), id="after-bool"),
    pytest.param(lambda s: s.read_all(after="1"), id="after-str"),
    pytest.param(lambda s: s.read_all(after=-1), id="after-negative"),
    pytest.param(lambda s: s.read_all(after=2**63), id="after-2**63"),
    pytest.param(lambda s: s.read_all(event_types=[1, 2]), id="types-ints"),
    pytest.param(lambda s: s.read_all(event_types=5), id="types-int"),
    pytest.param(lambda s: s.read_all(event_types={"t": 1}), id="types-mapping"),
    pytest.param(lambda s: s.read_all(event_types=["t\x00"]), id="types-nul"),
    pytest.param(lambda s: s.read_all(event_types=["\ud800"]), id="types-surrogate"),
    pytest.param(lambda s: s.read_all(event_types=[""]), id="types-empty-name"),
    pytest.param(lambda s: s.read_all(event_types=[str(i) for i in range(1001)]),
                 id="types-too-many"),
    pytest.param(lambda s: s.read_all(until="2020-01-01"), id="until-str"),
    pytest.param(lambda s: s.read_all(until=date(2020, 1, 1)), id="until-date"),
    pytest.param(lambda s: s.read_all(until=datetime(2020, 1, 1)), id="until-naive"),
    pytest.param(lambda s: s.read_all(until=1577836800), id="until-int"),
    pytest.param(lambda s: s.read_all(limit=-1), id="limit-negative"),
    pytest.param(lambda s: s.read_all(limit=True), id="limit-bool"),
    pytest.param(lambda s: s.read_all(limit=2.5), id="limit-float"),
    pytest.param(lambda s: s.read_stream("s", from_version="abc"), id="from-str"),
    pytest.param(lambda s: s.read_stream("s", from_version=0), id="from-0"),
    pytest.param(lambda s: s.read_stream("s", from_version=2**63), id="from-2**63"),
    pytest.param(lambda s: s.read_stream("s", to_version=-1), id="to-negative"),
    pytest.param(lambda s: s.read_stream("s", to_version="3"), id="to-str"),
    pytest.param(lambda s: s.read_stream(None), id="stream-none"),
    pytest.param(lambda s: s.read_stream("s\x00"), id="stream-nul"),
    pytest.param(lambda s: s.iter_stream("s\ud800"), id="iter-stream-surrogate"),
    pytest.param(lambda s: s.iter_stream("s", from_version=None), id="iter-from-none"),
    pytest.param(lambda s: s.read_correlated(None), id="correlated-none"),
    pytest.param(lambda s: s.read_correlated(5), id="correlated-int"),
    pytest.param(lambda s: s.read_correlated("c\x00"), id="correlated-nul"),
    pytest.param(lambda s: s.read_correlated("\ud800"), id="correlated-surrogate"),
    pytest.param(lambda s: s.get_event(None), id="get-none"),
    pytest.param(lambda s: s.get_event(5), id="get-int"),
    pytest.param(lambda s: s.get_event("nope"), id="get-not-uuid"),
    pytest.param(lambda s: s.get_event("\x00"), id="get-nul"),
    pytest.param(lambda s: s.stream_version(None), id="version-none"),
    pytest.param(lambda s: s.stream_version("s\x00"), id="version-nul"),
    pytest.param(lambda s: s.stream_version("\udc00"), id="version-surrogate"),
]


@pytest.mark.parametrize("call", BAD_CALLS)
def test_bad_read_arguments_are_refused_when_called(
    loose: es.EventStore, call: Callable[[es.EventStore], Any]
) -> None:
    loose.append("s", [es.NewEvent("t", {"n": 1})])
    with pytest.raises(es.EventValidationError):
        call(loose)  # not only when iterated


def test_limits_on_read_arguments_are_inclusive(loose: es.EventStore) -> None:
    loose.append("s", [es.NewEvent("t", {"n": 1})], correlation_id="c")
    assert list(loose.read_all(after=2**63 - 1, limit=2**63 - 1)) == []
    assert len(list(loose.read_all(event_types=[str(i) for i in range(999)] + ["t"]))) == 1
    assert loose.read_stream("s", 1, 2**63 - 1)[0].version == 1
    assert loose.read_stream("s", 2**63 - 1) == []
    assert len(list(loose.read_all(until=datetime(9999, 12, 31, tzinfo=UTC)))) == 1
    assert len(loose.read_correlated(uuid.uuid4())) == 0
    with pytest.raises(es.ConcurrencyError):
        loose.append("s", [es.NewEvent("t", {})], expected_version=2**63 - 1)


# -- batch and event size limits ---------------------------------------------------------------
def test_a_batch_over_the_event_count_limit_is_refused(loose: es.EventStore) -> None:
    loose.append("s", [es.NewEvent("t", {})])
    too_many = [es.NewEvent("t", {}) for _ in range(MAX_BATCH_EVENTS + 1)]
    with pytest.raises(es.EventValidationError, match="several batches"):
        loose.append("s", too_many)
    # At the limit, even the path that looks the ids up (a stale expected version) works.
    at_limit = [es.NewEvent("t", {}, id=str(uuid.uuid4())) for _ in range(MAX_BATCH_EVENTS)]
    with pytest.raises(es.ConcurrencyError):
        loose.append("s", at_limit, expected_version=0)
    assert loose.head_position() == 1


def test_a_batch_over_the_byte_limit_is_refused(loose: es.EventStore) -> None:
    big = "x" * (1024 * 1024 - 100)
    count = MAX_BATCH_BYTES // len(big) + 1
    with pytest.raises(es.PayloadTooLargeError, match="per append"):
        loose.append("s", [es.NewEvent("t", {"b": big}) for _ in range(count)])
    assert loose.head_position() == 0


def test_the_size_limit_covers_payload_and_metadata_together(
    make_store: Callable[..., es.EventStore],
) -> None:
    loose = make_store(validate=False)
    half = "x" * (600 * 1024)
    with pytest.raises(es.PayloadTooLargeError, match="with its metadata"):
        loose.append("s", [es.NewEvent("t", {"p": half}, metadata={"m": half})])
    with pytest.raises(es.PayloadTooLargeError, match="with its metadata"):
        loose.append("s", [es.NewEvent("t", {"p": half})], metadata={"m": half})
    small = make_store(validate=False, max_payload_bytes=100)
    small.append("s", [es.NewEvent("t", {"p": "y" * 40})], metadata={"m": "z" * 40})
    with pytest.raises(es.PayloadTooLargeError, match="limit of 100 bytes"):
        small.append("s", [es.NewEvent("t", {"p": "y" * 40})], metadata={"m": "z" * 60})
    assert loose.head_position() == 1


@pytest.mark.parametrize("value", [0, -1, True, "1024", 1.5, MAX_BATCH_BYTES + 1])
def test_max_payload_bytes_is_checked(store_url: str, value: Any) -> None:
    with pytest.raises(es.ConfigurationError, match="max_payload_bytes"):
        es.connect(store_url, max_payload_bytes=value)


# -- iterating a long stream -----------------------------------------------------------------
def test_iter_stream_reads_a_long_stream_page_by_page(
    loose: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loose.append("s", [es.NewEvent("t", {"i": i}) for i in range(10)])
    loose.append("other", [es.NewEvent("t", {})])
    monkeypatch.setattr(store_module, "READ_PAGE_SIZE", 3)
    pages: list[tuple[int, int | None, int]] = []
    read_stream = loose.recorder.read_stream

    def spy(stream_id: str, first: int, last: int | None) -> list[es.RecordedEvent]:
        page = read_stream(stream_id, first, last)
        pages.append((first, last, len(page)))
        return page

    monkeypatch.setattr(loose.recorder, "read_stream", spy)
    events = loose.iter_stream("s")
    assert pages == []  # nothing read before iterating
    assert [e.payload["i"] for e in events] == list(range(10))
    assert pages == [(1, 3, 3), (4, 6, 3), (7, 9, 3), (10, 12, 1)]
    assert [e.version for e in loose.iter_stream("s", 2, 8)] == list(range(2, 9))
    assert loose.read_stream("s", 4, 9) == list(loose.iter_stream("s", 4, 9))
    assert list(loose.iter_stream("s", 11)) == []
    assert list(loose.iter_stream("s", 5, 4)) == []

