"""`mlevents import FILE`: bulk import of existing history (docs/import.md).

A thin wrapper over `EventStore.import_events` and the readers of
event_sourcing.stores.import_readers, with a progress bar on a terminal.
"""

from __future__ import annotations

import argparse
from typing import Any

from event_sourcing.cli.common import (
    add_json_argument,
    add_url_argument,
    human_output,
    open_store,
    print_json_line,
    progress_bar,
    set_handler,
    stdout_console,
)
from event_sourcing.stores.import_readers import (
    FORMATS,
    ColumnMapping,
    count_records,
    read_records,
)
from event_sourcing.stores.imports import DEFAULT_BATCH_SIZE, ImportReport


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `import` to the `mlevents` parser."""
    parser = subparsers.add_parser(
        "import",
        help="bulk-import events from JSON lines, CSV or Parquet",
        description=cmd_import.__doc__,
        epilog="Example: mlevents import train_log.csv --map stream=run_id "
        "--set type=training_progress --map payload.step=step --map payload.loss=loss. "
        "Formats, mappings, idempotency and resuming: docs/import.md.",
    )
    add_url_argument(parser)
    parser.add_argument("file", metavar="FILE", help="a .jsonl, .csv or .parquet file")
    parser.add_argument(
        "--format", choices=FORMATS, help="the file's format (default: from its suffix)"
    )
    parser.add_argument(
        "--map", action="append", default=[], metavar="FIELD=COLUMN",
        help="CSV/Parquet: fill FIELD (stream, type, id, stream_type, correlation_id, "
        "causation_id, occurred_at, payload.KEY, metadata.KEY) from COLUMN (repeatable)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="CSV/Parquet: give FIELD the same VALUE on every row, e.g. type=training_progress",
    )
    parser.add_argument(
        "--mapping", metavar="FILE",
        help="CSV/Parquet: a TOML or JSON file with a [map] and/or a [set] table",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
        help=f"events per transaction (default: {DEFAULT_BATCH_SIZE})",
    )
    add_json_argument(parser)
    set_handler(parser, cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    """Import the events of FILE into the store, checked like appends, one transaction per
    batch. Running it again writes only what is missing (event ids make it idempotent), so an
    interrupted import is resumed by running the same command."""
    mapping = None
    if args.map or args.set or args.mapping:
        mapping = ColumnMapping.parse(args.map, args.set, args.mapping)
    records = read_records(args.file, args.format, mapping)
    total = count_records(args.file, args.format)
    with open_store(args, create=True) as store, progress_bar(
        f"importing {args.file}", total, "records"
    ) as advance_to:
        report = store.import_events(
            records, batch_size=args.batch_size,
            progress=lambda report: advance_to(report.read),
        )
    summary = _summary(report)
    if human_output(args):
        stdout_console().print(
            f"imported {report.written:,} events into {len(report.streams):,} streams "
            f"({report.skipped:,} already recorded, {report.read:,} records read)"
        )
    else:
        print_json_line(summary)
    return 0


def _summary(report: ImportReport) -> dict[str, Any]:
    return {
        "read": report.read, "written": report.written, "skipped": report.skipped,
        "batches": report.batches, "streams": len(report.streams),
    }
