"""Archived history (docs/archive.md): whole PostgreSQL partitions of sealed, old positions
written to Parquet files (zstd) of the artifact store, checked, recorded by an
`archive_created` event and the `mlevents_archives` manifest, then detached and dropped;
and the reads of those files that make the archive transparent to every read of the log.

A partition is archived only when every position of it is covered by a seal, its newest
event is older than the cut-off, and it holds no stream's head: an append to a stream reads
its head's chain hash and time from event_store (postgres_append), and a stream's head only
moves forward, so a partition without heads never gets one again.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from event_sourcing.errors import AccessDeniedError, EventStoreError, IntegrityError
from event_sourcing.events import RecordedEvent
from event_sourcing.integrity.hashing import canonical_json_bytes, timestamp_text
from event_sourcing.stores.values import decode

if TYPE_CHECKING:
    import psycopg

    from event_sourcing.artifacts import ArtifactStore
    from event_sourcing.stores.store import EventStore

ARCHIVE_STREAM = "mlevents.archive"
MEDIA_TYPE = "application/vnd.apache.parquet"
ROW_GROUP = 50_000
_SLICE = 2_000  # rows decoded at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME = pa.timestamp("us", tz="UTC")
# The columns of an archive file: event_store's, payload and metadata as canonical JSON text.
SCHEMA = pa.schema([
    ("position", pa.int64()), ("id", pa.string()), ("stream_id", pa.string()),
    ("stream_type", pa.string()), ("version", pa.int64()), ("event_type", pa.string()),
    ("schema_version", pa.int32()), ("payload", pa.string()), ("metadata", pa.string()),
    ("created_at", _TIME), ("correlation_id", pa.string()), ("causation_id", pa.string()),
    ("content_hash", pa.binary(32)), ("chain_hash", pa.binary(32)), ("occurred_at", _TIME),
])
_SELECT = (
    "SELECT position, id::text, stream_id, stream_type, version, event_type, schema_version, "
    "payload, metadata, created_at, correlation_id, causation_id, content_hash, chain_hash, "
    "occurred_at FROM event_store WHERE position >= %s AND position < %s ORDER BY position"
)
_NAMESPACE = uuid.UUID("6d6c6576-6172-6368-6976-650000000000")


class ArchiveError(EventStoreError):
    """An archive could not be written, checked or read."""


@dataclass(frozen=True)
class Archived:
    """Positions [lower, upper) in the Parquet file `path` (artifact `uri`)."""

    lower: int
    upper: int
    uri: str
    path: Path


def _micros(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // timedelta(microseconds=1)


def _time(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


class ArchiveFiles:
    """A recorder's view of the manifest, and reads of the files it names (row group by row
    group: a group whose positions are all outside the wanted ones is not read)."""

    def __init__(self, artifacts: Callable[[], ArtifactStore]) -> None:
        self._artifacts = artifacts
        self._lock = threading.Lock()
        self.files: list[Archived] = []
        self.bound = 0  # the highest archived upper bound known (0: none)
        self._checked: set[str] = set()  # files whose content address was verified
        # The row group read last (a read_all reads a group a page at a time).
        self._last: tuple[str, int, tuple[str, ...] | None, pa.Table] | None = None

    def load(self, connection: psycopg.Connection[Any]) -> None:
        rows = connection.execute(
            "SELECT lower_bound, upper_bound, uri FROM mlevents_archives ORDER BY lower_bound"
        ).fetchall()
        store = self._artifacts()
        files = [Archived(int(lo), int(hi), uri, store.path_for(uri)) for lo, hi, uri in rows]
        with self._lock:
            self.files = files
            self.bound = files[-1].upper if files else 0

    def covers(self, positions: Iterable[int]) -> bool:
        return all(any(f.lower <= p < f.upper for f in self.files) for p in positions)

    def _open(self, archived: Archived) -> pq.ParquetFile:
        if archived.uri not in self._checked:
            try:
                self._artifacts().verify(archived.uri)
            except EventStoreError as exc:
                raise ArchiveError(
                    f"the archive of positions {archived.lower}-{archived.upper - 1} "
                    f"({archived.uri}) cannot be read: {exc}. Point $MLEVENTS_ARTIFACTS at "
                    "the artifact store the archive was written to."
                ) from None
            self._checked.add(archived.uri)
        return pq.ParquetFile(archived.path)

    def tables(
        self, low: int, high: int, columns: Sequence[str] | None = None,
        lowers: Collection[int] | None = None,
    ) -> Iterator[pa.Table]:
        """The row groups holding positions in [low, high], in position order (`lowers`:
        only the files starting at these positions, the manifest as one snapshot saw it)."""
        for archived in self.files:
            if archived.upper <= low or archived.lower > high:
                continue
            if lowers is not None and archived.lower not in lowers:
                continue
            parquet = self._open(archived)
            for group in range(parquet.num_row_groups):
                stats = parquet.metadata.row_group(group).column(0).statistics
                if stats is not None and stats.has_min_max and (
                    stats.max < low or stats.min > high
                ):
                    continue
                key = (archived.uri, group, None if columns is None else tuple(columns))
                last = self._last
                if last is not None and last[:3] == key:
                    yield last[3]
                    continue
                table = parquet.read_row_group(group, columns=columns)
                self._last = (*key, table)
                yield table

    def events(self, low: int, high: int, keep: Callable[[RecordedEvent], bool] | None = None,
               limit: int | None = None, dated: bool | None = None,
               only: Sequence[int] | None = None) -> list[RecordedEvent]:
        """The archived events at positions in [low, high] that `keep`, at most `limit`
        (`dated`: only those given an occurred_at, or only those not; None: all; `only`:
        only these positions)."""
        found: list[RecordedEvent] = []
        wanted = None if only is None else pa.array(only, pa.int64())
        for table in self.tables(low, high):
            position = table.column(0)
            table = table.filter(pc.and_(
                pc.greater_equal(position, low), pc.less_equal(position, high)
            ) if wanted is None else pc.is_in(position, value_set=wanted))
            # Decoded a slice at a time: a page needs only its first rows.
            for start in range(0, table.num_rows, _SLICE):
                for event in _events(table.slice(start, _SLICE), dated):
                    if keep is None or keep(event):
                        found.append(event)
                        if limit is not None and len(found) >= limit:
                            return found
        return found

    def page(
        self,
        page: list[RecordedEvent],
        after: int,
        event_types: Collection[str] | None,
        until: datetime | None,
        limit: int,
        undated_only: bool,
    ) -> list[RecordedEvent]:
        """A page of the global log (PostgresRecorder.read_page) with the archived events
        after `after` merged in (every archived position is below the read horizon)."""
        types = None if event_types is None else set(event_types)
        archived = self.events(
            after + 1, 2**63 - 1,
            lambda e: (types is None or e.event_type in types)
            and (until is None or e.created_at <= until),
            limit, dated=False if undated_only else None,
        )
        return merge(page, archived)[:limit]

    def at(self, positions: Sequence[int]) -> list[RecordedEvent]:
        """The archived events at these positions, in position order."""
        if not positions:
            return []
        return self.events(min(positions), max(positions), only=positions)

    def scan(
        self, keep: Callable[[RecordedEvent], bool], dated: bool | None = None
    ) -> list[RecordedEvent]:
        return self.events(0, 2**63 - 1, keep, dated=dated) if self.files else []

    def hashed(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        """Archived rows in (after, through] as hashed (PostgresRecorder.hashed_rows)."""
        rows: list[tuple[Any, ...]] = []
        for table in self.tables(after + 1, through):
            for row in _hashed(table):
                if after < row[0] <= through:
                    rows.append(row)
                    if len(rows) >= limit:
                        return rows
        return rows

    def counts(
        self, low: int, high: int, lowers: Collection[int] | None = None, firsts: bool = True
    ) -> dict[str, tuple[int, int]]:
        """Event type -> (events, events of version 1, or 0 unless `firsts`) of the archived
        positions in [low, high]: only the columns needed read (positions only when the
        range is not every position), row groups outside the range skipped."""
        whole = low <= 0 and high >= 2**62
        columns = ["event_type"] + (["version"] if firsts else []) + (
            [] if whole else ["position"]
        )
        found: dict[str, tuple[int, int]] = {}
        for table in self.tables(low, high, columns, lowers):
            if not whole:
                position = table.column("position")
                table = table.filter(
                    pc.and_(pc.greater_equal(position, low), pc.less_equal(position, high))
                )
            kinds = table.column("event_type")
            first: dict[str, int] = {}
            if firsts:
                first = dict(_tally(kinds.filter(pc.equal(table.column("version"), 1))))
            for event_type, events in _tally(kinds):
                had = found.get(event_type, (0, 0))
                found[event_type] = (had[0] + events, had[1] + first.get(event_type, 0))
        return found

    def containing(self, needles: Sequence[str]) -> dict[str, list[tuple[int, str, str]]]:
        """For each needle, (position, id, type) of the archived events whose payload or
        metadata text holds it, in position order: every file's payload and metadata
        columns read once for all needles."""
        found: dict[str, list[tuple[int, str, str]]] = {needle: [] for needle in needles}
        if not needles:
            return found
        columns = ["position", "id", "event_type", "payload", "metadata"]
        for table in self.tables(0, 2**63 - 1, columns):
            for needle in needles:
                held = table.filter(pc.or_(
                    pc.match_substring(table.column(3), needle),
                    pc.match_substring(table.column(4), needle),
                ))
                found[needle] += zip(
                    *(held.column(i).to_pylist() for i in range(3)), strict=True
                )
        return found

    def chain_at(self, position: int) -> bytes | None:
        for table in self.tables(position, position, ["position", "chain_hash"]):
            for found, chain in zip(*(table.column(i).to_pylist() for i in range(2)),
                                    strict=True):
                if found == position:
                    return bytes(chain)
        return None


def _tally(values: pa.ChunkedArray) -> Iterator[tuple[str, int]]:
    """(value, how many times) of a column."""
    counted = pc.value_counts(values)
    return zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(),
               strict=True)


def archived_files(after: int, through: int, width: int) -> str:
    """A UNION ALL branch of `width` columns ending a statement over event_store: a row
    (NULL, lower bound, upper bound, ...) per archived file holding positions in (after,
    through], the manifest as that statement's snapshot saw it (its partitions dropped)."""
    extra = ", upper_bound" + ", NULL" * (width - 3) if width > 2 else ""
    return (
        f"SELECT NULL, lower_bound{extra} FROM mlevents_archives "
        f"WHERE upper_bound - 1 > {int(after)} AND lower_bound <= {int(through)}"
    )


