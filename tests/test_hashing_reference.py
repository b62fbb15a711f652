"""The fast hashing of integrity.hashing gives exactly the bytes of its plain reference.

The reference below is the straightforward implementation the store used before its
append path was optimized; every stored hash depends on the two agreeing byte for byte.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_sourcing.integrity import hashing
from event_sourcing.stores.recorder import EventRow
from event_sourcing.stores.values import decode


# -- the reference ----------------------------------------------------------------------------
def _field(value: str | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


def _bytes_field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _i64(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def reference_content(row: EventRow, stream_id: str, created_at: str,
                      correlation_id: str | None, causation_id: str | None,
                      canonical: bool) -> bytes:
    if canonical and not row.canonical:
        value = decode(row.payload_json) if row.payload is None else row.payload
        payload = hashing.canonical_json_bytes(value)
        metadata = hashing.canonical_json_bytes(decode(row.metadata_json))
    else:
        payload = row.payload_json.encode("utf-8", "surrogatepass")
        metadata = row.metadata_json.encode("utf-8", "surrogatepass")
    return hashlib.sha256(
        _bytes_field(row.id.encode()) + _field(stream_id) + _field(row.event_type)
        + _i64(row.schema_version) + _bytes_field(payload) + _bytes_field(metadata)
        + _field(created_at) + _field(correlation_id) + _field(causation_id)
        + (b"" if row.occurred_at is None else _field(row.occurred_at))
    ).digest()


def reference_chains(previous: bytes, version: int, stream_type: str,
                     contents: list[bytes]) -> list[bytes]:
    out = []
    for content in contents:
        version += 1
        previous = hashlib.sha256(
            previous + _i64(version) + _field(stream_type) + content
        ).digest()
        out.append(previous)
    return out


# -- generated events -------------------------------------------------------------------------
texts = st.text(max_size=12)  # non-ASCII included
names = st.text(min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30),
    timezones=st.just(UTC),
).map(lambda value: value.isoformat(timespec="microseconds"))


@st.composite
def event_rows(draw: Any) -> EventRow:
    payload = draw(st.dictionaries(texts, json_values, max_size=4))
    metadata = draw(st.just({}) | st.dictionaries(texts, json_values, max_size=3))
    canonical = draw(st.booleans())
    if canonical:
        payload_json = hashing.canonical_json(payload)
        metadata_json = hashing.canonical_json(metadata)
    else:  # any text of the value: key order and spacing the canonical form does not have
        payload_json = hashing._PYTHON_SORTED(payload) if draw(st.booleans()) else repr(
            payload
        ).replace("'", '"').replace("None", "null").replace("True", "true").replace(
            "False", "false"
        )
        metadata_json = "{}" if not metadata else hashing._PYTHON_SORTED(metadata)
        try:
            decode(payload_json)
        except ValueError:
            payload_json = hashing._PYTHON_SORTED(payload)
    return EventRow(
        str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        draw(st.sampled_from(["training_progress", "modèle_déployé"]) | names),
        draw(st.integers(min_value=1, max_value=2**63 - 1)),
        payload_json, metadata_json,
        draw(st.sampled_from([None, payload])) if canonical or draw(st.booleans()) else None,
        canonical,
        draw(st.none() | times),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event_rows(), min_size=0, max_size=6),
    stream_id=names, created_at=times,
    correlation_id=st.none() | names, causation_id=st.none() | names,
    canonical=st.booleans(),
    head=st.none() | st.tuples(st.binary(min_size=32, max_size=32),
                               st.integers(0, 2**40), names),
)
def test_append_hashes_match_the_reference(
    rows: list[EventRow], stream_id: str, created_at: str, correlation_id: str | None,
    causation_id: str | None, canonical: bool, head: tuple[bytes, int, str] | None,
) -> None:
    contents, chains = hashing.append_hashes(
        rows, stream_id, created_at, correlation_id, causation_id,
        canonical=canonical, head=head,
    )
    expected = [
        reference_content(row, stream_id, created_at, correlation_id, causation_id, canonical)
        for row in rows
    ]
    assert contents == expected
    assert chains == (None if head is None else reference_chains(*head, expected))
    if rows and (not canonical or all(row.canonical for row in rows)):
        assert [
            hashing.content_hash(
                row.id, stream_id, row.event_type, row.schema_version, row.payload_json,
                row.metadata_json.encode() if n % 2 else row.metadata_json, created_at,
                correlation_id, causation_id, row.occurred_at,
            )
            for n, row in enumerate(rows)
        ] == expected
    if head is not None:
        assert hashing.fold_chain(*head, iter(expected)) == chains
        assert [
            hashing.chain_hash(previous, head[1] + n, head[2], content)
            for n, (previous, content) in enumerate(
                zip([head[0], *(chains or [])], expected, strict=False), start=1
            )
        ] == chains


@settings(max_examples=300, deadline=None)
@given(
    value=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    zone=st.sampled_from([UTC, None, timezone(timedelta(hours=5, minutes=30)),
                          timezone(-timedelta(hours=8))]),
)
def test_timestamp_text_is_isoformat(value: datetime, zone: Any) -> None:
    value = value.replace(tzinfo=zone)
    assert hashing.timestamp_text(value) == value.isoformat(timespec="microseconds")
    assert hashing.timestamp_text(value) == value.isoformat(timespec="microseconds")  # cached


def test_field_caches_stay_bounded() -> None:
    for n in range(5000):
        hashing.fold_chain(hashing.GENESIS, 0, f"kind-{n}", [bytes(32)])
        hashing.timestamp_text(datetime(2000, 1, 1, tzinfo=UTC) + timedelta(minutes=n))
    assert len(hashing._FIELDS) <= 4096
    assert len(hashing._MINUTES) <= 1024
    assert hashing.fold_chain(hashing.GENESIS, 0, "kind-1", [bytes(32)]) == reference_chains(
        hashing.GENESIS, 0, "kind-1", [bytes(32)]
    )
