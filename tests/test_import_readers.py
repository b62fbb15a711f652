"""The JSON lines reader's direct path (a line naming its fields plainly) reads exactly what
the general path reads, and the import's events are the NewEvents an append would get."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import event_sourcing as es
from event_sourcing.errors import EventValidationError
from event_sourcing.stores import import_readers
from event_sourcing.stores.imports import _new_event

LINES = [
    {"stream_id": "run-1", "type": "training_progress", "payload": {"step": 1}},
    {"type": "training_progress", "stream_id": "run-1"},  # no payload: {}
    {"stream_id": "run-2", "type": "t", "payload": {"a": [1, 2]}, "metadata": {"m": 1},
     "id": "0f8fad5b-d9cb-469f-a165-70867728950e", "stream_type": "training",
     "correlation_id": "c", "causation_id": None, "occurred_at": "2024-05-01T14:02:00Z"},
    {"stream_id": "run-2", "type": "t", "occurred_at": ""},  # an empty time: none
    {"stream_id": "run-2", "type": "t", "payload": None},  # refused when encoded
    {"stream_id": 7, "type": ["x"]},  # (refused when encoded, naming the line)
    {"stream": "run-3", "event_type": "t", "version": 4},  # aliases, exported: general path
]


def test_a_plain_line_reads_as_the_general_path_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(b"  " + orjson.dumps(line) + b" \n\n" for line in LINES))
    records = list(import_readers.read_records(path))
    assert len(records) == len(LINES)
    for n, (record, line) in enumerate(zip(records, LINES, strict=True)):
        number = 2 * n + 1  # (a blank line after each)
        text = orjson.dumps(line)
        assert record == import_readers._record(f"line {number}", number, line, text)
        assert type(record) is type(import_readers._record("x", 1, line))
    assert records[2].occurred_at == datetime(2024, 5, 1, 14, 2, tzinfo=UTC)
    assert records[3].occurred_at is None and records[1].payload == {}


@pytest.mark.parametrize(("line", "message"), [
    ({"stream_id": None, "type": "t"}, "line 1: no 'stream_id'"),
    ({"stream_id": "r", "type": None}, "line 1: no 'type'"),
    ({"stream_id": "r", "type": "t", "occurred_at": "soon"}, "line 1: occurred_at 'soon'"),
    ({"stream_id": "r", "type": "t", "colour": 1}, "line 1: unknown field 'colour'"),
    ({"stream_id": "r", "stream": "s", "type": "t"}, "line 1: 'stream' repeats 'stream_id'"),
])
def test_a_bad_line_is_refused_naming_it(
    tmp_path: Path, line: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(EventValidationError, match=message):
        list(import_readers.read_records(path))


def test_an_imported_event_is_the_new_event_an_append_gets() -> None:
    at = datetime(2024, 5, 1, tzinfo=UTC)
    fields = ("t", {"a": 1}, "0f8fad5b-d9cb-469f-a165-70867728950e", {"m": 1}, at)
    made = _new_event(*fields)
    assert type(made) is es.NewEvent and made == es.NewEvent(*fields)
    assert (made.type, made.payload, made.id, made.metadata, made.occurred_at) == fields
