"""The store subcommands of `mlevents`: init, append, read, tail, status and schema.

Each is a thin wrapper over the library API; `follow` (behind `tail`) is usable on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import event_sourcing as es
from event_sourcing.catalog import default_registry, export_json_schemas, render_markdown_catalog
from event_sourcing.cli.common import (
    CommandLineError,
    add_json_argument,
    add_url_argument,
    did_you_mean,
    empty_store_note,
    human_output,
    non_negative_int,
    note,
    open_store,
    parse_iso_datetime,
    parse_json_object,
    positive_float,
    print_json_line,
    set_handler,
    stdout_console,
)
from event_sourcing.projections.counts import log_counts
from event_sourcing.projections.pages import read_page

TAIL_PAGE_SIZE = 1000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add init, append, read, tail, status and schema to the `mlevents` parser."""
    init = subparsers.add_parser(
        "init", help="create the event store (idempotent)", description=cmd_init.__doc__
    )
    add_url_argument(init)
    set_handler(init, cmd_init)

    append = subparsers.add_parser(
        "append",
        help="append one event to a stream",
        description=cmd_append.__doc__,
        epilog="Example: mlevents append sqlite:///ml.db run-42 --type training_progress "
        '--payload \'{"step": 100, "loss": 0.42, "metrics": {"accuracy": 0.91}}\'. '
        "Payload fields per type: docs/event-catalog.md or `mlevents schema`.",
    )
    add_url_argument(append)
    append.add_argument("stream", metavar="STREAM", help="stream id, e.g. a training run id")
    append.add_argument("--type", "-t", dest="event_type", required=True, help="event type")
    append.add_argument(
        "--payload",
        "-p",
        default="{}",
        metavar="JSON",
        help="payload: a JSON object, @file.json, or - for stdin (default: {})",
    )
    append.add_argument("--metadata", metavar="JSON", help="event metadata: a JSON object")
    append.add_argument(
        "--expected-version",
        type=non_negative_int,
        metavar="N",
        help="fail unless the stream is at version N (0: the stream must not exist yet)",
    )
    append.add_argument("--stream-type", metavar="NAME", help="stream type (first append only)")
    append.add_argument("--correlation-id", metavar="ID")
    append.add_argument("--causation-id", metavar="ID")
    append.add_argument(
        "--id", dest="event_id", metavar="UUID", help="event id (reuse it to retry idempotently)"
    )
    append.add_argument(
        "--occurred-at", metavar="ISO",
        help="when the fact happened, if not now (a backfill; ISO 8601 with timezone)",
    )
    append.add_argument(
        "--no-validate",
        action="store_true",
        help="accept event types no model is registered for",
    )
    set_handler(append, cmd_append)

    read = subparsers.add_parser(
        "read", help="print events as JSON lines", description=cmd_read.__doc__
    )
    add_url_argument(read)
    read.add_argument("--stream", "-s", metavar="STREAM", help="only this stream")
    read.add_argument(
        "--after", type=non_negative_int, default=0, metavar="P", help="after global position P"
    )
    _add_type_filter(read)
    read.add_argument(
        "--until", metavar="ISO",
        help="recorded (created_at, not occurred_at) at or before this time (ISO 8601 with "
        "timezone)",
    )
    read.add_argument("--limit", type=non_negative_int, metavar="N", help="at most N events")
    set_handler(read, cmd_read)

    tail = subparsers.add_parser(
        "tail", help="follow new events as JSON lines", description=cmd_tail.__doc__
    )
    add_url_argument(tail)
    tail.add_argument(
        "--after",
        type=non_negative_int,
        metavar="P",
        help="start after global position P (default: the current head; 0 replays everything)",
    )
    _add_type_filter(tail)
    tail.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="poll interval when idle (default: 1)",
    )
    tail.add_argument(
        "--max-events", type=non_negative_int, metavar="N", help="exit after N events"
    )
    tail.add_argument(
        "--timeout", type=positive_float, metavar="SECONDS", help="exit after SECONDS"
    )
    set_handler(tail, cmd_tail)

    status = subparsers.add_parser(
        "status", help="head position and event counts", description=cmd_status.__doc__
    )
    add_url_argument(status)
    add_json_argument(status)
    set_handler(status, cmd_status)

    schema = subparsers.add_parser(
        "schema",
        help="export the JSON Schema of every event type",
        description=cmd_schema.__doc__,
    )
    schema.add_argument(
        "--json-dir", type=Path, metavar="DIR", help="write <type>.v<version>.json files here"
    )
    schema.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write a Markdown event catalog here"
    )
    set_handler(schema, cmd_schema)