def merge(hot: list[RecordedEvent], archived: list[RecordedEvent]) -> list[RecordedEvent]:
    """Events of the tables and of the archive in position order, each once: a partition
    archived between a scan and the manifest's read is in both (it was dropped after the
    scan's snapshot was taken), and its events are equal there."""
    if not archived:
        return hot
    return sorted({e.position: e for e in (*hot, *archived)}.values(),
                  key=lambda e: e.position)


def _columns(table: pa.Table) -> list[list[Any]]:
    names = table.column_names
    columns = []
    for name in names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        columns.append(column.to_pylist())
    return columns


def _events(table: pa.Table, dated: bool | None = None) -> Iterator[RecordedEvent]:
    (positions, ids, streams, kinds, versions, types, schema_versions, payloads, metadatas,
     created, correlations, causations, _, _, occurred) = _columns(table)
    for i, position in enumerate(positions):
        if dated is not None and dated is (occurred[i] is None):
            continue
        created_at = _EPOCH + timedelta(microseconds=created[i])
        occurred_at = _time(occurred[i])
        yield RecordedEvent(
            ids[i], streams[i], kinds[i], versions[i], position, types[i], schema_versions[i],
            decode(payloads[i]), {} if metadatas[i] == "{}" else decode(metadatas[i]),
            created_at, correlations[i], causations[i], schema_versions[i],
            created_at if occurred_at is None else occurred_at,
        )


