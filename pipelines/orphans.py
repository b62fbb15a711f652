"""No orphans: when a Dagster run fails or is canceled, close the training runs it left open.

A run killed mid-training (SIGKILL, OOM) never appends its terminal event; these sensors do.
"""

import os
from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.training import TrainingService, TrainingStateError
from resources import EventStoreResource

__all__ = [
    "close_orphaned_trainings",
    "close_trainings_of_canceled_runs",
    "close_trainings_of_failed_runs",
    "orphan_sensors",
]

ROOT_RUN_ID_TAG = "dagster/root_run_id"
# The store sensors' interval ($MLEVENTS_SENSOR_INTERVAL, see pipelines.sensors).
_INTERVAL_SECONDS = int(os.environ.get("MLEVENTS_SENSOR_INTERVAL", "10"))


def _family(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[dg.DagsterRun]:
    """The run, its root and every re-execution or retry of that root."""
    root = run.root_run_id or run.run_id
    family = {run.run_id: run}
    root_run = instance.get_run_by_id(root)
    if root_run is not None:
        family[root] = root_run
    for member in instance.get_runs(dg.RunsFilter(tags={ROOT_RUN_ID_TAG: root})):
        family.setdefault(member.run_id, member)
    return list(family.values())


def close_orphaned_trainings(
    store: es.EventStore,
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    reason: str,
) -> list[es.RecordedEvent]:
    """Append training_failed for every training run that `run` (or an earlier run of its
    family, whose open training `run` may have resumed) left running; return those events.

    Training runs are found by correlation id (the pipeline starts them with the Dagster run
    id). Nothing is closed while another run of the family is still in progress: it may be
    resuming that training, and its own end brings this sensor back.
    """
    family = _family(instance, run)
    if any(member.run_id != run.run_id and not member.is_finished for member in family):
        return []
    service = TrainingService(store)
    seen: set[str] = set()
    closed: list[es.RecordedEvent] = []
    status = "was canceled" if run.status == dg.DagsterRunStatus.CANCELED else "failed"
    for member in family:
        for event in store.read_correlated(member.run_id):
            if event.event_type != EventTypes.TRAINING_STARTED or event.stream_id in seen:
                continue
            seen.add(event.stream_id)
            if service.replay_training(event.stream_id)["status"] != "running":
                continue
            try:
                closed.append(
                    service.fail_training(
                        event.stream_id,
                        f"Dagster run {run.run_id} {status} with this training run still "
                        f"open: {reason}",
                        metadata={
                            "dagster_run_id": run.run_id,
                            "dagster_root_run_id": run.root_run_id or run.run_id,
                            "dagster_job": run.job_name,
                            "closed_by": "orphan sensor",
                        },
                    )
                )
            except TrainingStateError:
                continue  # ended meanwhile (another tick, or the run's own retry)
    return closed


def _close(context: Any, event_store: EventStoreResource, reason: str) -> dg.SkipReason | None:
    run = context.dagster_run
    closed = close_orphaned_trainings(event_store.store, context.instance, run, reason)
    if not closed:
        return dg.SkipReason(f"run {run.run_id} left no training run open")
    for event in closed:
        context.log.info(f"closed training run {event.stream_id} left open by run {run.run_id}")
    return None


@dg.run_failure_sensor(
    name="close_trainings_of_failed_runs",
    minimum_interval_seconds=_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A run failed (also: its worker was killed) -> training_failed for each "
    "training run it left open.",
)
def close_trainings_of_failed_runs(
    context: dg.RunFailureSensorContext, event_store: EventStoreResource
) -> dg.SkipReason | None:
    message = context.failure_event.message or "the run failed"
    return _close(context, event_store, message)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    name="close_trainings_of_canceled_runs",
    minimum_interval_seconds=_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A run was canceled -> training_failed for each training run it left open.",
)
def close_trainings_of_canceled_runs(
    context: dg.RunStatusSensorContext, event_store: EventStoreResource
) -> dg.SkipReason | None:
    message = context.dagster_event.message or "the run was canceled"
    return _close(context, event_store, message)


orphan_sensors = [close_trainings_of_failed_runs, close_trainings_of_canceled_runs]
