"""EventStoreResource: the mlevents event store as a Dagster resource, one store per run or tick.

Exposes the library's store API plus `emit`, which stamps events with the Dagster run's ids.
"""

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

import event_sourcing as es
from event_sourcing.catalog import DomainEvent
from event_sourcing.errors import ConfigurationError

__all__ = ["EventStoreResource", "default_store_url", "mlevents_home", "run_metadata"]


def mlevents_home() -> Path:
    """Where the pipeline keeps its files: `$DAGSTER_HOME/mlevents`, else `./.mlevents`."""
    dagster_home = os.environ.get("DAGSTER_HOME")
    if dagster_home:
        return Path(dagster_home).expanduser().absolute() / "mlevents"
    return Path(".mlevents").absolute()


def default_store_url() -> str:
    """`$MLEVENTS_URL`, else a SQLite file `events.db` under `mlevents_home()`."""
    url = os.environ.get("MLEVENTS_URL")
    if url:
        return url
    return f"sqlite:///{mlevents_home() / 'events.db'}"


def run_metadata(context: Any) -> dict[str, Any]:
    """The Dagster ids of the current step: run id, job, asset key and partition (if any).

    Works with asset and op execution contexts; fields that do not apply are left out.
    """
    metadata: dict[str, Any] = {"dagster_run_id": context.run.run_id}
    job_name = getattr(context, "job_name", None)
    if job_name:
        metadata["dagster_job"] = job_name
    try:
        if context.has_assets_def:
            keys = context.selected_asset_keys
            if len(keys) == 1:
                metadata["asset_key"] = next(iter(keys)).to_user_string()
            elif keys:
                metadata["asset_keys"] = sorted(key.to_user_string() for key in keys)
    except (AttributeError, dg.DagsterInvariantViolationError):
        pass  # an op outside any asset: no asset key to record
    try:
        metadata["partition_key"] = context.partition_key if context.has_partition_key else None
    except (AttributeError, dg.DagsterInvariantViolationError):
        metadata["partition_key"] = None
    return metadata


class EventStoreResource(dg.ConfigurableResource):
    """The event store, opened once per run (once per step process with the multiprocess
    executor, once per sensor tick) and closed afterwards.

    `url` accepts `dg.EnvVar("MLEVENTS_URL")`; left empty it resolves to `$MLEVENTS_URL`, then
    `sqlite:///$DAGSTER_HOME/mlevents/events.db`, then `sqlite:///./.mlevents/events.db`.
    """

    url: str | None = Field(
        default=None,
        description="Store URL (sqlite:///... or postgresql://...). Empty: $MLEVENTS_URL, "
        "then a SQLite file under $DAGSTER_HOME/mlevents/ (or ./.mlevents/).",
    )

    _store: es.EventStore | None = PrivateAttr(default=None)

    # -- lifecycle ------------------------------------------------------------------------

    def resolved_url(self) -> str:
        """The URL this resource opens."""
        return self.url or default_store_url()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        url = self.resolved_url()
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = url[len("sqlite:///") :].partition("?")[0]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._store = es.connect(url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> es.EventStore:
        """The open store. Only available inside a run, a sensor tick or `with` a test context."""
        if self._store is None:
            raise ConfigurationError(
                "EventStoreResource is not open: it opens in setup_for_execution, which Dagster "
                "calls for runs and sensor ticks. In a test, use the built context as a context "
                "manager (`with dg.build_sensor_context(...) as context:`), or call "
                "es.connect(resource.resolved_url()) yourself"
            )
        return self._store

    # -- emitting -------------------------------------------------------------------------

    def emit(
        self,
        context: Any,
        stream_id: str,
        events: Sequence[es.NewEvent | DomainEvent],
        *,
        expected_version: int | None = None,
        stream_type: str | None = None,
        causation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[es.RecordedEvent]:
        """Append `events` with the run id as correlation id and the run's ids in metadata.

        Metadata gets `dagster_run_id`, `dagster_job`, `asset_key` and `partition_key`
        (see `run_metadata`); `metadata` adds to (and may override) them.
        """
        merged = {**run_metadata(context), **(metadata or {})}
        return self.store.append(
            stream_id,
            events,
            expected_version=expected_version,
            stream_type=stream_type,
            correlation_id=context.run.run_id,
            causation_id=causation_id,
            metadata=merged,
        )

    # -- the library API, delegated -------------------------------------------------------

    def append(
        self, stream_id: str, events: Sequence[es.NewEvent | DomainEvent], **kwargs: Any
    ) -> list[es.RecordedEvent]:
        """`EventStore.append`, unchanged (no Dagster metadata; use `emit` inside runs)."""
        return self.store.append(stream_id, events, **kwargs)

    def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[es.RecordedEvent]:
        return self.store.read_stream(stream_id, from_version, to_version)

    def read_all(
        self,
        after: int = 0,
        event_types: Collection[str] | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[es.RecordedEvent]:
        return self.store.read_all(after=after, event_types=event_types, until=until, limit=limit)

    def read_correlated(self, correlation_id: str) -> list[es.RecordedEvent]:
        return self.store.read_correlated(correlation_id)

    def get_event(self, event_id: str) -> es.RecordedEvent | None:
        return self.store.get_event(event_id)

    def stream_version(self, stream_id: str) -> int:
        return self.store.stream_version(stream_id)

    def head_position(self) -> int:
        return self.store.head_position()

    def counts_by_type(self) -> dict[str, int]:
        return self.store.counts_by_type()
