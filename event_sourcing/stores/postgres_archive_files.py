"""The archive's files (docs/archive.md) as the reads of the log see them: the manifest
(`mlevents_archives`) as a recorder last read it, and reads of the files row group by row
group (a group whose position statistics are outside the wanted positions is
not read; rows are filtered in Arrow before any is decoded): events by position, type,
time, correlation and business time, hashed rows, chain hashes, counts by type, text
matches; and the merge of archived events with the tables' rows, each once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from event_sourcing.errors import EventStoreError
from event_sourcing.events import RecordedEvent
from event_sourcing.stores.archive_format import (
    EPOCH,
    MICROSECOND,
    all_of,
    columns_of,
    earliest_dated,
    events_of,
    hashed_of,
    micros_of,
    tally,
    timestamps,
)

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from event_sourcing.artifacts import ArtifactStore
else:  # (imported when a file is first read: archive_format)
    from event_sourcing.stores.archive_format import pa, pc, pq

_SLICE = 2_000  # rows decoded at a time
class Filter(NamedTuple):
    """Which rows of a row group to keep: `mask(table)`, a boolean array (null: not kept)
    of a table of at least the position and `columns`."""

    columns: tuple[str, ...]
    mask: Callable[[pa.Table], Any]


class ArchiveError(EventStoreError):
    """An archive could not be written, checked or read."""


class Head(NamedTuple):
    """A stream's event an append continues from: its stream type, version, chain hash
    and the time it was recorded."""

    stream_type: str
    version: int
    chain_hash: bytes
    created_at: datetime


@dataclass(frozen=True)
class Archived:
    """Positions [lower, upper) in the Parquet file `path` (artifact `uri`)."""

    lower: int
    upper: int
    uri: str
    path: Path


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
        files = []
        if rows:  # (the artifact store, with pandas and numpy, only for a store with files)
            store = self._artifacts()
            files = [Archived(int(lo), int(hi), uri, store.path_for(uri))
                     for lo, hi, uri in rows]
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

    def _groups(
        self, low: int, high: int, lowers: Collection[int] | None = None
    ) -> Iterator[tuple[Archived, pq.ParquetFile, int]]:
        """(archive file, its reader, row group) of the row groups holding positions in
        [low, high], in position order (`lowers`: only the files starting at these
        positions, the manifest as one snapshot saw it)."""
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
                yield archived, parquet, group

    def _read(
        self, archived: Archived, parquet: pq.ParquetFile, group: int,
        columns: Sequence[str] | None,
    ) -> pa.Table:
        key = (archived.uri, group, None if columns is None else tuple(columns))
        last = self._last
        if last is not None and last[:3] == key:
            return last[3]
        table = parquet.read_row_group(group, columns=columns)
        self._last = (*key, table)
        return table

    def tables(
        self, low: int, high: int, columns: Sequence[str] | None = None,
        lowers: Collection[int] | None = None,
    ) -> Iterator[pa.Table]:
        """The row groups holding positions in [low, high], in position order (`lowers`:
        as for _groups)."""
        for archived, parquet, group in self._groups(low, high, lowers):
            yield self._read(archived, parquet, group, columns)

    def events(self, low: int, high: int, where: Filter | None = None,
               limit: int | None = None, only: Sequence[int] | None = None,
               ) -> list[RecordedEvent]:
        """The archived events at positions in [low, high] (`only`: only these positions)
        whose rows `where` keeps, at most `limit`, in position order. Given `where` or
        `only`, a row group is read whole only when the columns they look at keep one of
        its rows; only the rows returned are decoded."""
        found: list[RecordedEvent] = []
        wanted = None if only is None else pa.array(only, pa.int64())
        # (the columns that decide which rows are kept, read first when not every row is)
        probed = ("position", *where.columns) if where is not None else (
            None if only is None else ("position",)
        )
        for archived, parquet, group in self._groups(low, high):
            table = self._read(archived, parquet, group, probed)
            position = table.column(0)
            mask = pc.and_(
                pc.greater_equal(position, low), pc.less_equal(position, high)
            ) if wanted is None else pc.is_in(position, value_set=wanted)
            if where is not None:
                mask = pc.and_(mask, where.mask(table))
            if probed is not None:
                if not pc.any(mask).as_py():
                    continue
                table = self._read(archived, parquet, group, None)
            table = table.filter(mask)
            # Decoded a slice at a time: a page needs only its first rows.
            for start in range(0, table.num_rows, _SLICE):
                found += events_of(table.slice(start, _SLICE))
                if limit is not None and len(found) >= limit:
                    return found[:limit]
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
        types = None if event_types is None else pa.array(sorted(event_types), pa.string())
        recorded = None if until is None else pa.scalar(until, timestamps())
        columns = (*(() if types is None else ("event_type",)),
                   *(() if recorded is None else ("created_at",)),
                   *(("occurred_at",) if undated_only else ()))

        def where(table: pa.Table) -> Any:
            masks = []
            if types is not None:
                masks.append(pc.is_in(table.column("event_type"), value_set=types))
            if recorded is not None:
                masks.append(pc.less_equal(table.column("created_at"), recorded))
            if undated_only:
                masks.append(pc.is_null(table.column("occurred_at")))
            return all_of(masks)

        archived = self.events(
            after + 1, 2**63 - 1, Filter(columns, where) if columns else None, limit
        )
        return merge(page, archived)[:limit]

    def at(self, positions: Sequence[int]) -> list[RecordedEvent]:
        """The archived events at these positions, in position order."""
        if not positions:
            return []
        return self.events(min(positions), max(positions), only=positions)

    def correlated(self, correlation_id: str) -> list[RecordedEvent]:
        """The archived events of this correlation id, in position order."""
        if not self.files:
            return []
        wanted = pa.scalar(correlation_id, pa.string())
        return self.events(0, 2**63 - 1, Filter(("correlation_id",), lambda table: pc.equal(
            table.column("correlation_id"), wanted
        )))

    def dated(
        self,
        after: tuple[datetime, int] | None,
        occurred_until: datetime,
        recorded_until: datetime | None,
        limit: int,
    ) -> list[RecordedEvent]:
        """The first `limit` archived events given an occurred_at at or before
        `occurred_until` (and recorded at or before `recorded_until`) after `after`, in
        (occurred_at, position) order (PostgresRecorder.read_dated_page): the row groups
        whose statistics allow such an event read in the order of the earliest they allow,
        until the page is full and the next group starts after it; only the page's
        events decoded."""
        if not self.files:
            return []
        until = pa.scalar(occurred_until, timestamps())
        recorded = None if recorded_until is None else pa.scalar(recorded_until, timestamps())
        after_micros = None if after is None else micros_of(after[0])
        until_micros = (occurred_until - EPOCH) // MICROSECOND
        recorded_micros = micros_of(recorded_until)
        # The row groups that may hold such an event, by the earliest business time each
        # may hold (its statistics): a page stops at the first group that starts after it.
        candidates = []
        for archived, parquet, group in self._groups(0, 2**63 - 1):
            earliest = earliest_dated(parquet.metadata.row_group(group), after_micros,
                                       until_micros, recorded_micros)
            if earliest is not None:
                candidates.append((earliest, archived.lower, group, archived))
        candidates.sort(key=lambda candidate: candidate[:3])
        page: pa.Table | None = None  # the first `limit` rows kept so far
        for earliest, _, group, archived in candidates:
            if page is not None and page.num_rows == limit and (
                page.column("occurred_at")[limit - 1].value < earliest
            ):
                break  # every row of this group (and of those after) sorts after the page
            table = self._read(archived, self._open(archived), group,
                               ["position", "occurred_at", "created_at"])
            occurred = table.column("occurred_at")
            masks = [pc.less_equal(occurred, until)]  # (null for an undated row: dropped)
            if recorded is not None:
                masks.append(pc.less_equal(table.column("created_at"), recorded))
            if after is not None:
                at = pa.scalar(after[0], timestamps())
                masks.append(pc.or_(pc.greater(occurred, at), pc.and_(
                    pc.equal(occurred, at), pc.greater(table.column("position"), after[1])
                )))
            table = table.filter(all_of(masks))
            if table.num_rows:
                page = (table if page is None else pa.concat_tables([page, table])).sort_by(
                    [("occurred_at", "ascending"), ("position", "ascending")]
                ).slice(0, limit)
        if page is None:
            return []
        # Only the page's events read whole and decoded.
        return sorted(self.at(page.column("position").to_pylist()),
                      key=lambda event: (event.occurred_at, event.position))

    def hashed(self, after: int, through: int, limit: int) -> list[tuple[Any, ...]]:
        """Archived rows in (after, through] as hashed (PostgresRecorder.hashed_rows)."""
        rows: list[tuple[Any, ...]] = []
        for table in self.tables(after + 1, through):
            for row in hashed_of(table):
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
                first = dict(tally(kinds.filter(pc.equal(table.column("version"), 1))))
            for event_type, events in tally(kinds):
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

    def heads(self, positions: Sequence[int]) -> dict[int, Head]:
        """Position -> (stream type, version, chain hash, time recorded) of the archived
        events at these positions (a stream's head whose partition was archived: an append
        or import continues from it, postgres_heads); only those columns of the row groups
        holding them read, each once (not those between)."""
        found: dict[int, Head] = {}
        wanted = pa.array(positions, pa.int64())
        columns = ["position", "stream_type", "version", "chain_hash", "created_at"]
        for wanted_position in sorted(set(positions)):
            if wanted_position in found:  # read with an earlier one's row group
                continue
            for table in self.tables(wanted_position, wanted_position, columns):
                held = table.filter(pc.is_in(table.column(0), value_set=wanted))
                for position, kind, version, chain, created in zip(
                    *columns_of(held), strict=True
                ):
                    found[position] = Head(
                        kind, version, bytes(chain), EPOCH + timedelta(microseconds=created)
                    )
        return found

    def chain_at(self, position: int) -> bytes | None:
        for table in self.tables(position, position, ["position", "chain_hash"]):
            for found, chain in zip(*(table.column(i).to_pylist() for i in range(2)),
                                    strict=True):
                if found == position:
                    return bytes(chain)
        return None


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


