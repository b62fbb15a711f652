"""The archive files' format (docs/archive.md): their columns, their times, the row-group
statistics a dated read skips by, and their rows decoded as events or as hashed rows, a
column at a time. pyarrow is imported when a file is first read or written.
"""

from __future__ import annotations

import functools
import gc
import importlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from event_sourcing.events import RecordedEvent
from event_sourcing.integrity.hashing import timestamp_text
from event_sourcing.stores.values import decode_all, decode_repeated

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq


class _Module:
    """A module imported when one of its attributes is first used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


if not TYPE_CHECKING:
    # pyarrow (with numpy) costs a process ~0.2 s and ~60 MB: a PostgreSQL store loads it
    # when it first reads or writes an archive file, never if it has none.
    pa, pc, pq = map(_Module, ("pyarrow", "pyarrow.compute", "pyarrow.parquet"))

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def timestamps() -> pa.DataType:
    """The type of an archive file's times: microseconds in UTC."""
    return pa.timestamp("us", tz="UTC")


@functools.cache
def file_schema() -> pa.Schema:
    """The columns of an archive file: event_store's, payload and metadata as canonical
    JSON text."""
    return pa.schema([
        ("position", pa.int64()), ("id", pa.string()), ("stream_id", pa.string()),
        ("stream_type", pa.string()), ("version", pa.int64()), ("event_type", pa.string()),
        ("schema_version", pa.int32()), ("payload", pa.string()), ("metadata", pa.string()),
        ("created_at", timestamps()), ("correlation_id", pa.string()),
        ("causation_id", pa.string()), ("content_hash", pa.binary(32)),
        ("chain_hash", pa.binary(32)), ("occurred_at", timestamps()),
    ])


def micros_of(value: datetime | None) -> int | None:
    return None if value is None else (value - EPOCH) // timedelta(microseconds=1)


def time_of_micros(micros: int | None) -> datetime | None:
    return None if micros is None else EPOCH + timedelta(microseconds=micros)


def earliest_dated(
    group: pq.RowGroupMetaData, after: int | None, until: int, recorded: int | None
) -> int | None:
    """The earliest occurred_at (microseconds) a row group's statistics allow among its
    events whose occurred_at is in [after, until] and whose created_at is at most
    `recorded` (None: no bound), or None when they allow none. Without statistics (files
    written before they were kept), any."""
    schema = file_schema()
    earliest = -(2**63)
    occurred = group.column(schema.get_field_index("occurred_at")).statistics
    if occurred is not None:
        if occurred.null_count == group.num_rows:  # no event of the group is dated
            return None
        if occurred.has_min_max:
            if occurred.min_raw > until or (after is not None and occurred.max_raw < after):
                return None
            earliest = occurred.min_raw
    created = group.column(schema.get_field_index("created_at")).statistics
    if recorded is not None and created is not None and created.has_min_max and (
        created.min_raw > recorded
    ):
        return None
    return earliest


def all_of(masks: list[Any]) -> Any:
    """The rows every one of these masks (at least one) keeps."""
    mask = masks[0]
    for other in masks[1:]:
        mask = pc.and_(mask, other)
    return mask


def tally(values: pa.ChunkedArray) -> Iterator[tuple[str, int]]:
    """(value, how many times) of a column."""
    counted = pc.value_counts(values)
    return zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(),
               strict=True)


def columns_of(table: pa.Table) -> list[list[Any]]:
    """The table's columns as Python lists: times as microseconds, payload and metadata as
    their UTF-8 bytes (as hashed, and as decode_all reads them)."""
    columns = []
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        elif name in _JSON_TEXTS:
            column = column.cast(pa.binary())
        columns.append(column.to_pylist())
    return columns


_JSON_TEXTS = frozenset({"payload", "metadata"})


def events_of(table: pa.Table) -> list[RecordedEvent]:
    """The table's rows as events, decoded a column at a time with the cyclic garbage
    collector paused, as a page of the tables is (recorder.fetch_events)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        (positions, ids, streams, kinds, versions, types, schema_versions, payloads, metadatas,
         created, correlations, causations, _, _, occurred) = columns_of(table)
        new, epoch, micros = tuple.__new__, EPOCH, MICROSECOND
        return [
            new(RecordedEvent, (
                event_id, stream_id, kind, version, position, event_type, schema_version,
                payload, metadata, created_at, correlation_id, causation_id, schema_version,
                created_at if occurred_at is None else epoch + micros * occurred_at,
            ))
            for (
                event_id, stream_id, kind, version, position, event_type, schema_version,
                payload, metadata, created_at, correlation_id, causation_id, occurred_at,
            ) in zip(
                ids, streams, kinds, versions, positions, types, schema_versions,
                decode_all(payloads), decode_repeated(metadatas),
                [epoch + micros * value for value in created], correlations, causations,
                occurred, strict=True,
            )
        ]
    finally:
        if enabled:
            gc.enable()


def hashed_of(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    columns = columns_of(table)
    for row in zip(*columns, strict=True):
        yield (
            *row[:9], timestamp_text(time_of_micros(row[9])),  # type: ignore[arg-type]
            row[10], row[11], bytes(row[12]), bytes(row[13]),
            None if row[14] is None else timestamp_text(time_of_micros(row[14])),  # type: ignore[arg-type]
        )
