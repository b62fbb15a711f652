"""Seal and verify a store: recompute every chain and seal, name the first bad event, check
roots kept elsewhere (a witness file), and restore append-only triggers found missing.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import struct
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import default_registry
from event_sourcing.catalog.ml_events import (
    EventTypes,
    IntegritySealed,
    IntegrityTriggersRestored,
)
from event_sourcing.errors import ConcurrencyError, IntegrityError
from event_sourcing.integrity.hashing import (
    GENESIS,
    merkle_root,
    seal_chain,
)
from event_sourcing.integrity.hashing import field as text_field

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

__all__ = [
    "IntegrityError", "IntegrityWarning", "Problem", "Seal", "VerifyReport", "check_triggers",
    "load_witness", "seal", "seals", "verify",
]
SEAL_STREAM = "mlevents.integrity.seals"
ALERT_STREAM = "mlevents.integrity.alerts"
PAGE = 20_000
logger = logging.getLogger("event_sourcing.integrity")
class IntegrityWarning(UserWarning):
    """The store's append-only protection was found off (and restored if possible)."""


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


@dataclass(frozen=True)
class Seal:
    """A seal as recorded (hashes in hex): `number` is its version in the seal stream."""

    number: int
    position: int
    from_position: int
    to_position: int
    count: int
    root: str
    previous: str
    chain: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    """What `verify` checked and found. `ok` is True when `problems` is empty."""

    from_position: int
    to_position: int = 0
    events: int = 0
    seals: int = 0
    witness_seals: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


# -- triggers ----------------------------------------------------------------------------------
def check_triggers(store: EventStore) -> list[str]:
    """Recreate missing / re-enable disabled append-only triggers; say so loudly (a warning,
    a log record and an `integrity_triggers_restored` event). Returns what was wrong."""
    problems, error = store.recorder.restore_triggers()
    if not problems:
        return []
    head = store.head_position()
    message = (
        f"{store.recorder.description}: {'; '.join(problems)} — the log was not append-only "
        f"up to position {head}. "
        + (
            "The triggers were restored. "
            if error is None
            else f"They could NOT be restored ({error}); reconnect as the table's owner. "
        )
        + "Run `mlevents verify` to see what changed while they were gone."
    )
    logger.warning(message)
    warnings.warn(message, IntegrityWarning, stacklevel=3)
    _front(store).append(
        ALERT_STREAM,
        [
            IntegrityTriggersRestored(
                problems=problems, restored=error is None, error=error, head_position=head
            )
        ],
    )
    return problems


def _front(store: EventStore) -> EventStore:
    """The store with the built-in catalog (the integrity events), whatever its registry."""
    if store.registry is default_registry and store.validate:
        return store
    from event_sourcing.stores.store import EventStore

    return EventStore(store.recorder, registry=default_registry, clock=store.clock)


# -- seals -------------------------------------------------------------------------------------
def seals(store: EventStore) -> list[Seal]:
    """Every seal recorded, oldest first (what `mlevents seal --json` exports)."""
    return [_seal(event) for event in store.recorder.read_stream(SEAL_STREAM, 1, None)]


def _seal(event: Any) -> Seal:
    p = event.payload
    return Seal(
        event.version, event.position, p["from_position"], p["to_position"], p["count"],
        p["root"], p["previous"], p["chain"],
    )


def seal(store: EventStore) -> Seal:
    """Verify every settled event since the last seal, then append an `integrity_sealed`
    event with their Merkle root chained to the previous seal's. Raises IntegrityError
    (and seals nothing) if the range does not verify."""
    front = _front(store)
    while True:
        number = store.recorder.stream_version(SEAL_STREAM)
        last = (
            _seal(store.recorder.read_stream(SEAL_STREAM, number, number)[0]) if number else None
        )
        start = last.to_position if last else 0
        previous = bytes.fromhex(last.chain) if last else GENESIS
        through = store.head_position()
        checker = _Checker(store, start, incremental=start > 0)
        sealed = leaves(checker.run(through))
        if checker.problems:
            raise IntegrityError(
                f"not sealing: positions {start + 1}-{through} do not verify; first problem: "
                f"{checker.problems[0]}"
            )
        root = merkle_root(sealed)
        chain = seal_chain(previous, start, through, len(sealed), root)
        event = IntegritySealed(
            from_position=start, to_position=through, count=len(sealed), root=root.hex(),
            previous=previous.hex(), chain=chain.hex(),
        )
        try:
            recorded = front.append(SEAL_STREAM, [event], expected_version=number)
        except ConcurrencyError:
            continue  # another process sealed first: seal what is left after its seal
        return _seal(recorded[0])


