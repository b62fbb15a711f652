"""Bulk import of existing history (`store.import_events`, `mlevents import`; docs/import.md).

This module owns the inputs (JSON lines, CSV and Parquet read through a column mapping),
the deterministic ids of records that carry none, and the batches. Each record is checked
and encoded exactly as an append would be (the store's validation, catalog typing, size
limits and personal-data encryption); records whose id is recorded already are skipped;
the rest go to the backend's `import_rows`, which writes one batch in one transaction,
versions assigned in file order per stream. `place_rows` is where both backends compute the
versions and hash-chain links of a batch, so an imported event is stored exactly like an
appended one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from event_sourcing.errors import (
    DuplicateEventError,
    EventStoreError,
    EventValidationError,
    PayloadTooLargeError,
    UnknownEventTypeError,
)
from event_sourcing.events import NewEvent
from event_sourcing.integrity.hashing import GENESIS, append_hashes, fold_chain
from event_sourcing.stores.recorder import EventRow
from event_sourcing.stores.times import utc_time

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
             ".pq": "parquet"}
DEFAULT_BATCH_SIZE = 5000
# Ids of records that carry none: uuid5 in this namespace (docs/import.md, "Idempotency").
IMPORT_NAMESPACE = uuid.UUID("5d1c3b0e-6f0a-4e57-9a55-6d6c6576696d")
_NAMESPACE_BYTES = IMPORT_NAMESPACE.bytes
_VARIANT = "89ab" * 4  # a hex digit's low 2 bits -> the RFC 4122 variant digit 10xx
_sha1 = hashlib.sha1
# A record's fields, as JSON lines name them and as a column mapping targets them.
_FIELDS = ("stream_id", "type", "id", "stream_type", "correlation_id", "causation_id",
           "occurred_at", "metadata", "payload")
_ALIASES = {"stream": "stream_id", "event_type": "type"}
# What `mlevents read --json` prints besides the fields above: accepted and ignored, so an
# export can be imported elsewhere (the target store assigns its own).
_EXPORTED = frozenset({"version", "position", "schema_version", "recorded_schema_version",
                       "created_at"})


class ImportRecord(NamedTuple):
    """One input record, as read (checked when imported). `where` names it in errors."""

    where: str  # "line 12" of a JSON lines file, "row 12" of a CSV or Parquet file
    ordinal: int  # its line or row number (part of its deterministic id)
    stream_id: Any
    event_type: Any
    payload: Any
    id: Any = None
    metadata: Any = None
    stream_type: Any = None
    correlation_id: Any = None
    causation_id: Any = None
    occurred_at: datetime | None = None
    """Business time: when it happened. Parsed and checked here; stores that record it
    take it from ImportRow.occurred_at."""
    source: bytes | None = None
    """The record as the input holds it (a line's text, a row's cells and the mapping), from
    which its id is derived when it has none; None: derived from its fields."""


class ImportRow(NamedTuple):
    """One checked, encoded record, ready for a backend's `import_rows`."""

    stream_id: str
    stream_type: str | None  # used if the stream is new
    correlation_id: str | None
    causation_id: str | None
    row: EventRow
    occurred_at: datetime | None
    where: str


@dataclass
class ImportReport:
    """What an import did so far (given to the progress callback after every batch)."""

    read: int = 0  # records read from the input
    written: int = 0  # events written
    skipped: int = 0  # records whose id was recorded already (a re-run, or a resume)
    batches: int = 0  # batches committed
    streams: set[str] = field(default_factory=set, repr=False)


def runs(rows: Sequence[ImportRow]) -> Iterator[Sequence[ImportRow]]:
    """The batch as runs of consecutive rows sharing stream, correlation and causation (what
    one append could write)."""
    start = 0
    while start < len(rows):
        key = rows[start][:4]
        end = start + 1
        while end < len(rows) and rows[end][:4] == key:
            end += 1
        yield rows[start:end]
        start = end


def content_hashes(rows: Sequence[ImportRow], created_at: str, canonical: bool) -> list[bytes]:
    """Each row's content hash (`created_at` as hashed; `canonical` as append_hashes)."""
    contents: list[bytes] = []
    for run in runs(rows):
        first = run[0]
        contents += append_hashes(
            [row.row for row in run], first.stream_id, created_at, first.correlation_id,
            first.causation_id, canonical=canonical,
        )[0]
    return contents


