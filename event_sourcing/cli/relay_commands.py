"""The `mlevents relay` subcommand: publish the log to NATS JetStream until stopped.

SIGTERM and SIGINT finish the page in flight, commit its checkpoint and exit 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from event_sourcing.cli.common import (
    CommandLineError,
    non_negative_int,
    open_store,
    positive_float,
    print_json_line,
    set_handler,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay` to the `mlevents` parser."""
    from event_sourcing.relay import DEFAULT_INTERVAL, DEFAULT_PAGE_SIZE
    from event_sourcing.relay.sink import DEFAULT_PREFIX

    relay = subparsers.add_parser(
        "relay",
        help="publish every event, in global order, to NATS JetStream",
        description=cmd_relay.__doc__,
        epilog="Example: mlevents relay postgresql://app@db/prod nats://127.0.0.1:4222 "
        "--prefix mlevents. Runs until SIGTERM/Ctrl-C (or --max-seconds / "
        "--until-caught-up); prints its stats as one JSON line. See docs/relay.md.",
    )
    relay.add_argument(
        "url", nargs="?", metavar="STORE_URL",
        help="store URL (default: --url, $MLEVENTS_URL, then sqlite:///.mlevents/events.db)",
    )
    relay.add_argument("nats_url", metavar="NATS_URL", help="e.g. nats://127.0.0.1:4222")
    relay.add_argument("--url", dest="url_option", metavar="URL", help="store URL, as an option")
    relay.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"subject prefix: events go to PREFIX.<event_type> (default: {DEFAULT_PREFIX})",
    )
    relay.add_argument(
        "--stream", metavar="NAME", help="JetStream stream (default: the prefix in capitals; "
        "created with subjects PREFIX.> if missing)"
    )
    relay.add_argument(
        "--name", metavar="NAME", help="checkpoint name in the store (default: the stream name);"
        " one per destination"
    )
    relay.add_argument(
        "--duplicate-window",
        type=positive_float,
        metavar="SECONDS",
        help="the stream's duplicate window when the relay creates it: how long the broker "
        "remembers event ids to drop repeats (default: 120, as JetStream's)",
    )
    relay.add_argument(
        "--interval",
        type=positive_float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"poll interval when caught up (default: {DEFAULT_INTERVAL:g})",
    )
    relay.add_argument(
        "--page-size", type=non_negative_int, default=DEFAULT_PAGE_SIZE, metavar="N",
        help=f"events per publish-then-checkpoint step (default: {DEFAULT_PAGE_SIZE})",
    )
    relay.add_argument("--max-seconds", type=positive_float, metavar="SECONDS",
                       help="stop after this long")
    relay.add_argument("--until-caught-up", action="store_true",
                       help="stop once every event visible so far is published")
    set_handler(relay, cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    """Publish every event of the store, in global order, to NATS JetStream: subject
    PREFIX.<event_type>, the event id as Nats-Msg-Id (the broker drops repeats), the last
    acknowledged position kept in the store, so a restarted relay resumes where it stopped."""
    from event_sourcing.relay import Relay
    from event_sourcing.relay.nats import JetStreamSink

    nats_url = args.nats_url
    if not nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise CommandLineError(
            f"{nats_url!r} is not a NATS URL; give one such as nats://127.0.0.1:4222 "
            "(after the store URL, if any)"
        )
    if args.page_size < 1:
        raise CommandLineError("--page-size must be at least 1")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open_store(args) as store:
            sink = JetStreamSink(
                nats_url,
                prefix=args.prefix,
                stream=args.stream,
                **({} if args.duplicate_window is None else
                   {"duplicate_window": args.duplicate_window}),
            )
            try:
                relay = Relay(
                    store, sink, name=args.name or sink.stream, page_size=args.page_size,
                    interval=args.interval,
                )
                stats = relay.run(
                    stop=stop, max_seconds=args.max_seconds, until_caught_up=args.until_caught_up
                )
            finally:
                sink.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_json_line(stats.to_dict())
    sys.stdout.flush()
    return 0
