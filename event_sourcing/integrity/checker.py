"""The walk over the log that sealing and verification share (event_sourcing.integrity.audit):
recompute every content and chain hash in a range of positions, name what does not match
(`Problem`), and give the Merkle leaves of what was read.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog.ml_events import EventTypes
from event_sourcing.integrity.hashing import GENESIS
from event_sourcing.integrity.hashing import field as text_field

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

SEAL_STREAM = "mlevents.integrity.seals"  # the walk notes the rows of seals on it
PAGE = 20_000  # rows read per query


@dataclass(frozen=True)
class Problem:
    """One thing verification found wrong; `position` etc. name the event when there is one."""

    kind: str  # content, chain, version, missing, seal, witness, truncated, triggers
    detail: str
    position: int | None = None
    stream_id: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.position is not None:
            where = f"position {self.position}"
            if self.stream_id is not None:
                where += f" (stream {self.stream_id!r} version {self.version})"
            where += ": "
        return f"{where}{self.kind}: {self.detail}"


class HashChecker:
    """Recomputes content and chain hashes from `after` on; yields (position, leaf)."""

    def __init__(self, store: EventStore, after: int, incremental: bool) -> None:
        self.store = store
        self.after = after
        self.incremental = incremental  # look up chains of events before `after`
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.problems: list[Problem] = []
        self.events = 0
        self.last: tuple[int, bytes] | None = None  # (position, chain) of the last row
        self.seal_rows: list[int] = []  # positions of seals
        self.alert_rows: list[tuple[int, str, int, str]] = []

    def _head(self, stream: str, version: int) -> tuple[int, bytes] | None:
        if not self.incremental or version == 1:
            return (0, GENESIS)
        with self.store.transaction() as tx:
            row = tx.execute(
                "SELECT chain_hash FROM event_store WHERE stream_id = ? AND version = ?"
                if self.store.dialect == "sqlite" else  # through the key table (partitions)
                "SELECT e.chain_hash FROM event_keys AS k JOIN event_store AS e "
                "ON e.position = k.position AND e.stream_id = k.stream_id "
                "WHERE k.stream_id = ? AND k.version = ? AND e.version = k.version",
                (stream, version - 1),
            ).fetchone()
        if row and row[0] is not None:
            return (version - 1, bytes(row[0]))
        chain = self.store.recorder.archived_chain(stream, version - 1)  # docs/archive.md
        return None if chain is None else (version - 1, chain)

    def run(self, through: int) -> list[tuple[int, bytes]]:
        """Check every event in (after, through]; return their (position, chain hash)."""
        recorder = self.store.recorder
        contiguous = self.store.dialect == "sqlite"  # PostgreSQL positions have gaps
        heads = self.heads
        kinds: dict[str, bytes] = {}
        fields: dict[str, bytes] = {}  # stream ids and event types, length-prefixed
        u32, null, empty_object = struct.Struct(">I").pack, text_field(None), text_field("{}")
        pairs: list[tuple[int, bytes]] = []
        keep = pairs.append
        sha256 = hashlib.sha256
        special = {EventTypes.INTEGRITY_SEALED, EventTypes.INTEGRITY_TRIGGERS_RESTORED}
        expected_position = self.after + 1
        after = self.after
        while True:
            rows = recorder.hashed_rows(after, through, PAGE)
            for row in rows:
                (position, event_id, stream, kind, version, event_type, schema_version,
                 payload, metadata, created_at, correlation, causation, stored_content,
                 stored_chain, occurred_at) = row
                # content_hash(...), written out: this loop is the cost of verification
                stream_field = fields.get(stream)
                if stream_field is None:
                    stream_field = fields[stream] = text_field(stream)
                type_field = fields.get(event_type)
                if type_field is None:
                    type_field = fields[event_type] = text_field(event_type)
                i = event_id.encode()
                if isinstance(payload, str):
                    payload = payload.encode("utf-8", "surrogatepass")
                if metadata == b"{}" or metadata == "{}":
                    metadata_field = empty_object
                else:
                    if isinstance(metadata, str):
                        metadata = metadata.encode("utf-8", "surrogatepass")
                    metadata_field = u32(len(metadata)) + metadata
                c = created_at.encode()
                content = sha256(b"".join((
                    u32(len(i)), i, stream_field, type_field,
                    schema_version.to_bytes(8, "big", signed=True), u32(len(payload)), payload,
                    metadata_field, u32(len(c)), c,
                    null if correlation is None else text_field(correlation),
                    null if causation is None else text_field(causation),
                    b"" if occurred_at is None else text_field(occurred_at),
                ))).digest()
                head = heads.get(stream)
                if (
                    head is None
                    or version != head[0] + 1
                    or content != stored_content
                    or (contiguous and position != expected_position)
                ):
                    head = self._inspect(row, content, head, expected_position, contiguous)
                expected_position = position + 1
                # Linked from the stored content hash: an edit is named once, as content.
                kind_field = kinds.get(kind)
                if kind_field is None:
                    kind_field = kinds[kind] = text_field(kind)
                chain = sha256(
                    head[1] + version.to_bytes(8, "big", signed=True) + kind_field
                    + (stored_content or content)
                ).digest()
                if chain != stored_chain:
                    self.problems.append(Problem(
                        "chain",
                        "the chain hash does not link to the previous event of the stream "
                        "(an event before it was changed, removed or inserted, or this one "
                        "was forged)",
                        position, stream, version,
                    ))
                    stored_chain = bytes(stored_chain or chain)
                heads[stream] = (version, stored_chain)
                keep((position, stored_chain))
                if event_type in special:
                    if event_type == EventTypes.INTEGRITY_TRIGGERS_RESTORED:
                        self.alert_rows.append((position, stream, version, payload))
                    elif stream == SEAL_STREAM:
                        self.seal_rows.append(position)
            self.events += len(rows)
            if rows:
                after = rows[-1][0]
                self.last = pairs[-1]
            if len(rows) < PAGE:
                return pairs

    def _inspect(
        self,
        row: tuple[Any, ...],
        content: bytes,
        head: tuple[int, bytes] | None,
        expected_position: int,
        contiguous: bool,
    ) -> tuple[int, bytes]:
        """The slow path of a row: a stream seen first, or something wrong. Returns the
        head to link the row's chain hash to."""
        position, stream, version, stored_content = row[0], row[2], row[4], row[12]
        problem = self.problems.append
        if contiguous and position != expected_position:
            problem(Problem(
                "missing",
                f"positions {expected_position}-{position - 1} are missing (SQLite "
                "positions are contiguous): events were deleted",
                expected_position,
            ))
        if head is None:
            head = self._head(stream, version)
            if head is None:
                problem(Problem(
                    "version", f"version {version - 1} of this stream is missing",
                    position, stream, version,
                ))
                head = (version - 1, GENESIS)
        if version != head[0] + 1:
            problem(Problem(
                "version",
                f"follows version {head[0]} of its stream: "
                + ("events before it were removed" if version > head[0] + 1
                   else "versions were swapped or an event was inserted"),
                position, stream, version,
            ))
        if stored_content is None or bytes(stored_content) != content:
            problem(Problem(
                "content",
                "the stored content no longer matches its hash: payload, metadata, "
                "times, type, schema version or ids were changed",
                position, stream, version,
            ))
        return head


def leaves(pairs: list[tuple[int, bytes]]) -> list[bytes]:
    """The Merkle leaves of (position, chain hash) pairs (hashing.leaf_hash, inlined)."""
    sha256 = hashlib.sha256
    return [
        sha256(b"\x00" + position.to_bytes(8, "big", signed=True) + chain).digest()
        for position, chain in pairs
    ]
