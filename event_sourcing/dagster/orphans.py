"""No orphans: when a Dagster run fails or is canceled, close the training runs it left open.

A run killed mid-training (SIGKILL, OOM) never appends its terminal event; these sensors do.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.launcher import DefaultRunLauncher

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster.event_store import EventStoreResource
from event_sourcing.training import TrainingService, TrainingStateError

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "WORKER_GONE_GRACE_SECONDS",
    "close_orphaned_trainings",
    "find_runs_whose_worker_is_gone",
    "orphan_sensors",
]

ROOT_RUN_ID_TAG = "dagster/root_run_id"
DEFAULT_INTERVAL_SECONDS = 10


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


# -- runs whose worker is gone, with nobody left to say so ---------------------------------------

WORKER_GONE_GRACE_SECONDS = 60.0
"""How long a started run's worker must have been seen dead before the run is marked failed.
The code server that launched it reports it within a second when it is alive to watch."""


def process_alive(pid: int) -> bool:
    """True while process `pid` exists on this host and is not a zombie."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc").is_dir():
        try:
            # "pid (comm) state ...": comm may hold spaces and parentheses
            state = stat.read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        except (OSError, IndexError):
            return True  # unreadable: assume alive, never fail a run on a guess
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    started = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
    event = started[-1].dagster_event if started else None
    return event.pid if event is not None else None


def find_runs_whose_worker_is_gone(
    instance: dg.DagsterInstance,
    seen_dead: dict[str, float],
    now: float,
    grace: float = WORKER_GONE_GRACE_SECONDS,
    alive: Callable[[int], bool] = process_alive,
) -> tuple[list[dg.DagsterRun], dict[str, float]]:
    """(STARTED runs whose worker process has been gone for `grace` seconds, the runs seen
    dead but not for that long yet -> when first seen), from `seen_dead` of the last call.

    Only for the default run launcher, whose run workers are processes on the host of the
    code server that evaluates sensors; other launchers check worker health themselves
    (run monitoring).
    """
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return [], {}
    gone: list[dg.DagsterRun] = []
    still: dict[str, float] = {}
    for record in instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    ):
        run = record.dagster_run
        pid = _worker_pid(instance, run.run_id)
        if pid is None or alive(pid):
            continue
        first = seen_dead.get(run.run_id, now)
        if now - first >= grace:
            gone.append(run)
        else:
            still[run.run_id] = first
    return gone, still



def orphan_sensors(
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
) -> list[dg.SensorDefinition]:
    """The three no-orphans sensors: close the trainings of failed / canceled runs, and fail
    started runs whose worker is gone. They need an `event_store` resource."""

    @dg.run_failure_sensor(
        name="close_trainings_of_failed_runs",
        minimum_interval_seconds=interval_seconds,
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
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A run was canceled -> training_failed for each training run it left open.",
    )
    def close_trainings_of_canceled_runs(
        context: dg.RunStatusSensorContext, event_store: EventStoreResource
    ) -> dg.SkipReason | None:
        message = context.dagster_event.message or "the run was canceled"
        return _close(context, event_store, message)

    @dg.sensor(
        name="fail_runs_whose_worker_is_gone",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A started run whose worker process is gone, with no code server left to "
        f"notice (e.g. after a restart), for {WORKER_GONE_GRACE_SECONDS:g} s -> mark it failed "
        "(then close_trainings_of_failed_runs closes its trainings).",
    )
    def fail_runs_whose_worker_is_gone(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen = json.loads(context.cursor) if context.cursor else {}
        gone, still = find_runs_whose_worker_is_gone(context.instance, seen, time.time())
        for run in gone:
            message = (
                f"the run worker (pid {_worker_pid(context.instance, run.run_id)}) is gone and "
                "nothing reported the run's end; marked failed by fail_runs_whose_worker_is_gone"
            )
            context.instance.report_run_failed(run, message)
            context.log.info(f"run {run.run_id}: {message}")
        return dg.SensorResult(cursor=json.dumps(still))

    return [
        close_trainings_of_failed_runs,
        close_trainings_of_canceled_runs,
        fail_runs_whose_worker_is_gone,
    ]
