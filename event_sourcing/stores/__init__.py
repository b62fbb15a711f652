"""Opening a store from a URL: `sqlite:///...` (embedded default) or `postgresql://...`.

Both backends sit behind one Recorder contract; this module only parses URLs and options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from event_sourcing.catalog import EventRegistry
from event_sourcing.errors import ConfigurationError
from event_sourcing.stores.recorder import Recorder, redact_url
from event_sourcing.stores.store import DEFAULT_MAX_PAYLOAD_BYTES, Clock, EventStore, utc_now

DEFAULT_SQLITE_PATH = Path(".mlevents") / "events.db"
__all__ = ["EventStore", "connect", "default_url"]


def default_url() -> str:
    """`$MLEVENTS_URL`, else a SQLite file under ./.mlevents/."""
    return os.environ.get("MLEVENTS_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"


def _recorder(url: str, options: dict[str, Any]) -> Recorder:
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        from event_sourcing.stores.sqlite import SQLiteRecorder

        path, _, query = rest.partition("?")
        if not path.startswith("/") or path == "/":
            raise ConfigurationError(
                f"bad SQLite URL {url!r}: use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:"
            )
        params = dict(parse_qsl(query))
        synchronous = options.pop("synchronous", params.pop("synchronous", "FULL"))
        if params:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(params)}")
        if options:
            raise ConfigurationError(f"unknown SQLite option(s): {', '.join(options)}")
        try:
            return SQLiteRecorder(path[1:], synchronous=synchronous)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    if scheme in {"postgresql", "postgres", "postgresql+psycopg"}:
        from event_sourcing.stores.postgres import PostgresRecorder

        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        schema = options.pop("schema", None) or params.pop("schema", None) or "mlevents"
        if not schema.replace("_", "").isalnum() or len(schema) > 63:
            raise ConfigurationError(
                f"schema {schema!r} must be 1-63 letters, digits or underscores"
            )
        libpq_url = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(params)))
        return PostgresRecorder(libpq_url, schema=schema, **options)
    raise ConfigurationError(
        f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; use sqlite:///path/to/events.db"
        ", sqlite:///:memory: or postgresql://user@host:5432/database"
    )


def connect(
    url: str | None = None,
    *,
    registry: EventRegistry | None = None,
    validate: bool = True,
    clock: Clock = utc_now,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **options: Any,
) -> EventStore:
    """Open (and create if missing) the event store at `url` (default: `default_url()`).

    SQLite option: `synchronous` (FULL by default). PostgreSQL options: `schema` (default
    `mlevents`, also `?schema=` in the URL), `pool_size`, `connect_timeout`.
    `validate=False` accepts event types that no model is registered for.
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"store URL {url!r} is not a URL; use sqlite:///path/to/events.db or "
            "postgresql://user@host:5432/database"
        )
    if max_payload_bytes <= 0:
        raise ConfigurationError("max_payload_bytes must be positive")
    store = EventStore(
        _recorder(url, dict(options)),
        registry=registry,
        validate=validate,
        clock=clock,
        max_payload_bytes=max_payload_bytes,
    )
    from event_sourcing.integrity.audit import check_triggers

    try:
        check_triggers(store)  # append-only triggers missing or disabled: restore, say so
    except BaseException:
        store.close()
        raise
    return store