def place_rows(
    rows: Sequence[ImportRow],
    contents: Sequence[bytes],
    heads: dict[str, tuple[str, int, bytes]],
) -> list[tuple[str, int, bytes]]:
    """Each row's (stream type, version, chain hash), in order: versions follow each
    stream's head in `heads` (stream -> its type, version, chain hash; absent: a new
    stream), which is moved along."""
    placed: list[tuple[str, int, bytes]] = []
    start = 0
    for run in runs(rows):
        first = run[0]
        kind, version, chain = heads.get(
            first.stream_id, (first.stream_type or "default", 0, GENESIS)
        )
        chains = fold_chain(chain, version, kind, contents[start:start + len(run)])
        placed += [(kind, version + n, link) for n, link in enumerate(chains, start=1)]
        heads[first.stream_id] = (kind, version + len(run), chains[-1])
        start += len(run)
    return placed


# -- reading the inputs -------------------------------------------------------------------
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
    with _open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EventValidationError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise EventValidationError(
                    f"{where}: expected a JSON object, got {type(value).__name__}"
                )
            yield _record(where, number, value, line.strip())


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
    mapped = _canonical([mapping.columns, mapping.constants, header])

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
    for batch in table.iter_batches(batch_size=DEFAULT_BATCH_SIZE):
        columns = [
            [None if value is None else value.isoformat() for value in column.to_pylist()]
            if is_temporal else column.to_pylist()
            for column, is_temporal in zip(batch.columns, temporal, strict=True)
        ]
        for values in zip(*columns, strict=True):
            number += 1
            yield to_record(values, f"row {number}", number, _canonical(values))


# -- importing ----------------------------------------------------------------------------
def record_id(record: ImportRecord) -> str:
    """The record's own id, or one derived from its line/row number and content (uuid5):
    the same record at the same place always gets the same id."""
    if record.id is not None:
        try:
            return str(uuid.UUID(str(record.id)))
        except ValueError:
            raise EventValidationError(
                f"{record.where}: id {record.id!r} is not a UUID (leave it out and the "
                "import derives one)"
            ) from None
    source = record.source
    if source is None:
        source = _canonical(
            [record.stream_id, record.event_type, record.payload, record.metadata,
             record.stream_type, record.correlation_id, record.causation_id]
        )
    # uuid.uuid5(IMPORT_NAMESPACE, name), written out (this runs once per record)
    h = _sha1(_NAMESPACE_BYTES + b"%d\x1f" % record.ordinal + source).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:32]}"


