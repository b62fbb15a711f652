"""Reads decode payloads and metadata with orjson, and with the exact json decoder only where
orjson would differ (a run of 19+ digits): values read back exactly either way, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import event_sourcing as es
from event_sourcing.stores import values
from tests.test_store_inputs import same

# Values whose stored text (SQLite's canonical JSON, PostgreSQL's jsonb output) has no run of
# 19 digits: read through orjson alone.
FAST: dict[str, Any] = {
    "floats": [0.1, 1.0, 0.0, 100.0, 1e16, 1.2345678901234567e16, 123456789012345680.0,
               1e-7, 1.5e-7, 1e-10, 0.30000000000000004, 9.007199254740993e15],
    "ints": [0, -1, 2**53 + 1, 2**59, -(2**59), 10**17, 10**18 - 1, -(10**18) + 1],
    "negative_zero": -0.0,
    "text": "é 😀 \u2028 \t \"quoted\" \\ e+1 -0.0 1234567890",
    "ключ": {"ünïcödé": ["日本", None, True, False]},
    "mixed": [1, 1.0, True, None, "1"],
}
FAST_READ = {**FAST, "negative_zero": 0.0}  # -0.0 is stored as 0.0 (jsonb has no -0.0)
# Values whose text holds such a run: orjson would read the integers as floats.
LONG_RUNS: dict[str, Any] = {
    "ints": [2**63 - 1, -(2**63), 2**64 - 1, 2**64, 10**30, -(10**300)],
    "floats": [1e23, 1.5e300, 5e-324, 2.2250738585072014e-308],
    "digits_in_a_string": "12345678901234567890123",
}


@pytest.fixture
def loose(make_store: Callable[..., es.EventStore]) -> es.EventStore:
    return make_store(validate=False)


@pytest.fixture
def exact_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts read by the exact (slow) decoder."""
    seen: list[str] = []
    exact = values.decode

    def counting(text: str) -> Any:
        seen.append(text)
        return exact(text)

    monkeypatch.setattr(values, "decode", counting)
    return seen


def test_a_page_without_long_digit_runs_reads_exactly_through_orjson(
    loose: es.EventStore, exact_decodes: list[str]
) -> None:
    appended = loose.append("s", [es.NewEvent("t", FAST, metadata={"m": FAST})])
    assert same(appended[0].payload, FAST_READ)
    reads = [
        list(loose.read_all()), loose.read_stream("s"), [loose.get_event(appended[0].id)],
        list(loose.iter_stream("s")),
    ]
    assert not exact_decodes  # orjson read every value
    for read in reads:
        (event,) = read
        assert event is not None
        assert same(event.payload, FAST_READ), event.payload
        assert same(event.metadata, {"m": FAST_READ}), event.metadata


def test_only_texts_with_long_digit_runs_take_the_exact_decoder(
    loose: es.EventStore, exact_decodes: list[str]
) -> None:
    loose.append("s", [
        es.NewEvent("t", FAST),
        es.NewEvent("t", LONG_RUNS, metadata={"big": 2**70}),
        es.NewEvent("t", {"n": 2**64 - 1}),  # 20 digits: orjson would read it right, too
        es.NewEvent("t", FAST, metadata={"m": 1}),
    ])
    exact_decodes.clear()  # (append checks values with it too)
    events = list(loose.read_all())
    assert len(exact_decodes) == 3  # the payloads of events 2 and 3, the metadata of event 2
    assert [same(event.payload, expected) for event, expected in zip(
        events, [FAST_READ, LONG_RUNS, {"n": 2**64 - 1}, FAST_READ], strict=True
    )] == [True] * 4
    assert [event.metadata for event in events] == [{}, {"big": 2**70}, {}, {"m": 1}]
    assert type(events[1].metadata["big"]) is int
    assert all(type(value) is int for value in events[1].payload["ints"])


def test_decode_all_reads_as_the_exact_decoder_does() -> None:
    texts = [values.encode(value, "v")[0] for value in [FAST, LONG_RUNS, {}, {"a": [{}]}]]
    texts += ['{"a": 1, "b": [1.5, "x"]}', '{"n": 12345678901234567890}', '{"s": "\\ud800"}']
    pages = [texts, texts[:1], texts[2:4], [texts[-1]]]
    for page in pages:
        raw = [text.encode() for text in page]
        assert same(values.decode_all(raw), [values.decode(text) for text in page]), page


def test_repeated_metadata_is_decoded_once_into_objects_of_their_own() -> None:
    texts = ['{"run":"r1","step":null,"n":1,"x":1.5,"ok":true}', '{"nested":{"a":[1]}}', "{}",
             '{"big":123456789012345678901234}']
    page = [texts[n].encode() for n in (0, 0, 1, 2, 0, 1, 3, 2, 3)]
    decoded = values.decode_repeated(page)
    assert same(decoded, [values.decode(text.decode()) for text in page])
    assert len({id(value) for value in decoded}) == len(page)  # no object shared
    decoded[2]["nested"]["a"].append(2)  # nested values are not shared either
    assert decoded[5] == {"nested": {"a": [1]}}
    assert type(decoded[6]["big"]) is int
    assert same(values.decode_repeated(page[:1]), [values.decode(texts[0])])
