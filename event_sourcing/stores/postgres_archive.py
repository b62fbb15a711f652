"""Archiving (docs/archive.md): whole PostgreSQL partitions of sealed, old positions
written to Parquet files (zstd) of the artifact store, checked, recorded by an
`archive_created` event and the `mlevents_archives` manifest, then detached and dropped.
The reads of those files are postgres_archive_files'.

A partition is archived only when every position of it is covered by a seal and its
newest event is older than the cut-off. It may hold streams' heads: an append to a stream
whose head is archived reads the head from its file (postgres_heads).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from event_sourcing.errors import AccessDeniedError, EventStoreError, IntegrityError
from event_sourcing.integrity.hashing import canonical_json_bytes
from event_sourcing.stores.archive_format import file_schema, micros_of
from event_sourcing.stores.postgres_archive_files import Archived, ArchiveError, ArchiveFiles

if TYPE_CHECKING:
    from event_sourcing.artifacts import ArtifactStore
    from event_sourcing.stores.store import EventStore

__all__ = ["ARCHIVE_STREAM", "ArchiveError", "ArchiveResult", "archive", "candidates"]

ARCHIVE_STREAM = "mlevents.archive"
MEDIA_TYPE = "application/vnd.apache.parquet"
ROW_GROUP = 50_000
_SELECT = (
    "SELECT position, id::text, stream_id, stream_type, version, event_type, schema_version, "
    "payload, metadata, created_at, correlation_id, causation_id, content_hash, chain_hash, "
    "occurred_at FROM event_store WHERE position >= %s AND position < %s ORDER BY position"
)
_NAMESPACE = uuid.UUID("6d6c6576-6172-6368-6976-650000000000")


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
    every event recorded before `before` (streams' heads among them or not)."""
    from event_sourcing.integrity.audit import seals

    sealed = seals(store)
    through = sealed[-1].to_position if sealed else 0
    rows = store.recorder.query(
        "SELECT p.name, coalesce(p.lower_bound, 0), p.upper_bound "
        "FROM mlevents_partitions() AS p WHERE p.upper_bound - 1 <= ? "
        "AND EXISTS (SELECT FROM event_keys AS k WHERE k.position >= coalesce(p.lower_bound, 0) "
        "AND k.position < p.upper_bound) ORDER BY 3",
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
        path, file_schema(), compression="zstd", compression_level=9,
        use_dictionary=["stream_id", "stream_type", "event_type", "correlation_id",
                        "causation_id", "metadata"],
        # (statistics for the reads that skip row groups: by position, by business time)
        write_statistics=["position", "created_at", "occurred_at"],
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
        [micros_of(row[9]) for row in batch], [row[10] for row in batch],
        [row[11] for row in batch], [bytes(row[12]) for row in batch],
        [bytes(row[13]) for row in batch], [micros_of(row[14]) for row in batch],
    ]
    arrays = [
        pa.array(values, type=pa.int64() if pa.types.is_timestamp(f.type) else f.type).cast(f.type)
        for values, f in zip(columns, file_schema(), strict=True)
    ]
    writer.write_table(pa.Table.from_arrays(arrays, schema=file_schema()), row_group_size=ROW_GROUP)
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
    from event_sourcing.integrity.audit import with_builtin_catalog

    front = with_builtin_catalog(store)
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
    from event_sourcing.integrity.audit import seals
    from event_sourcing.integrity.checker import HashChecker, leaves
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
        checker = HashChecker(proxy, seal.from_position, incremental=True)  # type: ignore[arg-type]
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