def _hashed(table: pa.Table) -> Iterator[tuple[Any, ...]]:
    columns = _columns(table)
    for row in zip(*columns, strict=True):
        yield (
            *row[:7], row[7].encode(), row[8].encode(), timestamp_text(_time(row[9])),  # type: ignore[arg-type]
            row[10], row[11], bytes(row[12]), bytes(row[13]),
            None if row[14] is None else timestamp_text(_time(row[14])),  # type: ignore[arg-type]
        )


# -- writing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveResult:
    """One partition archived."""

    partition: str
    from_position: int
    to_position: int
    count: int
    uri: str
    file_bytes: int
    payload_bytes: int
    seal_roots: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def candidates(store: EventStore, before: datetime) -> list[tuple[str, int, int]]:
    """The partitions that may be archived: (name, lower, upper), every position sealed,
    every event recorded before `before`, no stream's head among them."""
    from event_sourcing.integrity.audit import seals

    sealed = seals(store)
    through = sealed[-1].to_position if sealed else 0
    rows = store.recorder.query(
        "SELECT p.name, coalesce(p.lower_bound, 0), p.upper_bound "
        "FROM mlevents_partitions() AS p WHERE p.upper_bound - 1 <= ? "
        "AND EXISTS (SELECT FROM event_keys AS k WHERE k.position >= coalesce(p.lower_bound, 0) "
        "AND k.position < p.upper_bound) "
        "AND NOT EXISTS (SELECT FROM event_keys AS k WHERE k.position >= "
        "coalesce(p.lower_bound, 0) AND k.position < p.upper_bound AND NOT EXISTS ("
        "SELECT FROM event_keys AS n WHERE n.stream_id = k.stream_id "
        "AND n.version = k.version + 1)) ORDER BY 3",
        (through,),
    )
    found = []
    for name, lower, upper in rows:
        newest = store.recorder.query(
            "SELECT max(created_at) FROM event_store WHERE position >= ? AND position < ?",
            (lower, upper),
        )[0][0]
        if newest is not None and newest < before:
            found.append((str(name), int(lower), int(upper)))
    return found