def _add_type_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type",
        "-t",
        dest="event_types",
        action="append",
        metavar="TYPE",
        help="only this event type (repeat for several)",
    )


# -- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create the event store at URL if it does not exist yet; harmless if it does."""
    with open_store(args, create=True) as store:
        print(
            f"event store ready: {store.recorder.description} "
            f"({store.dialect}, head position {store.head_position()})"
        )
    return 0


def cmd_append(args: argparse.Namespace) -> int:
    """Append one event to STREAM and print it, as recorded, as one JSON line."""
    payload = parse_json_object(args.payload, "--payload")
    metadata = None if args.metadata is None else parse_json_object(args.metadata, "--metadata")
    occurred_at = (
        None if args.occurred_at is None else parse_iso_datetime(args.occurred_at, "--occurred-at")
    )
    event = es.NewEvent(
        type=args.event_type, payload=payload, id=args.event_id, occurred_at=occurred_at
    )
    with open_store(args, create=True, validate=not args.no_validate) as store:
        try:
            recorded = store.append(
                args.stream,
                [event],
                expected_version=args.expected_version,
                stream_type=args.stream_type,
                correlation_id=args.correlation_id,
                causation_id=args.causation_id,
                metadata=metadata,
            )
        except es.UnknownEventTypeError as exc:
            raise es.UnknownEventTypeError(
                f"{exc} (on the command line: add --no-validate); "
                f"registered types: {', '.join(store.registry.types())}"
            ) from None
    for item in recorded:
        print_json_line(item.to_dict())
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    """Print events in global position order (stream version order with --stream), one JSON
    object per line, as RecordedEvent.to_dict() gives them."""
    until = None if args.until is None else parse_iso_datetime(args.until, "--until")
    with open_store(args) as store:
        check_event_types(store, args.event_types)
        events: Iterator[es.RecordedEvent]
        if args.stream is None:
            events = store.read_all(
                after=args.after, event_types=args.event_types, until=until, limit=args.limit
            )
        else:
            events = _filter_stream(
                store.read_stream(args.stream), args.after, args.event_types, until, args.limit
            )
        printed = 0
        for event in events:
            print_json_line(event.to_dict())
            printed += 1
        if not printed and not empty_store_note(store):
            _no_events_note(store, args)
    return 0


def _no_events_note(store: es.EventStore, args: argparse.Namespace) -> None:
    """Why `read` printed nothing, on stderr: which filter left nothing."""
    head = store.head_position()
    if args.stream is not None and store.stream_version(args.stream) == 0:
        note(f"no stream {args.stream!r} in the store (head position {head})")
        return
    filters = []
    if args.event_types:
        filters.append("--type " + " --type ".join(args.event_types))
    if args.after:
        filters.append(f"--after {args.after}")
    if args.until:
        filters.append(f"--until {args.until}")
    if args.limit == 0:
        filters.append("--limit 0")
    where = f" with {' '.join(filters)}" if filters else ""
    note(f"no events match{where} (head position {head})")


def cmd_tail(args: argparse.Namespace) -> int:
    """Print new events as JSON lines as they are appended, until Ctrl-C (or --max-events /
    --timeout). Starts at the current head unless --after is given."""
    if args.max_events == 0:
        return 0
    with open_store(args) as store:
        check_event_types(store, args.event_types)
        after = store.head_position() if args.after is None else args.after
        printed = 0
        try:
            for event in follow(
                store,
                after,
                event_types=args.event_types,
                interval=args.interval,
                timeout=args.timeout,
                sleep=_idle_sleep,
            ):
                print_json_line(event.to_dict())
                sys.stdout.flush()
                printed += 1
                if args.max_events is not None and printed >= args.max_events:
                    break
        except KeyboardInterrupt:
            # Ctrl-C is how a user ends `tail`: a normal exit, not an error.
            pass
    return 0


def status_report(store: es.EventStore) -> dict[str, Any]:
    """The store's backend, head position, number of streams and event counts by type."""
    counts = log_counts(store)  # flat in the log's size: counts only what is new
    return {
        "store": store.recorder.description,
        "backend": store.dialect,
        "head_position": counts.position,
        "events": sum(counts.by_type.values()),
        "streams": counts.streams,
        "counts_by_type": counts.by_type,
    }