# -- verification ------------------------------------------------------------------------------
class _Checker:
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


def _load_checkpoint(store: EventStore) -> dict[str, Any] | None:
    with store.transaction() as tx:
        row = tx.execute(
            "SELECT seal_version, seal_chain, seal_to, head_position, head_chain, verified_at "
            "FROM mlevents_integrity_checkpoint WHERE id = 1"
        ).fetchone()
    if row is None:
        return None
    keys = ("seal_version", "seal_chain", "seal_to", "head_position", "head_chain",
            "verified_at")
    return dict(zip(keys, row, strict=True))


def _save_checkpoint(store: EventStore, values: Sequence[Any]) -> None:
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO mlevents_integrity_checkpoint (id, seal_version, seal_chain, seal_to, "
            "head_position, head_chain, verified_at) VALUES (1, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seal_version = excluded.seal_version, "
            "seal_chain = excluded.seal_chain, seal_to = excluded.seal_to, "
            "head_position = excluded.head_position, head_chain = excluded.head_chain, "
            "verified_at = excluded.verified_at",
            list(values),
        )


def load_witness(path: str | Path) -> list[Seal]:
    """Seals exported earlier by `mlevents seal --json` (a list, or {"seals": [...]})."""
    try:
        data = json.loads(Path(path).read_text())
        items = data["seals"] if isinstance(data, Mapping) else data
        return [Seal(**item) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"cannot read the witness file {path}: {exc}; give a file written by "
            "`mlevents seal --json`"
        ) from None


