"""Opening a store from a URL: `sqlite:///...` (embedded default) or `postgresql://...`.

Both backends sit behind one Recorder contract; this module only parses URLs and options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from event_sourcing.catalog import EventRegistry
from event_sourcing.errors import ConfigurationError, StoreNotFoundError
from event_sourcing.privacy.crypto import KeyProvider
from event_sourcing.stores.arguments import DEFAULT_MAX_PAYLOAD_BYTES, check_max_payload_bytes
from event_sourcing.stores.identifiers import check_schema_name
from event_sourcing.stores.recorder import Recorder, redact_url
from event_sourcing.stores.store import Clock, EventStore, utc_now

DEFAULT_SQLITE_PATH = Path(".mlevents") / "events.db"
DEFAULT_SCHEMA = "mlevents"
__all__ = ["EventStore", "connect", "default_url"]


def default_url() -> str:
    """`$MLEVENTS_URL`, else a SQLite file under ./.mlevents/."""
    return os.environ.get("MLEVENTS_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"


def _recorder(url: str, options: dict[str, Any], create: bool) -> Recorder:
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        from event_sourcing.stores.sqlite import SQLiteRecorder

        path, _, query = rest.partition("?")
        if not path.startswith("/") or path == "/":
            raise ConfigurationError(
                f"bad SQLite URL {redact_url(url)!r}: use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:"
            )
        params = dict(parse_qsl(query))
        synchronous = options.pop("synchronous", params.pop("synchronous", "FULL"))
        if params:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(params)}")
        if options:
            raise ConfigurationError(f"unknown SQLite option(s): {', '.join(options)}")
        try:
            return SQLiteRecorder(path[1:], synchronous=synchronous, create=create)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    if scheme in {"postgresql", "postgres", "postgresql+psycopg"}:
        from event_sourcing.stores.postgres import PostgresRecorder

        try:
            parts = urlsplit(url)
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
        except ValueError as exc:
            raise ConfigurationError(f"bad PostgreSQL URL {redact_url(url)!r}: {exc}") from None
        schema = options.pop("schema", None)
        if schema is None:  # the URL's ?schema= (an empty one is an error, not the default)
            schema = params.pop("schema", DEFAULT_SCHEMA)
        params.pop("schema", None)
        # %20, not +, for spaces: libpq does not read + as a space (e.g. in ?options=)
        query = urlencode(params, quote_via=quote)
        libpq_url = urlunsplit(parts._replace(scheme="postgresql", query=query))
        return PostgresRecorder(
            libpq_url, schema=check_schema_name(schema), create=create, **options
        )
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
    create: bool = True,
    key_provider: KeyProvider | None = None,
    **options: Any,
) -> EventStore:
    """Open the event store at `url` (default: `default_url()`), creating it if missing.

    `create=False` opens only an existing store: no file, folder or schema is made, and a
    missing store raises StoreNotFoundError. SQLite option: `synchronous` (FULL by
    default). PostgreSQL options: `schema` (default `mlevents`, also `?schema=` in the
    URL), `pool_size`, `connect_timeout`, `partition_size` (positions per partition of
    a store created or migrated to schema v7, default 1,000,000; docs/partitions.md).
    `validate=False` accepts event types that no
    model is registered for. `key_provider` wraps the keys of personal data (default:
    $MLEVENTS_KEK; see docs/privacy.md).
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str) or "://" not in url:
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigurationError(
            f"store URL {shown!r} is not a URL; use sqlite:///path/to/events.db or "
            "postgresql://user@host:5432/database"
        )
    check_max_payload_bytes(max_payload_bytes)
    try:
        recorder = _recorder(url, dict(options), create)
    except StoreNotFoundError:
        shown = redact_url(url)
        raise StoreNotFoundError(
            f"no event store at {shown} (create it with `mlevents init {shown}`)"
        ) from None
    store = EventStore(
        recorder,
        registry=registry,
        validate=validate,
        clock=clock,
        max_payload_bytes=max_payload_bytes,
        key_provider=key_provider,
    )
    from event_sourcing.integrity.audit import check_triggers

    try:
        check_triggers(store)  # append-only triggers missing or disabled: restore, say so
    except BaseException:
        store.close()
        raise
    return store