def cmd_status(args: argparse.Namespace) -> int:
    """Show the store's backend, head position, number of streams and event counts by type."""
    with open_store(args) as store:
        report = status_report(store)
        counts = report["counts_by_type"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if human_output(args):
        _print_status_table(report)
        return 0
    for label, key in [
        ("store", "store"),
        ("backend", "backend"),
        ("head position", "head_position"),
        ("events", "events"),
        ("streams", "streams"),
    ]:
        print(f"{label + ':':<15}{report[key]}")
    if not counts:
        print("\nno events yet")
        return 0
    width = max(len("event type"), *(len(name) for name in counts))
    count_width = max(len("count"), *(len(str(n)) for n in counts.values()))
    print(f"\n{'event type':<{width}}  {'count':>{count_width}}")
    for name, count in counts.items():
        print(f"{name:<{width}}  {count:>{count_width}}")
    return 0


def _print_status_table(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = stdout_console()
    console.print(
        f"[bold]{escape(report['store'])}[/] ({report['backend']}): head position "
        f"[bold]{report['head_position']}[/], {report['events']} events in "
        f"{report['streams']} streams"
    )
    if not report["counts_by_type"]:
        console.print("no events yet")
        return
    table = Table("event type", "count")
    table.columns[1].justify = "right"
    for name, count in report["counts_by_type"].items():
        table.add_row(escape(name), str(count))
    console.print(table)


def cmd_schema(args: argparse.Namespace) -> int:
    """Export the JSON Schema of every registered event type: with no options, print them as one
    JSON object (type -> schema); --json-dir writes one file per type, --markdown a catalog."""
    if args.json_dir is None and args.markdown is None:
        print(json.dumps(default_registry.json_schemas(), indent=2, sort_keys=True))
        return 0
    if args.json_dir is not None:
        paths = export_json_schemas(default_registry, args.json_dir)
        print(f"wrote {len(paths)} JSON Schema files to {args.json_dir}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown_catalog(default_registry), encoding="utf-8")
        print(f"wrote the event catalog to {args.markdown}")
    return 0


# -- helpers ----------------------------------------------------------------------------------


def check_event_types(store: es.EventStore, event_types: Collection[str] | None) -> None:
    """Refuse a --type that is neither registered nor in the log (a typo would match nothing)."""
    if not event_types:
        return
    known = set(store.registry.types())
    unknown = [name for name in event_types if name not in known]
    if unknown:
        known |= set(store.counts_by_type())
    for name in unknown:
        if name not in known:
            raise CommandLineError(
                f"unknown event type {name!r}{did_you_mean(name, known)} "
                "(`mlevents schema` lists the registered types, `mlevents status` those in the log)"
            )


def follow(
    store: es.EventStore,
    after: int,
    *,
    event_types: Collection[str] | None = None,
    interval: float = 1.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[es.RecordedEvent]:
    """Every event after global position `after`, then each new one as it becomes visible.

    Polls every `interval` seconds while idle; ends after `timeout` seconds if given. Pages
    come from `read_page`: the cursor is the last position yielded, or the head once a
    filtered page comes back short, so an idle poll skips what it has no interest in.
    """
    deadline = None if timeout is None else monotonic() + timeout
    cursor = after
    while True:
        page = read_page(store, cursor, event_types, TAIL_PAGE_SIZE)
        for event in page.events:
            cursor = event.position
            yield event
        cursor = max(cursor, page.cursor)
        if page.full:
            continue  # more are waiting: read on without pausing
        if deadline is None:
            sleep(interval)
            continue
        remaining = deadline - monotonic()
        if remaining <= 0:
            return
        sleep(min(interval, remaining))


def _idle_sleep(seconds: float) -> None:
    """How `tail` waits between polls (looked up at call time so tests can interrupt it)."""
    time.sleep(seconds)


def _filter_stream(
    events: list[es.RecordedEvent],
    after: int,
    event_types: Collection[str] | None,
    until: datetime | None,
    limit: int | None,
) -> Iterator[es.RecordedEvent]:
    """`read --stream` with the same filters `read_all` applies to the whole log."""
    kept = 0
    for event in events:
        if limit is not None and kept >= limit:
            return
        if event.position <= after:
            continue
        if event_types is not None and event.event_type not in event_types:
            continue
        if until is not None and event.created_at > until:
            continue
        kept += 1
        yield event