def verify(
    store: EventStore,
    *,
    since_last_verified: bool = False,
    against: Sequence[Seal] | str | Path | None = None,
    remember: bool = True,
) -> VerifyReport:
    """Recompute every content hash, chain and seal (or, with `since_last_verified`, those
    after the last seal a previous verification accepted: O(new events)); check the seals
    against `against` (a witness file or seals kept elsewhere). Never raises on tampering:
    read `report.ok` and `report.problems` (the first is the first bad event)."""
    started = time.perf_counter()
    check_triggers(store)
    checkpoint = _load_checkpoint(store)  # where earlier verifications got to
    recorded = seals(store)
    by_number = {s.number: s for s in recorded}
    start, previous = 0, (0, GENESIS.hex())  # (to_position, chain) of the seal before
    report = VerifyReport(from_position=0)
    base: Seal | None = None
    if since_last_verified and checkpoint is not None and checkpoint["seal_version"]:
        base = by_number.get(checkpoint["seal_version"])
        if base is None or base.chain != checkpoint["seal_chain"]:
            report.problems.append(Problem(
                "seal",
                f"seal {checkpoint['seal_version']}, verified on {checkpoint['verified_at']}, "
                + ("is gone" if base is None else "was rewritten")
                + ": run a full verification",
                base.position if base else None,
            ))
        else:
            start, previous = base.to_position, (base.to_position, base.chain)
    report.from_position = start
    through = store.head_position()
    report.to_position = through
    checker = _Checker(store, start, incremental=start > 0)
    pairs = checker.run(through)
    report.events = checker.events
    report.problems.extend(checker.problems)
    # Seals: each range starts where the previous ended and hashes to its root.
    positions = [position for position, _ in pairs]
    sealed_to = max((s.to_position for s in recorded if s.position in checker.seal_rows),
                    default=0)
    hashed = leaves(pairs[: bisect.bisect_right(positions, sealed_to)])
    by_position = {s.position: s for s in recorded}
    verified_before = base.number if base else 0
    for seal_position in checker.seal_rows:
        s = by_position[seal_position]
        if s.number <= verified_before:
            continue  # the seal a previous verification accepted (it sits after its range)
        report.seals += 1
        base = s
        lo = bisect.bisect_right(positions, s.from_position)
        hi = bisect.bisect_right(positions, s.to_position)
        root = merkle_root(hashed[lo:hi])
        expected_chain = seal_chain(
            bytes.fromhex(previous[1]), s.from_position, s.to_position, hi - lo, root
        ).hex()
        what = []
        if s.from_position != previous[0]:
            what.append(f"starts after {s.from_position}, not after {previous[0]}")
        if s.previous != previous[1]:
            what.append("does not link to the previous seal")
        if s.count != hi - lo or s.root != root.hex():
            what.append(
                f"its Merkle root differs (sealed {s.count} events, {hi - lo} there now): an "
                f"event in positions {s.from_position + 1}-{s.to_position} was changed, "
                "removed or inserted"
            )
        if s.chain != expected_chain and not what:
            what.append("its chain hash is wrong")
        if what:
            report.problems.append(Problem(
                "seal", f"seal {s.number}: " + "; ".join(what), s.position, SEAL_STREAM, s.number
            ))
        previous = (s.to_position, s.chain)
    for position, stream, version, payload_text in checker.alert_rows:
        payload = json.loads(payload_text)
        report.warnings.append(Problem(
            "triggers",
            f"{'; '.join(payload['problems'])}, noticed with the head at position "
            f"{payload['head_position']}: anything up to there could have been edited in "
            "place; problems above show what was",
            position, stream, version,
        ))
    # A truncated tail: what a previous verification saw must still be there.
    if checkpoint is not None and checkpoint["head_position"] > 0:
        rows = store.recorder.hashed_rows(
            checkpoint["head_position"] - 1, checkpoint["head_position"], 1
        )
        if not rows or bytes(rows[0][13] or b"").hex() != checkpoint["head_chain"]:
            report.problems.append(Problem(
                "truncated",
                f"the event at position {checkpoint['head_position']}, verified on "
                f"{checkpoint['verified_at']}, is "
                + ("gone: the log was truncated" if not rows else "no longer the same"),
                checkpoint["head_position"],
            ))
    if against is not None:
        witness = load_witness(against) if isinstance(against, str | Path) else against
        report.witness_seals = len(witness)
        for kept in witness:
            found = by_number.get(kept.number)
            if found is None:
                report.problems.append(Problem(
                    "witness",
                    f"seal {kept.number} (positions {kept.from_position + 1}-"
                    f"{kept.to_position}, root {kept.root[:16]}...) is in the witness but not "
                    "in the store: seals or events were removed",
                    kept.position,
                ))
            elif (found.from_position, found.to_position, found.count, found.root,
                  found.chain) != (kept.from_position, kept.to_position, kept.count, kept.root,
                                   kept.chain):
                report.problems.append(Problem(
                    "witness",
                    f"seal {kept.number} differs from the witness (root {found.root[:16]}... "
                    f"in the store, {kept.root[:16]}... kept): events in positions "
                    f"{kept.from_position + 1}-{kept.to_position} were rewritten and "
                    "re-sealed",
                    found.position, SEAL_STREAM, found.number,
                ))
    report.problems.sort(key=lambda p: (p.position is None, p.position or 0))
    if report.ok and remember and (checker.last is not None or base is not None):
        # The next `since_last_verified` run starts after the last seal verified here.
        head = checker.last
        if head is None:
            head = (
                (checkpoint["head_position"], bytes.fromhex(checkpoint["head_chain"]))
                if checkpoint else (0, GENESIS)
            )
        _save_checkpoint(store, (
            base.number if base else 0,
            base.chain if base else GENESIS.hex(),
            base.to_position if base else 0,
            head[0], head[1].hex(), datetime.now(UTC).isoformat(timespec="seconds"),
        ))
    report.seconds = time.perf_counter() - started
    return report
