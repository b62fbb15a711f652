"""The inputs of a bulk import (docs/import.md): JSON lines, and CSV and Parquet read
through a column mapping, as ImportRecords (checked and imported by
event_sourcing.stores.imports). Errors name the line or row.
"""

from __future__ import annotations

import csv
import json
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from event_sourcing.errors import EventValidationError
from event_sourcing.stores.imports import ImportRecord, canonical_bytes
from event_sourcing.stores.times import utc_time

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
             ".pq": "parquet"}
_PARQUET_BATCH = 5000  # rows decoded at a time
# A record's fields, as JSON lines name them and as a column mapping targets them.
_FIELDS = ("stream_id", "type", "id", "stream_type", "correlation_id", "causation_id",
           "occurred_at", "metadata", "payload")
_ALIASES = {"stream": "stream_id", "event_type": "type"}
_PLAIN = frozenset(_FIELDS)
_new_record = tuple.__new__  # an ImportRecord built from a tuple, without its Python __new__
# What `mlevents read --json` prints besides the fields above: accepted and ignored, so an
# export can be imported elsewhere (the target store assigns its own).
_EXPORTED = frozenset({"version", "position", "schema_version", "recorded_schema_version",
                       "created_at"})


def detect_format(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise EventValidationError(f"format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise EventValidationError(
            f"cannot tell the format of {str(path)!r} from its suffix; name it .jsonl, .csv "
            "or .parquet, or give the format (--format)"
        )
    return found


def read_records(
    path: str | Path, format: str | None = None, mapping: ColumnMapping | None = None
) -> Iterator[ImportRecord]:
    """The records of a file, read lazily. JSON lines need no mapping; CSV and Parquet
    need one naming at least the stream and type (docs/import.md)."""
    path = Path(path)
    kind = detect_format(path, format)
    if kind == "jsonl":
        if mapping is not None:
            raise EventValidationError("JSON lines name their fields: a mapping is for CSV and "
                                       "Parquet only")
        return read_json_lines(path)
    if mapping is None:
        raise EventValidationError(
            f"a {kind} file needs a column mapping naming at least the stream and the type, "
            "e.g. --map stream=run_id --set type=training_progress"
        )
    return read_csv(path, mapping) if kind == "csv" else read_parquet(path, mapping)


def count_records(path: str | Path, format: str | None = None) -> int:
    """How many records the file holds (for a progress bar): lines, rows."""
    path = Path(path)
    kind = detect_format(path, format)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return int(_parquet_file(path, pq).metadata.num_rows)
    lines = 0
    with _open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            lines += block.count(b"\n")
    return max(lines - (kind == "csv"), 0)


def _open(path: Path, mode: str, **options: Any) -> Any:
    try:
        return path.open(mode, **options)
    except OSError as exc:
        raise EventValidationError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def read_json_lines(path: Path) -> Iterator[ImportRecord]:
    """One JSON object per line (blank lines are skipped)."""
    loads, JSONDecodeError, plain = orjson.loads, orjson.JSONDecodeError, _PLAIN
    with _open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.strip()  # (what a record's id derives from)
            if not text:
                continue
            where = f"line {number}"
            try:
                value = loads(line)
            except JSONDecodeError as exc:
                raise EventValidationError(f"{where}: not valid JSON ({exc})") from None
            if type(value) is not dict:
                raise EventValidationError(
                    f"{where}: expected a JSON object, got {type(value).__name__}"
                )
            # The usual line names its fields plainly (no alias, nothing exported, a stream
            # and a type): its record is built straight from it. Any other goes through
            # _record, which refuses what is wrong.
            get = value.get
            if value.keys() <= plain and get("stream_id") is not None and (
                get("type") is not None
            ):
                occurred = get("occurred_at")
                yield _new_record(ImportRecord, (
                    where, number, value["stream_id"], value["type"], get("payload", {}),
                    get("id"), get("metadata"), get("stream_type"), get("correlation_id"),
                    get("causation_id"),
                    None if occurred is None else _occurred_at(occurred, where), text,
                ))
            else:
                yield _record(where, number, value, text)


def _record(
    where: str, ordinal: int, fields: Mapping[str, Any], source: bytes | None = None
) -> ImportRecord:
    values: dict[str, Any] = {}
    for key, value in fields.items():
        name = _ALIASES.get(key, key)
        if name in values:
            raise EventValidationError(f"{where}: {key!r} repeats {name!r}")
        if name in _FIELDS:
            values[name] = value
        elif name not in _EXPORTED:
            raise EventValidationError(
                f"{where}: unknown field {key!r}; a record has "
                f"{', '.join(_FIELDS)} (and may carry what `mlevents read --json` prints)"
            )
    for required in ("stream_id", "type"):
        if values.get(required) is None:
            raise EventValidationError(f"{where}: no {required!r}")
    occurred = values.pop("occurred_at", None)
    return ImportRecord(
        where, ordinal, values.pop("stream_id"), values.pop("type"),
        values.pop("payload", {}), occurred_at=_occurred_at(occurred, where), source=source,
        **values,
    )


def _occurred_at(value: Any, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise EventValidationError(
                f"{where}: occurred_at {value!r} is not an ISO 8601 time "
                "(e.g. 2024-05-01T14:02:00Z)"
            ) from None
    return utc_time(value, f"{where}: occurred_at")


@dataclass(frozen=True)
class ColumnMapping:
    """Which column fills which field of a record: `columns` maps a field (stream_id, type,
    id, stream_type, correlation_id, causation_id, occurred_at, payload.KEY, metadata.KEY)
    to a column; `constants` gives a field one value for every row. With no payload.KEY
    mapped, every column not mapped elsewhere goes into the payload under its own name."""

    columns: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, maps: Iterable[str] = (), sets: Iterable[str] = (), file: str | Path | None = None
    ) -> ColumnMapping:
        """From `FIELD=COLUMN` (--map) and `FIELD=VALUE` (--set) texts and/or a mapping file
        (TOML or JSON with "map" and "set" tables); the texts win over the file."""
        columns: dict[str, str] = {}
        constants: dict[str, Any] = {}
        if file is not None:
            given = _mapping_file(Path(file))
            columns.update(given.get("map", {}))
            constants.update(given.get("set", {}))
        for text, into in [*((t, columns) for t in maps), *((t, constants) for t in sets)]:
            name, equals, value = text.partition("=")
            if not equals or not name.strip():
                raise EventValidationError(f"{text!r} is not FIELD=VALUE (e.g. stream=run_id)")
            into[name.strip()] = value
        return cls(_fields(columns, "map"), _fields(constants, "set"))


def _mapping_file(path: Path) -> dict[str, Any]:
    with _open(path, "rb") as data:
        text = data.read()
    try:
        given = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventValidationError(f"mapping file {str(path)!r} is not valid: {exc}") from None
    if not isinstance(given, dict) or set(given) - {"map", "set"} or not all(
        isinstance(table, dict) for table in given.values()
    ):
        raise EventValidationError(
            f"mapping file {str(path)!r} must hold a 'map' table (field = column) and/or a "
            "'set' table (field = value)"
        )
    return given


def _fields(given: Mapping[str, Any], what: str) -> dict[str, Any]:
    fields = {}
    for name, value in given.items():
        target = _ALIASES.get(name, name)
        head, dot, key = target.partition(".")
        if (dot and (head not in ("payload", "metadata") or not key)) or (
            not dot and target not in _FIELDS[:7]
        ):
            raise EventValidationError(
                f"{what} {name!r}: a mapping fills {', '.join(_FIELDS[:7])}, payload.KEY or "
                "metadata.KEY"
            )
        if what == "map" and not isinstance(value, str):
            raise EventValidationError(f"map {name!r}: the column name must be text")
        fields[target] = value
    return fields


def _mapper(mapping: ColumnMapping, header: Sequence[str], source: str) -> Callable[
    [Sequence[Any], str, int, bytes], ImportRecord
]:
    """A function from a row (values in `header` order, and its text) to its record."""
    index = {name: n for n, name in enumerate(header)}
    for target, column in mapping.columns.items():
        if column not in index:
            raise EventValidationError(
                f"map {target}={column}: {source} has no column {column!r} (it has "
                f"{', '.join(header)})"
            )
    for required in ("stream_id", "type"):
        if required not in mapping.columns and required not in mapping.constants:
            raise EventValidationError(
                f"the mapping gives no {required}: --map {required}=COLUMN or "
                f"--set {required}=VALUE"
            )
    plain = [(t, index[c]) for t, c in mapping.columns.items() if "." not in t]
    payload = [(t[8:], index[c]) for t, c in mapping.columns.items() if t.startswith("payload.")]
    metadata = [(t[9:], index[c]) for t, c in mapping.columns.items() if t.startswith("metadata.")]
    constant_payload = {t[8:]: v for t, v in mapping.constants.items() if t.startswith("payload.")}
    constant_metadata = {
        t[9:]: v for t, v in mapping.constants.items() if t.startswith("metadata.")
    }
    constants = {t: v for t, v in mapping.constants.items() if "." not in t}
    if not payload:
        used = set(mapping.columns.values())
        payload = [(name, n) for n, name in enumerate(header) if name not in used]

    # A row's id derives from its text and the mapping: read another way, it is another event.
    mapped = canonical_bytes([mapping.columns, mapping.constants, header])

    def to_record(values: Sequence[Any], where: str, ordinal: int, text: bytes) -> ImportRecord:
        fields = dict(constants)
        fields.update((target, values[n]) for target, n in plain)
        body = dict(constant_payload)
        body.update((key, values[n]) for key, n in payload if values[n] is not None)
        fields["payload"] = body
        if metadata or constant_metadata:
            extra = dict(constant_metadata)
            extra.update((key, values[n]) for key, n in metadata if values[n] is not None)
            fields["metadata"] = extra
        return _record(
            where, ordinal, {k: v for k, v in fields.items() if v is not None}, mapped + text
        )

    return to_record


def cell_value(text: str) -> Any:
    """A CSV cell as a value: a JSON number, true, false, an object or an array is read as
    JSON; an empty cell is absent (None); anything else is text."""
    if not text:
        return None
    first = text[0]
    if first in "-0123456789tf[{" and text not in ("-", "Infinity"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


def read_csv(path: Path, mapping: ColumnMapping) -> Iterator[ImportRecord]:
    """Rows of a CSV file with a header line, through `mapping` (row 1 is the first after
    the header)."""
    with _open(path, "r", encoding="utf-8", newline="") as data:
        rows = csv.reader(data)
        try:
            header = next(rows, None)
            if header is None:
                return
            to_record = _mapper(mapping, header, str(path))
            for number, row in enumerate(rows, start=1):
                if not row:
                    continue
                where = f"row {number}"
                if len(row) != len(header):
                    raise EventValidationError(
                        f"{where}: {len(row)} cells for {len(header)} columns"
                    )
                yield to_record(
                    [cell_value(cell) for cell in row], where, number,
                    "\x1f".join(row).encode("utf-8", "surrogatepass"),
                )
        except (csv.Error, UnicodeDecodeError) as exc:
            raise EventValidationError(f"{path}: not readable CSV ({exc})") from None


def _parquet_file(path: Path, pq: Any) -> Any:
    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise EventValidationError(f"cannot read {str(path)!r} as Parquet: {exc}") from None


def read_parquet(path: Path, mapping: ColumnMapping) -> Iterator[ImportRecord]:
    """Rows of a Parquet file through `mapping` (row 1 is the first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _parquet_file(path, pq)
    schema = table.schema_arrow
    to_record = _mapper(mapping, schema.names, str(path))
    # dates and times as ISO 8601 text: what a payload can hold, and what occurred_at reads
    temporal = [pa.types.is_temporal(column.type) for column in schema]
    number = 0
    for batch in table.iter_batches(batch_size=_PARQUET_BATCH):
        columns = [
            [None if value is None else value.isoformat() for value in column.to_pylist()]
            if is_temporal else column.to_pylist()
            for column, is_temporal in zip(batch.columns, temporal, strict=True)
        ]
        for values in zip(*columns, strict=True):
            number += 1
            yield to_record(values, f"row {number}", number, canonical_bytes(values))
