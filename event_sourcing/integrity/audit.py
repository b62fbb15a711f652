"""Seal and verify a store: check every chain and seal (event_sourcing.integrity.checker
recomputes the hashes), name the first bad event, check roots kept elsewhere (a witness
file), remember how far verification got (the checkpoint), and restore append-only
triggers found missing.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import default_registry
from event_sourcing.catalog.ml_events import IntegritySealed, IntegrityTriggersRestored
from event_sourcing.errors import ConcurrencyError, IntegrityError
from event_sourcing.integrity.checker import SEAL_STREAM, HashChecker, Problem, leaves
from event_sourcing.integrity.hashing import GENESIS, merkle_root, seal_chain

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

__all__ = [
    "IntegrityError", "IntegrityWarning", "Problem", "Seal", "VerifyReport", "check_triggers",
    "load_witness", "seal", "seals", "verify",
]
ALERT_STREAM = "mlevents.integrity.alerts"
logger = logging.getLogger("event_sourcing.integrity")


class IntegrityWarning(UserWarning):
    """The store's append-only protection was found off (and restored if possible)."""


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
    with_builtin_catalog(store).append(
        ALERT_STREAM,
        [
            IntegrityTriggersRestored(
                problems=problems, restored=error is None, error=error, head_position=head
            )
        ],
    )
    return problems


def with_builtin_catalog(store: EventStore) -> EventStore:
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
    front = with_builtin_catalog(store)
    while True:
        number = store.recorder.stream_version(SEAL_STREAM)
        last = (
            _seal(store.recorder.read_stream(SEAL_STREAM, number, number)[0]) if number else None
        )
        start = last.to_position if last else 0
        previous = bytes.fromhex(last.chain) if last else GENESIS
        through = store.head_position()
        checker = HashChecker(store, start, incremental=start > 0)
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
    checker = HashChecker(store, start, incremental=start > 0)
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