def _write(rows: Iterable[Sequence[Any]], path: Path) -> tuple[int, int]:
    """Write the partition's rows to `path`: (rows, payload bytes)."""
    count = payload_bytes = 0
    with pq.ParquetWriter(
        path, SCHEMA, compression="zstd", compression_level=9,
        use_dictionary=["stream_id", "stream_type", "event_type", "correlation_id",
                        "causation_id", "metadata"],
        write_statistics=["position"],
    ) as writer:
        batch: list[Sequence[Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == ROW_GROUP:
                count, payload_bytes = _flush(writer, batch, count, payload_bytes)
        if batch:
            count, payload_bytes = _flush(writer, batch, count, payload_bytes)
    return count, payload_bytes


def _flush(writer: pq.ParquetWriter, batch: list[Sequence[Any]], count: int,
           payload_bytes: int) -> tuple[int, int]:
    payloads = [canonical_json_bytes(row[7]).decode() for row in batch]
    columns = [
        [row[0] for row in batch], [row[1] for row in batch], [row[2] for row in batch],
        [row[3] for row in batch], [row[4] for row in batch], [row[5] for row in batch],
        [row[6] for row in batch], payloads,
        [canonical_json_bytes(row[8]).decode() for row in batch],
        [_micros(row[9]) for row in batch], [row[10] for row in batch],
        [row[11] for row in batch], [bytes(row[12]) for row in batch],
        [bytes(row[13]) for row in batch], [_micros(row[14]) for row in batch],
    ]
    arrays = [
        pa.array(values, type=pa.int64() if pa.types.is_timestamp(f.type) else f.type).cast(f.type)
        for values, f in zip(columns, SCHEMA, strict=True)
    ]
    writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA), row_group_size=ROW_GROUP)
    batch.clear()
    return count + len(columns[0]), payload_bytes + sum(len(p.encode()) for p in payloads)


def archive(
    store: EventStore,
    before: datetime,
    artifacts: ArtifactStore | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ArchiveResult]:
    """Archive every partition `candidates` names (see the module docstring and
    docs/archive.md); PostgreSQL only. `progress(done, total)` after each partition."""
    if store.dialect != "postgresql":
        raise ArchiveError(
            "archive needs a PostgreSQL store: a SQLite store is one file with no partitions "
            "to detach; copy or back up the file instead (docs/archive.md)"
        )
    from event_sourcing.artifacts import ArtifactStore

    artifacts = artifacts or ArtifactStore()
    done: list[ArchiveResult] = []
    todo = candidates(store, before)
    verified: dict[int, str] = {}  # seals verified in this run: number -> root
    for name, lower, upper in todo:
        done.append(_archive_one(store, artifacts, name, lower, upper, verified))
        if progress is not None:
            progress(len(done), len(todo))
    return done


