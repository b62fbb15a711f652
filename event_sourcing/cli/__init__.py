"""The `mlevents` command line: the argparse root, error handling and the subcommand registry.

Each module in COMMAND_MODULES contributes subcommands through its `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from event_sourcing.cli.common import Handler
from event_sourcing.errors import EventStoreError

# Add a module here to add its subcommands; each must define `register(subparsers)` and give
# every parser it adds a `handler` default (see event_sourcing.cli.common.set_handler).
COMMAND_MODULES: tuple[str, ...] = (
    "event_sourcing.cli.store_commands",
    "event_sourcing.cli.provenance_commands",
    "event_sourcing.cli.predict_commands",
    "event_sourcing.cli.grant_command",
    "event_sourcing.cli.relay_commands",
    "event_sourcing.cli.integrity_commands",
    "event_sourcing.cli.privacy_commands",
    "event_sourcing.cli.artifact_commands",
    "event_sourcing.cli.import_command",
)

__all__ = ["COMMAND_MODULES", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The root parser with the subcommands of every module in COMMAND_MODULES."""
    from event_sourcing import __version__

    parser = argparse.ArgumentParser(
        prog="mlevents",
        description="Event sourcing for AI/ML systems: an append-only log of typed ML events. "
        "Every command takes the store as --url URL, else $MLEVENTS_URL, else "
        "sqlite:///.mlevents/events.db (the store `make run` uses). On a terminal results are "
        "tables and trees; piped, or with --json, they are JSON.",
    )
    parser.add_argument("--version", action="version", version=f"mlevents {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mlevents` with `argv` (default: sys.argv[1:]); return the exit status.

    0: success; 2: bad usage or any EventStoreError (printed as `mlevents: error: ...`).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except EventStoreError as exc:
        print(f"mlevents: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`mlevents read | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
