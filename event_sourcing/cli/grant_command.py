"""`mlevents grant ROLE --appender|--reader|--projector`: the minimum PostgreSQL privileges a
role needs on a store, printed as SQL or applied (event_sourcing.stores.privileges).
"""

from __future__ import annotations

import argparse
from typing import Any

from event_sourcing.cli.common import CommandLineError, add_url_argument, open_store, set_handler
from event_sourcing.errors import StoreUnavailableError
from event_sourcing.stores.recorder import redact_text, redact_url


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grant` to the `mlevents` parser."""
    grant = subparsers.add_parser(
        "grant",
        help="print (or --apply) the minimum PostgreSQL privileges for a role",
        description=cmd_grant.__doc__,
        epilog="Example: mlevents grant ml_app --appender postgresql://owner@db/prod --apply",
    )
    grant.add_argument("role", metavar="ROLE", help="the PostgreSQL role to grant to")
    add_url_argument(grant)
    kind = grant.add_mutually_exclusive_group(required=True)
    for name, help_text in (
        ("appender", "append and read events"),
        ("reader", "read events (and the read models that exist now)"),
        ("projector", "read events, create and own the projection tables (checkpoints, "
         "read models)"),
    ):
        kind.add_argument(
            f"--{name}", action=_Kind, nargs="?", const="", metavar="URL", help=help_text
        )
    grant.add_argument(
        "--apply", action="store_true",
        help="run the statements (as the schema's owner) instead of printing them",
    )
    set_handler(grant, cmd_grant)


class _Kind(argparse.Action):
    """`--appender [URL]`: the kind of role, and the URL when it follows the flag
    (`mlevents grant ROLE --appender URL`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        namespace.kind = self.option_strings[0].removeprefix("--")
        if values:
            if namespace.url and namespace.url != values:
                parser.error(
                    f"two store URLs given ({redact_url(namespace.url)!r} and "
                    f"{redact_url(values)!r}); give one"
                )
            namespace.url = values


def cmd_grant(args: argparse.Namespace) -> int:
    """Print the GRANT statements that let ROLE do one job on the PostgreSQL store at URL, and
    nothing more: no UPDATE, DELETE, TRUNCATE or DROP of events, no disabling of triggers, no
    moving of the position sequence. With --apply, run them in one transaction. Run it again
    after new read models appear (readers get SELECT on the tables that exist)."""
    import psycopg

    from event_sourcing.stores.privileges import apply_grants, grant_statements

    with open_store(args) as store:
        recorder: Any = store.recorder
        if store.dialect != "postgresql":
            raise CommandLineError(
                "grant is for PostgreSQL stores; a SQLite store is one file: protect it with "
                "file permissions"
            )
        url, schema, description = recorder.url, recorder.schema, recorder.description
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {redact_url(url)}: "
            f"{redact_text(str(exc).strip().splitlines()[0], url)}"
        ) from None
    with connection:
        statements = grant_statements(connection, schema, args.role, args.kind)
        if args.apply:
            apply_grants(connection, statements, args.role)
            print(f"granted {args.kind} privileges to {args.role!r} on {description}")
        else:
            for statement in statements:
                print(statement.as_string(connection) + ";")
    return 0
