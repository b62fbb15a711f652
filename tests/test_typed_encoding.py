"""Typed payloads take a shorter encoding path (values.encode_serialized): what an append
returns is what a reader decodes, types included, and the stored text is the same canonical
JSON as before, on every backend."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ConfigDict

import event_sourcing as es
from event_sourcing.catalog import DomainEvent, EventRegistry, TrainingStarted
from event_sourcing.stores.values import encode_marked, encode_serialized

SHA = "a" * 64


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


CONFIGS = [
    {"lr": 0.001, "layers": [64, 32], "name": "mlp", "flag": True},
    {"none": None, "nested": {"x": [None, 1, 1.0, "ü"]}},  # null: the full path
    {"big": 2**64, "neg": -(2**70)},  # beyond 64 bits: the full path
    {"e": 1e23, "z": -0.0, "f": 1.5e300},  # numbers jsonb rewrites: the full path
    {"text": "é€𝄞 \\u0000 \t\n\"quoted\""},
    {"deep": {"a": {"b": {"c": {"d": [[[[1]]]]}}}}},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_typed_payloads_read_back_as_appended(store: es.EventStore, config: Any) -> None:
    appended = store.append("run", [
        es.NewEvent("training_started", {"config": config, "dataset_id": "w",
                                         "dataset_version": SHA}),
        TrainingStarted(config=config, dataset_id="w", dataset_version=SHA),
    ])
    read = store.read_stream("run")
    for mine, theirs in zip(appended, read, strict=True):
        assert same(mine.payload, theirs.payload), (mine.payload, theirs.payload)
    assert not store.verify().problems


@pytest.mark.parametrize("config", CONFIGS)
def test_the_short_path_writes_what_the_full_path_writes(config: Any) -> None:
    payload = TrainingStarted(config=config, dataset_id="w", dataset_version=SHA).model_dump(
        mode="json"
    )
    text, size, decoded, canonical = encode_serialized(payload, "payload")
    full_text, full_size, full_decoded, full_canonical = encode_marked(payload, "payload")
    assert (text, size, canonical) == (full_text, full_size, full_canonical)
    assert same(decoded, full_decoded)


class Loose(DomainEvent):
    """A model that lets NaN through validation and keeps it a float when dumped as JSON."""

    event_type = "loose_measured"
    model_config = ConfigDict(allow_inf_nan=True, ser_json_inf_nan="constants")
    value: float


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_kept_by_a_model_is_refused_not_stored_as_null(
    make_store: Callable[..., es.EventStore], value: float
) -> None:
    registry = EventRegistry()
    registry.register(Loose)
    store = make_store(registry=registry)
    for event in (es.NewEvent("loose_measured", {"value": value}), Loose(value=value)):
        with pytest.raises(es.EventValidationError):
            store.append("s", [event])
    assert store.head_position() == 0