def _canonical(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(value, sort_keys=True, default=str).encode("utf-8", "surrogatepass")


def _at(where: str, exc: EventStoreError) -> EventStoreError:
    """`exc` with its message prefixed by the record's place."""
    kind = type(exc)
    if kind not in (EventValidationError, PayloadTooLargeError, UnknownEventTypeError,
                    DuplicateEventError):
        kind = EventValidationError
    return kind(f"{where}: {exc}")


def import_events(
    store: EventStore,
    records: Iterable[ImportRecord],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """See EventStore.import_events. While one batch is written (on a thread of its own:
    the database works while Python encodes), the next is read, checked and encoded."""
    from event_sourcing.stores.store import _check_int

    _check_int(batch_size, "batch_size", 1)
    report = ImportReport()
    recorder = store.recorder
    records = iter(records)
    pending: tuple[Future[None] | None, _Batch] | None = None
    # Ids are looked up before a batch is written until a batch finds none recorded (a
    # first import, or a resumed one past what was written): from then on the database's
    # unique index finds them, and a batch it refuses is looked up and written again.
    look_up = True

    def finish() -> None:
        """Wait for the batch in flight, count it, report progress."""
        nonlocal pending, look_up
        if pending is None:
            return
        (written, batch), pending = pending, None
        if written is not None:
            try:
                written.result()
            except DuplicateEventError:
                if batch.looked_up:
                    raise
                look_up = True
                batch = _without_recorded(store, batch)
                if batch.rows:
                    recorder.import_rows(batch.rows, batch.created_at)  # type: ignore[attr-defined]
        report.read += batch.read
        report.written += len(batch.rows)
        report.skipped += batch.skipped
        report.streams.update(row.stream_id for row in batch.rows)
        report.batches += 1
        if progress is not None:
            progress(report)

    with ThreadPoolExecutor(1, thread_name_prefix="mlevents-import") as writer:
        try:
            in_flight: dict[str, ImportRow] = {}
            while chunk := list(islice(records, batch_size)):
                batch = _prepare(store, chunk, in_flight, look_up)
                look_up = look_up and batch.skipped > 0
                finish()
                future = None
                if batch.rows:
                    future = writer.submit(
                        recorder.import_rows,  # type: ignore[attr-defined]
                        batch.rows, batch.created_at,
                    )
                pending = (future, batch)
                in_flight = {row.row.id: row for row in batch.rows}
            finish()
        except BaseException:
            finish()  # the batch in flight commits (or fails first) before the error is raised
            raise
    return report


class _Batch(NamedTuple):
    read: int
    skipped: int
    rows: list[ImportRow]
    looked_up: bool  # whether recorded ids were looked up before writing
    created_at: datetime


def _prepare(
    store: EventStore, chunk: list[ImportRecord], in_flight: dict[str, ImportRow],
    look_up: bool,
) -> _Batch:
    """A batch's records checked and encoded, without those recorded already: in the batch
    being written, and if `look_up`, in the store."""
    ids: dict[str, ImportRecord] = {}
    for record in chunk:
        event_id = record_id(record)
        if event_id in ids:
            raise DuplicateEventError(
                f"{record.where}: event id {event_id} is also the id of {ids[event_id].where}"
            )
        ids[event_id] = record
    recorded = [
        (event_id, row.stream_id, row.row.event_type)
        for event_id, row in in_flight.items() if event_id in ids
    ]
    if look_up:
        recorded += [
            (old.id, old.stream_id, old.event_type) for old in store.recorder.read_ids(list(ids))
        ]
    for event_id, stream_id, event_type in recorded:
        _same_record(ids.pop(event_id), event_id, stream_id, event_type)
    created_at = utc_time(store.clock(), "the time the store's clock returned")
    return _Batch(len(chunk), len(recorded), _encode(store, ids) if ids else [], look_up,
                  created_at)


def _same_record(record: ImportRecord | ImportRow, event_id: str, stream_id: str,
                 event_type: str) -> None:
    """Refuse a record whose id is recorded for another stream or type."""
    given_type = record.event_type if isinstance(record, ImportRecord) else record.row.event_type
    if stream_id != record.stream_id or event_type != given_type:
        raise DuplicateEventError(
            f"{record.where}: event id {event_id} is already recorded with different "
            f"content (stream {stream_id!r}, type {event_type!r})"
        )


def _without_recorded(store: EventStore, batch: _Batch) -> _Batch:
    """`batch` without the rows whose id the store has recorded (looked up)."""
    rows = {row.row.id: row for row in batch.rows}
    for old in store.recorder.read_ids(list(rows)):
        _same_record(rows.pop(old.id), old.id, old.stream_id, old.event_type)
    skipped = batch.skipped + len(batch.rows) - len(rows)
    return batch._replace(skipped=skipped, rows=list(rows.values()), looked_up=True)


def _encode(store: EventStore, records: dict[str, ImportRecord]) -> list[ImportRow]:
    """The batch checked and encoded as an append would (one encoding call for the batch;
    a failure is found again record by record, to name its line)."""
    from event_sourcing.stores.store import _check_name, _optional_id

    events = [
        NewEvent(record.event_type, record.payload, event_id, record.metadata)
        for event_id, record in records.items()
    ]
    try:
        rows = store._encode(events, None)[0]  # type: ignore[arg-type]
    except EventStoreError:
        rows = []
        for event, record in zip(events, records.values(), strict=True):
            try:
                rows += store._encode([event], None)[0]
            except EventStoreError as exc:
                raise _at(record.where, exc) from None
    out = []
    for row, record in zip(rows, records.values(), strict=True):
        try:
            stream_id = _check_name(record.stream_id, "stream_id")
            stream_type = (
                None if record.stream_type is None
                else _check_name(record.stream_type, "stream_type")
            )
            correlation = _optional_id(record.correlation_id, "correlation_id")
            causation = _optional_id(record.causation_id, "causation_id")
        except EventStoreError as exc:
            raise _at(record.where, exc) from None
        out.append(ImportRow(stream_id, stream_type, correlation, causation, row,
                             record.occurred_at, record.where))
    return out
