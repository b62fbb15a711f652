"""`mlevents artifacts gc`: delete the artifacts no event needs any more (a dry run unless
--apply), e.g. after erasures redacted dataset snapshots (event_sourcing.artifact_gc).
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from event_sourcing.cli.common import (
    add_json_argument,
    add_url_argument,
    artifact_store,
    human_output,
    open_store,
    set_handler,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `artifacts gc` to the `mlevents` parser."""
    artifacts = subparsers.add_parser(
        "artifacts", help="manage the artifact store (datasets, models)",
        description="Manage the artifact store that events refer to.",
    )
    commands = artifacts.add_subparsers(dest="artifacts_command", metavar="COMMAND",
                                        required=True)
    gc = commands.add_parser(
        "gc",
        help="delete artifacts no event needs any more (dry run unless --apply)",
        description=cmd_gc.__doc__,
        epilog="Example: mlevents artifacts gc --apply",
    )
    gc.add_argument("--apply", action="store_true", help="delete (default: only list)")
    gc.add_argument(
        "--min-age-hours", type=_hours, default=1.0,
        help="unreferenced files younger than this are kept: a run may have stored them "
        "and not yet recorded its event (default: 1)",
    )
    gc.add_argument(
        "--artifacts", default=None,
        help="artifact store folder (default: $MLEVENTS_ARTIFACTS, then artifacts/ beside a "
        "SQLite store, then .mlevents/artifacts)",
    )
    add_url_argument(gc)
    add_json_argument(gc)
    set_handler(gc, cmd_gc)


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def cmd_gc(args: argparse.Namespace) -> int:
    """List, or with --apply delete, the artifacts no event needs: those a dataset_redacted
    deleted (if any bytes are left), unreferenced files and interrupted writes older than
    --min-age-hours. Prints each file, why, and the bytes in total."""
    from event_sourcing.artifact_gc import collect_garbage

    artifacts = artifact_store(args)
    with open_store(args) as store:
        found = collect_garbage(
            store, artifacts, apply=args.apply,
            min_age=timedelta(hours=args.min_age_hours),
        )
    if not human_output(args):
        print(json.dumps(found.as_dict(), indent=2))
        return 0
    verb = "deleted" if args.apply else "would delete"
    for name, size, why in found.files:
        print(f"{verb} {name} ({size} bytes): {why}")
    print(
        f"{verb} {len(found.files)} file(s), {found.bytes} bytes, in {artifacts.root}; "
        f"{found.live} live artifact(s) kept"
        + ("" if args.apply or not found.files else " (dry run: --apply deletes)")
    )
    return 0