def _archive_one(
    store: EventStore, artifacts: ArtifactStore, name: str, lower: int, upper: int,
    verified: dict[int, str],
) -> ArchiveResult:
    from event_sourcing.catalog.ml_events import ArchiveCreated
    from event_sourcing.events import NewEvent

    recorder: Any = store.recorder
    with tempfile.TemporaryDirectory(prefix="mlevents-archive-") as folder:
        path = Path(folder) / f"{name}.parquet"
        count, payload_bytes = recorder._connections.read(
            f"archive {name}",
            lambda connection: _write(connection.execute(_SELECT, (lower, upper)), path),
        )
        ref = artifacts.put_file(path, media_type=MEDIA_TYPE)
    archived = Archived(lower, upper, ref.uri, artifacts.path_for(ref.uri))
    roots = _check(store, archived, count, verified)
    size = os.path.getsize(archived.path)
    result = ArchiveResult(name, lower, upper - 1, count, ref.uri, size, payload_bytes, roots)
    event = ArchiveCreated(
        uri=ref.uri, sha256=ref.sha256, from_position=lower, to_position=upper - 1,
        count=count, seal_roots=roots, file_bytes=size, payload_bytes=payload_bytes,
    )
    from event_sourcing.integrity.audit import _front

    front = _front(store)
    kind, _, payload = front.registry.encode_model(event)
    front.append(ARCHIVE_STREAM, [NewEvent(
        kind, payload, id=str(uuid.uuid5(_NAMESPACE, f"{ref.sha256}:{lower}:{upper}")),
    )])
    try:
        with store.transaction() as tx:
            tx.execute(
                "INSERT INTO mlevents_archives (lower_bound, upper_bound, uri, sha256, events) "
                "VALUES (?, ?, ?, ?, ?)", (lower, upper, ref.uri, ref.sha256, count),
            )
            tx.execute(f'ALTER TABLE event_store DETACH PARTITION "{name}"')
            tx.execute(f'DROP TABLE "{name}"')
    except EventStoreError as exc:
        if "owner" in str(exc) or "permission" in str(exc):
            raise AccessDeniedError(
                f"archiving needs the store's owner (dropping {name}): {exc}"
            ) from None
        raise
    return result


class _FileFirst:
    """A recorder whose hashed rows come from `archived` where it covers them (the check
    of a file before its partition is dropped)."""

    def __init__(self, recorder: Any, files: ArchiveFiles) -> None:
        self._recorder = recorder
        self._files = files

    def hashed_rows(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        rows = {row[0]: row for row in self._recorder.hashed_rows(after, through, limit)}
        rows.update((row[0], row) for row in self._files.hashed(after, through, limit))
        return [rows[p] for p in sorted(rows)][:limit]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)


def _check(
    store: EventStore, archived: Archived, count: int, verified: dict[int, str]
) -> list[str]:
    """Before anything is dropped: the file read back holds exactly the partition's rows,
    and every seal covering them verifies with the file's rows in place of the table's
    (content and chain hashes recomputed, Merkle roots compared). The seals' roots.
    A seal `verified` already in this run (with another file's rows, each equal to the
    table's) is not walked again: a seal over many partitions is walked once."""
    from event_sourcing.integrity.audit import _Checker, leaves, seals
    from event_sourcing.integrity.hashing import merkle_root

    recorder: Any = store.recorder
    files = ArchiveFiles(lambda: recorder.artifacts)
    files.files = [archived]
    stored = recorder.hashed_rows(archived.lower - 1, archived.upper - 1, count + 1)
    written = files.hashed(archived.lower - 1, archived.upper - 1, count + 1)
    if len(written) != count or written != stored:
        raise IntegrityError(
            f"the archive of positions {archived.lower}-{archived.upper - 1} does not read "
            "back as the stored rows; nothing was dropped"
        )
    proxy = _Proxy(store, _FileFirst(recorder, files))
    roots = []
    for seal in seals(store):
        if seal.to_position < archived.lower or seal.from_position >= archived.upper - 1:
            continue
        if seal.number in verified:
            roots.append(verified[seal.number])
            continue
        checker = _Checker(proxy, seal.from_position, incremental=True)  # type: ignore[arg-type]
        root = merkle_root(leaves(checker.run(seal.to_position))).hex()
        if checker.problems or root != seal.root:
            raise IntegrityError(
                f"the archive of positions {archived.lower}-{archived.upper - 1} does not "
                f"verify against seal {seal.number}: "
                f"{checker.problems[0] if checker.problems else 'root differs'}; "
                "nothing was dropped"
            )
        verified[seal.number] = root
        roots.append(root)
    return roots


class _Proxy:
    def __init__(self, store: EventStore, recorder: Any) -> None:
        self.recorder = recorder
        self.dialect = store.dialect
        self.transaction = store.transaction
