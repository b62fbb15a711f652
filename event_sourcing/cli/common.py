"""Helpers shared by every `mlevents` subcommand module: the store URL convention, opening the
store, output (rich on a terminal, JSON otherwise), hints, and argument parsing with fixes.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console

import event_sourcing as es
from event_sourcing.errors import EventStoreError
from event_sourcing.stores.recorder import redact_url

if TYPE_CHECKING:
    from event_sourcing.artifacts import ArtifactStore

Handler = Callable[[argparse.Namespace], int]
"""A subcommand: takes the parsed arguments, returns the exit status."""

__all__ = [
    "URL_HELP",
    "CommandLineError",
    "Handler",
    "add_json_argument",
    "add_url_argument",
    "did_you_mean",
    "empty_store_note",
    "human_output",
    "non_negative_int",
    "note",
    "open_store",
    "parse_iso_datetime",
    "parse_json_object",
    "positive_float",
    "print_json_line",
    "progress_bar",
    "resolve_url",
    "set_handler",
    "stdout_console",
]

URL_HELP = "store URL (default: $MLEVENTS_URL, then sqlite:///.mlevents/events.db, `make run`'s)"


class CommandLineError(EventStoreError):
    """A command-line argument is malformed (bad JSON, naive time, conflicting options)."""


def set_handler(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """Make `handler` run when this subcommand is chosen."""
    parser.set_defaults(handler=handler)


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    """`--url` (the documented convention), else $MLEVENTS_URL, else `es.default_url()`.

    A positional URL before the options is still accepted (older scripts), but not advertised.
    """
    parser.add_argument("url", nargs="?", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--url", dest="url_option", metavar="URL", help=URL_HELP)


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


def artifact_store(args: argparse.Namespace) -> ArtifactStore:
    """The artifact store a command uses: --artifacts DIR; else $MLEVENTS_ARTIFACTS; else the
    `artifacts/` folder beside a SQLite store (where `make run` and the pipeline keep them);
    else ArtifactStore's default. (Imported here, with pandas and numpy, only by the
    commands that need it: `mlevents` starts without them.)"""
    from event_sourcing.artifacts import ENV_VAR, ArtifactStore

    if getattr(args, "artifacts", None):
        return ArtifactStore(args.artifacts)
    url = resolve_url(args)
    if not os.environ.get(ENV_VAR) and url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].partition("?")[0]
        if path != ":memory:":
            return ArtifactStore(Path(path).parent / "artifacts")
    return ArtifactStore()


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
            'give an object such as \'{"dataset_id": "breast_cancer"}\' (quote it for the shell)'
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


# -- output -----------------------------------------------------------------------------------


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """`--json`: machine output, which is also the default when stdout is not a terminal."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable JSON (the default when stdout is not a terminal)",
    )


def human_output(args: argparse.Namespace) -> bool:
    """Tables and trees for a person: stdout is a terminal and --json was not given.

    Piped or redirected output stays the stable machine format, so scripts never parse tables.
    """
    return not getattr(args, "json", False) and sys.stdout.isatty()


def stdout_console() -> Console:
    """A rich console on the current sys.stdout (looked up per call: tests swap it)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def note(message: str) -> None:
    """A hint for the person at the terminal, on stderr (stdout stays parseable)."""
    print(f"mlevents: {message}", file=sys.stderr)


def did_you_mean(wanted: str, known: Iterable[str]) -> str:
    """'; did you mean 'x'?' when a known name is close to `wanted` (or the only one it begins),
    else ''."""
    names = list(known)
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if not close:
        close = [name for name in names if wanted and name.startswith(wanted)]
    return f"; did you mean {close[0]!r}?" if len(close) == 1 else ""



def empty_store_note(store: es.EventStore) -> bool:
    """Say so (on stderr) when `store` has no events at all, naming it; True if empty."""
    if store.head_position():
        return False
    note(
        f"the store {store.recorder.description} has no events yet; is it the one you meant? "
        "Give another with --url or $MLEVENTS_URL (`make run` writes to "
        "sqlite:///.mlevents/events.db in the repository)"
    )
    return True


@contextmanager
def progress_bar(what: str, total: int, unit: str = "positions") -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for long work, when stderr is a terminal (else silent); yields
    `advance_to(done)`. The bar disappears when the work ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        console=console, transient=True, disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda done: progress.update(task, completed=min(done, total))
