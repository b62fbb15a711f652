"""Helpers shared by every `mlevents` subcommand module: store URL arguments, opening the store,
JSON input/output and argument parsing that fails with a message saying what to type instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import event_sourcing as es
from event_sourcing.errors import EventStoreError
from event_sourcing.stores.recorder import redact_url

Handler = Callable[[argparse.Namespace], int]
"""A subcommand: takes the parsed arguments, returns the exit status."""

__all__ = [
    "CommandLineError",
    "Handler",
    "add_url_argument",
    "non_negative_int",
    "open_store",
    "parse_iso_datetime",
    "parse_json_object",
    "positive_float",
    "print_json_line",
    "resolve_url",
    "set_handler",
]


class CommandLineError(EventStoreError):
    """A command-line argument is malformed (bad JSON, naive time, conflicting options)."""


def set_handler(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """Make `handler` run when this subcommand is chosen."""
    parser.set_defaults(handler=handler)


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    """An optional positional URL plus `--url`; both default to $MLEVENTS_URL, then SQLite.

    Put the positional URL before options (`mlevents read URL --type T`), or use `--url`.
    """
    parser.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="store URL (default: $MLEVENTS_URL, then sqlite:///.mlevents/events.db)",
    )
    parser.add_argument("--url", dest="url_option", metavar="URL", help="store URL, as an option")


def resolve_url(args: argparse.Namespace) -> str:
    """The store URL the user asked for: positional, --url, $MLEVENTS_URL, then the default."""
    positional = getattr(args, "url", None)
    option = getattr(args, "url_option", None)
    if positional and option and positional != option:
        raise CommandLineError(
            f"two store URLs given ({redact_url(positional)!r} and --url "
            f"{redact_url(option)!r}); give one"
        )
    return str(positional or option or es.default_url())


def open_store(args: argparse.Namespace, *, create: bool = False, **options: Any) -> es.EventStore:
    """`es.connect` on the URL the user asked for. Only commands that write pass
    `create=True`; for every other a missing store is a StoreNotFoundError (exit 2), and no
    file, folder or schema is made."""
    return es.connect(resolve_url(args), create=create, **options)


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from an argument: inline JSON, `@path/to/file.json`, or `-` for stdin."""
    source = what
    if text == "-":
        text, source = sys.stdin.read(), f"{what} (stdin)"
    elif text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandLineError(
                f"cannot read {what} file {str(path)!r}: {exc.strerror}"
            ) from None
        source = f"{what} file {str(path)!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandLineError(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            'give an object such as \'{"dataset_id": "wine"}\' (quote it for the shell)'
        ) from None
    if not isinstance(value, dict):
        raise CommandLineError(
            f"{source} must be a JSON object ({{...}}), got {type(value).__name__}"
        )
    return value


def parse_iso_datetime(text: str, what: str) -> datetime:
    """A timezone-aware datetime from ISO 8601 text; a time without a zone is an error."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandLineError(
            f"{what} {text!r} is not an ISO 8601 time; use e.g. 2024-05-01T14:02:00+00:00 "
            "or 2024-05-01T14:02:00Z"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise CommandLineError(
            f"{what} {text!r} has no timezone; add +00:00 or Z for UTC (e.g. {text}+00:00)"
        )
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def print_json_line(value: Any, out: TextIO | None = None) -> None:
    """One compact JSON document on one line (the JSON-lines format `read` and `tail` emit)."""
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
