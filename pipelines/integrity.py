"""Tamper evidence in Dagster: `log_integrity` seals the event log on a schedule, keeping each
seal's root as asset metadata in Dagster's own storage (a witness outside the event store);
its blocking check verifies what is new against every root Dagster kept (docs/integrity.md).
"""

import os
from typing import Any

import dagster as dg

from event_sourcing.dagster import EventStoreResource
from event_sourcing.integrity.audit import Seal

__all__ = ["DEFAULT_SEAL_CRON", "integrity_defs", "log_integrity", "log_verifies", "witness"]

DEFAULT_SEAL_CRON = "0 * * * *"
"""Every hour, on the hour (UTC); $MLEVENTS_SEAL_CRON overrides it."""
_SEAL_FIELDS = ("number", "position", "from_position", "to_position", "count", "root",
                "previous", "chain")
_KEY = dg.AssetKey("log_integrity")


@dg.asset(
    group_name="integrity",
    description="Seals the event log: an integrity_sealed event with the Merkle root of every "
    "event since the previous seal. The root is kept here too, out of the database's reach.",
)
def log_integrity(
    context: dg.AssetExecutionContext, event_store: EventStoreResource
) -> dg.MaterializeResult:
    sealed = event_store.store.seal()  # refuses (IntegrityError) if the new events do not verify
    context.log.info(
        f"seal {sealed.number}: positions {sealed.from_position + 1}-{sealed.to_position}, "
        f"{sealed.count} events, root {sealed.root}"
    )
    return dg.MaterializeResult(
        metadata={"store": event_store.store.recorder.description, **sealed.to_dict()}
    )


def witness(instance: dg.DagsterInstance, store: str) -> list[Seal]:
    """Every seal of `store` that Dagster recorded as log_integrity metadata, oldest first."""
    kept: dict[int, Seal] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(_KEY, limit=1000, cursor=cursor, ascending=True)
        for record in result.records:
            materialization = record.asset_materialization
            if materialization is None:
                continue
            values: dict[str, Any] = {
                key: value.value for key, value in materialization.metadata.items()
            }
            if values.get("store") == store and all(f in values for f in _SEAL_FIELDS):
                kept[values["number"]] = Seal(**{f: values[f] for f in _SEAL_FIELDS})
        if not result.has_more:
            return [kept[number] for number in sorted(kept)]
        cursor = result.cursor


@dg.asset_check(
    asset=log_integrity,
    blocking=True,
    description="Recomputes hash chains and seals since the last verified seal and compares "
    "every seal with the roots Dagster kept; names the first tampered event.",
)
def log_verifies(
    context: dg.AssetCheckExecutionContext, event_store: EventStoreResource
) -> dg.AssetCheckResult:
    store = event_store.store
    kept = witness(context.instance, store.recorder.description)
    report = store.verify(since_last_verified=True, against=kept)
    metadata: dict[str, Any] = {
        "positions": f"{report.from_position + 1}-{report.to_position}",
        "events": report.events,
        "seals": report.seals,
        "witness_seals": report.witness_seals,
        "warnings": [str(warning) for warning in report.warnings],
    }
    if report.first is not None:
        metadata["first_bad_event"] = str(report.first)
        metadata["problems"] = [str(problem) for problem in report.problems[:20]]
        context.log.error(f"the event log was tampered with: {report.first}")
    return dg.AssetCheckResult(
        passed=report.ok, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata
    )


seal_job = dg.define_asset_job("seal_log", selection=dg.AssetSelection.assets(log_integrity))
seal_schedule = dg.ScheduleDefinition(
    name="seal_log_hourly",
    job=seal_job,
    cron_schedule=os.environ.get("MLEVENTS_SEAL_CRON") or DEFAULT_SEAL_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Seal the event log and verify what is new against every root kept so far.",
)
integrity_defs = dg.Definitions(
    assets=[log_integrity], asset_checks=[log_verifies], jobs=[seal_job],
    schedules=[seal_schedule],
)
