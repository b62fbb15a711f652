"""The tamper-evidence subcommands of `mlevents`: seal, verify, and archive (of sealed
history, docs/archive.md).

Thin wrappers over event_sourcing.integrity.audit; docs/integrity.md says what they prove.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from event_sourcing.cli.common import add_url_argument, open_store, progress_bar, set_handler
from event_sourcing.errors import EventValidationError
from event_sourcing.integrity.audit import seals


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add seal and verify to the `mlevents` parser."""
    seal = subparsers.add_parser(
        "seal",
        help="seal the events since the last seal (a Merkle root) and export every seal",
        description=cmd_seal.__doc__,
        epilog="Example: mlevents seal postgresql://app@db/ml --json > witness.json; keep "
        "witness.json somewhere the database's owner cannot write.",
    )
    add_url_argument(seal)
    seal.add_argument(
        "--json", action="store_true",
        help="print every seal as JSON (a witness file for `mlevents verify --against`)",
    )
    set_handler(seal, cmd_seal)

    verify = subparsers.add_parser(
        "verify",
        help="recompute hash chains and seals; name the first tampered event",
        description=cmd_verify.__doc__,
        epilog="Exit status 0: intact; 1: tampering found (each problem printed); 2: error.",
    )
    add_url_argument(verify)
    verify.add_argument(
        "--since-last-verified", action="store_true",
        help="check only what came after the last seal a previous verify accepted",
    )
    verify.add_argument(
        "--against", metavar="FILE",
        help="also compare the store's seals with a witness file from `mlevents seal --json`",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    set_handler(verify, cmd_verify)

    archive = subparsers.add_parser(
        "archive",
        help="move sealed history older than a date to Parquet files (PostgreSQL)",
        description=cmd_archive.__doc__,
        epilog="Example: mlevents archive postgresql://owner@db/ml --before 2026-01-01. "
        "Readers find the files in $MLEVENTS_ARTIFACTS (docs/archive.md).",
    )
    add_url_argument(archive)
    archive.add_argument(
        "--before", required=True, metavar="DATE",
        help="archive only partitions whose every event was recorded before DATE (ISO 8601; "
        "UTC unless it says otherwise)",
    )
    archive.add_argument("--json", action="store_true", help="print what was archived as JSON")
    set_handler(archive, cmd_archive)


def _date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise EventValidationError(
            f"--before {text!r} is not an ISO 8601 date or time, e.g. 2026-01-01"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def cmd_archive(args: argparse.Namespace) -> int:
    """Write every sealed partition of events recorded before DATE that holds no stream's
    latest event to a Parquet file (zstd) of the artifact store, check it against the rows
    and the seals, record `archive_created`, then drop the partition; every read of the
    store reads through the files from then on."""
    from event_sourcing.stores.postgres_archive import archive, candidates

    before = _date(args.before)
    with open_store(args) as store:
        total = len(candidates(store, before)) if store.dialect == "postgresql" else 0
        with progress_bar("archiving", total, "partitions") as advance_to:
            done = archive(store, before, progress=lambda n, _: advance_to(n))
    if args.json:
        print(json.dumps({"archived": [r.to_dict() for r in done]}, indent=2))
        return 0
    for r in done:
        print(f"{r.partition}: positions {r.from_position}-{r.to_position}, {r.count} events, "
              f"{r.file_bytes} bytes ({r.payload_bytes} payload bytes) -> {r.uri}")
    print(f"archived {len(done)} partition(s)")
    return 0


def cmd_seal(args: argparse.Namespace) -> int:
    """Verify every settled event since the last seal, append an `integrity_sealed` event
    with their Merkle root (chained to the previous seal's), and print it; with --json print
    every seal so far, the witness to keep outside the database."""
    with open_store(args) as store:
        new = store.seal()
        if args.json:
            print(json.dumps({"seals": [s.to_dict() for s in seals(store)]}, indent=2))
            return 0
    print(
        f"seal {new.number} at position {new.position}: positions {new.from_position + 1}-"
        f"{new.to_position} ({new.count} events), root {new.root}, chain {new.chain}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute every event's content and chain hash and every seal's Merkle root; report
    the first bad event (position, stream, version, what differs) and every other problem."""
    with open_store(args) as store:
        report = store.verify(since_last_verified=args.since_last_verified, against=args.against)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    summary: dict[str, Any] = {
        "positions": f"{report.from_position + 1}-{report.to_position}",
        "events": report.events,
        "seals": report.seals,
    }
    if args.against:
        summary["witness seals"] = report.witness_seals
    print(", ".join(f"{key} {value}" for key, value in summary.items())
          + f" checked in {report.seconds:.2f}s")
    for warning in report.warnings:
        print(f"WARNING {warning}")
    if report.ok:
        print("OK: every chain and seal verifies")
        return 0
    print(f"TAMPERED: {len(report.problems)} problem(s); the first bad event:")
    for problem in report.problems:
        print(f"  {problem}")
    return 1
