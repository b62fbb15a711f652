"""The relay under Dagster: a job that relays the log to NATS JetStream for a bounded slice,
run every minute by a schedule, and an asset check that reports the relay's lag.

Off until a NATS URL is configured (`MLEVENTS_RELAY_NATS_URL`): the schedule then skips.
"""

import os

import dagster as dg
from pydantic import Field

from event_sourcing.dagster import EventStoreResource
from event_sourcing.relay import Relay, relay_lag
from event_sourcing.relay.nats import JetStreamSink, default_stream_name
from event_sourcing.relay.sink import DEFAULT_PREFIX

__all__ = [
    "DEFAULT_MAX_LAG",
    "NatsRelayResource",
    "RelaySliceConfig",
    "relay_defs",
    "relay_every_minute",
    "relay_job",
    "relay_lag_check",
    "relayed_events",
]

DEFAULT_MAX_LAG = 10_000
"""Events the relay may trail the head by before `relay_lag` fails (a warning)."""


class NatsRelayResource(dg.ConfigurableResource):
    """Where the relay publishes. Empty fields fall back to environment variables:
    `MLEVENTS_RELAY_NATS_URL` (unset: the relay is off), `MLEVENTS_RELAY_PREFIX`,
    `MLEVENTS_RELAY_STREAM`, `MLEVENTS_RELAY_MAX_LAG`."""

    url: str | None = Field(default=None, description="NATS URL, e.g. nats://127.0.0.1:4222")
    prefix: str | None = Field(default=None, description="subject prefix (default: mlevents)")
    stream: str | None = Field(default=None, description="JetStream stream (default: PREFIX)")
    max_lag: int | None = Field(default=None, description="lag the check tolerates")

    def resolved_url(self) -> str | None:
        return self.url or os.environ.get("MLEVENTS_RELAY_NATS_URL") or None

    def resolved_prefix(self) -> str:
        return self.prefix or os.environ.get("MLEVENTS_RELAY_PREFIX") or DEFAULT_PREFIX

    def resolved_stream(self) -> str:
        found = self.stream or os.environ.get("MLEVENTS_RELAY_STREAM")
        return found or default_stream_name(self.resolved_prefix())

    def resolved_max_lag(self) -> int:
        if self.max_lag is not None:
            return self.max_lag
        return int(os.environ.get("MLEVENTS_RELAY_MAX_LAG", DEFAULT_MAX_LAG))

    def open_sink(self) -> JetStreamSink:
        url = self.resolved_url()
        if url is None:
            raise dg.Failure(
                "the relay has no NATS URL: set MLEVENTS_RELAY_NATS_URL (or the nats_relay "
                "resource's url) to nats://host:4222"
            )
        return JetStreamSink(url, prefix=self.resolved_prefix(), stream=self.resolved_stream())


class RelaySliceConfig(dg.Config):
    max_seconds: float = Field(default=50.0, description="relay for at most this long")
    until_caught_up: bool = Field(
        default=True, description="end the slice as soon as every visible event is published"
    )


@dg.asset(
    group_name="streaming",
    description="The event log published, in global order, to NATS JetStream "
    "(subject PREFIX.<event_type>, the event id as Nats-Msg-Id).",
)
def relayed_events(
    context: dg.AssetExecutionContext,
    config: RelaySliceConfig,
    event_store: EventStoreResource,
    nats_relay: NatsRelayResource,
) -> dg.MaterializeResult:
    store = event_store.store
    with nats_relay.open_sink() as sink:
        stats = Relay(store, sink, name=sink.stream).run(
            max_seconds=config.max_seconds, until_caught_up=config.until_caught_up
        )
    head = store.head_position()
    context.log.info(
        f"relayed {stats.published} event(s) to {sink.description}; checkpoint "
        f"{stats.checkpoint}, head {head}"
    )
    return dg.MaterializeResult(
        metadata={
            "published": stats.published,
            "duplicates": stats.duplicates,
            "checkpoint": stats.checkpoint,
            "head_position": head,
            "lag": head - stats.checkpoint,
            "stream": sink.stream,
        }
    )


@dg.asset_check(
    asset=relayed_events,
    description="How many events the relay trails the head of the log by.",
)
def relay_lag_check(
    event_store: EventStoreResource, nats_relay: NatsRelayResource
) -> dg.AssetCheckResult:
    head, checkpoint = relay_lag(event_store.store, nats_relay.resolved_stream())
    lag, max_lag = head - checkpoint, nats_relay.resolved_max_lag()
    return dg.AssetCheckResult(
        passed=lag <= max_lag,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"the relay is {lag} event(s) behind the head (tolerated: {max_lag})",
        metadata={"lag": lag, "head_position": head, "checkpoint": checkpoint,
                  "max_lag": max_lag},
    )


relay_job = dg.define_asset_job(
    "relay_to_nats",
    selection=dg.AssetSelection.assets(relayed_events),
    description="Publish new events to NATS JetStream, then check the relay's lag.",
)


@dg.schedule(
    job=relay_job,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Relay new events every minute; skips while no NATS URL is configured or "
    "while the previous slice still runs. For sub-second latency run `mlevents relay`.",
)
def relay_every_minute(
    context: dg.ScheduleEvaluationContext, nats_relay: NatsRelayResource
) -> dg.RunRequest | dg.SkipReason:
    if nats_relay.resolved_url() is None:
        return dg.SkipReason("the relay is off: set MLEVENTS_RELAY_NATS_URL to turn it on")
    running = context.instance.get_run_records(
        dg.RunsFilter(
            job_name=relay_job.name,
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ],
        ),
        limit=1,
    )
    if running:
        return dg.SkipReason(f"run {running[0].dagster_run.run_id} is still relaying")
    return dg.RunRequest()


relay_defs = dg.Definitions(
    assets=[relayed_events],
    asset_checks=[relay_lag_check],
    jobs=[relay_job],
    schedules=[relay_every_minute],
    resources={"nats_relay": NatsRelayResource()},
)
