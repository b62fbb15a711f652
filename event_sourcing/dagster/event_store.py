"""EventStoreResource: the mlevents event store as a Dagster resource, one store per run or tick.

Exposes the library's store API plus `emit`, which stamps events with the Dagster run's ids.
"""

import os
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

import event_sourcing as es
from event_sourcing.catalog import DomainEvent
from event_sourcing.errors import ConfigurationError

__all__ = [
    "EventStoreResource",
    "default_store_url",
    "idempotency_scope",
    "keyed_event_id",
    "mlevents_home",
    "run_metadata",
]

# Fixed namespace of keyed event ids: uuid5(namespace, "<root run id>/<step key>/<key>/<n>").
_KEY_NAMESPACE = uuid.UUID("3c0f8a52-6d1e-4c47-b5d4-6d6c6576656e")


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


def idempotency_scope(context: Any, key: str) -> str:
    """`<root run id>/<step key>/<key>`: what a keyed emission's ids derive from.

    The root run id is shared by a run, its re-executions and its automatic retries; the step
    key names the step within them. A fresh run of the same job has a new root, so new ids.
    """
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"an idempotency key must be a non-empty string, got {key!r}")
    run = context.run
    root = run.root_run_id or run.run_id
    try:
        step = context.get_step_execution_context().step.key
    except (AttributeError, dg.DagsterInvariantViolationError):
        step = context.op_def.name if getattr(context, "op_def", None) else "-"
    return f"{root}/{step}/{key}"


def keyed_event_id(context: Any, key: str, index: int = 0) -> str:
    """The id of the `index`-th event emitted under `key` by this step (see `emit`)."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{idempotency_scope(context, key)}/{index}"))


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
        key: str | None = None,
    ) -> list[es.RecordedEvent]:
        """Append `events` with the run id as correlation id and the run's ids in metadata.

        Metadata gets `dagster_run_id`, `dagster_job`, `asset_key` and `partition_key`
        (see `run_metadata`); `metadata` adds to (and may override) them.

        `key` (an idempotency key: what the events state, e.g. ``"deploy"``) makes the
        emission happen once per step of a run family: the n-th event's id derives from the
        root run id, the step key and `key` (`keyed_event_id`). Emitting the same key again
        (a step retried by a RetryPolicy or after its process died, a re-execution from
        failure, a run retry) returns the events recorded first and writes nothing, even when
        the new payloads differ; the step's log says so. A keyed batch may not carry ids.
        """
        if key is not None:
            existing = self.emitted(context, key)
            if existing:
                self._log_reuse(context, key, existing)
                return existing
            batch: list[es.NewEvent | DomainEvent] = []
            for index, event in enumerate(events):
                event_id = keyed_event_id(context, key, index)
                if isinstance(event, DomainEvent):
                    batch.append(es.NewEvent.of(event, id=event_id))
                elif event.id is None:
                    batch.append(es.NewEvent(event.type, event.payload, event_id, event.metadata))
                else:
                    raise es.EventValidationError(
                        f"events[{index}] has id {event.id}, but a keyed emission derives every "
                        f"id from its key {key!r}; leave the id out"
                    )
            events = batch
        merged = {**run_metadata(context), **(metadata or {})}
        if key is not None:
            merged["idempotency_key"] = key
        recorded = self.store.append(
            stream_id,
            events,
            expected_version=expected_version,
            stream_type=stream_type,
            correlation_id=context.run.run_id,
            causation_id=causation_id,
            metadata=merged,
            on_duplicate="compare" if key is None else "return_existing",
        )
        if key is not None and recorded and recorded[0].metadata.get(
            "dagster_run_id"
        ) != context.run.run_id:
            self._log_reuse(context, key, recorded)  # another attempt won the race
        return recorded

    def emitted(self, context: Any, key: str) -> list[es.RecordedEvent]:
        """The events this step emitted under `key` in this run family (empty if none)."""
        found: list[es.RecordedEvent] = []
        while True:
            event = self.store.get_event(keyed_event_id(context, key, len(found)))
            if event is None:
                return found
            found.append(event)

    @staticmethod
    def _log_reuse(context: Any, key: str, events: Sequence[es.RecordedEvent]) -> None:
        first = events[0]
        context.log.info(
            f"idempotency key {key!r}: reusing {len(events)} event(s) recorded by an earlier "
            f"attempt (run {first.metadata.get('dagster_run_id', '?')}; "
            f"{', '.join(f'{e.event_type} at position {e.position}' for e in events)}); "
            "nothing new was written"
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

    def read_as_of(
        self,
        at: datetime,
        known_at: datetime | None = None,
        event_types: Collection[str] | None = None,
    ) -> Iterator[es.RecordedEvent]:
        return self.store.read_as_of(at, known_at, event_types)

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
