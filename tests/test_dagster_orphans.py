"""No orphans: a run killed mid-training leaves no training run `running`.

Unit level: the sensor's helper against a real instance and store. End to end: the real
`dagster dev`, a run worker SIGKILLed while it trains, the shipped instance config.
"""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _dagster_dev import TIMEOUT, installation, running_dagster
from dagster._core.events import DagsterEventType

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster.orphans import (
    close_orphaned_trainings,
    find_runs_whose_worker_is_gone,
    orphan_sensors,
)
from event_sourcing.projections import (
    ProjectionRunner,
    builtin_projections,
    get_training_summary,
)
from event_sourcing.training import TrainingService
from pipelines.dataset import seed_landing
from pipelines.demo import wait_until
from pipelines.jobs import full_pipeline_job

fail_runs_whose_worker_is_gone = next(
    s for s in orphan_sensors() if s.name == "fail_runs_whose_worker_is_gone"
)


def _service(store: es.EventStore, tmp_path: Path) -> TrainingService:
    return TrainingService(store, ArtifactStore(tmp_path / "artifacts"))


def _dataset(service: TrainingService) -> str:
    import pandas as pd

    return service.artifacts.put_table(pd.DataFrame({"x": [1.0, 2.0], "target": [0, 1]})).sha256


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, **kwargs: Any) -> dg.DagsterRun:
    """A run of a no-op job, ended with `status` (FAILURE or CANCELED) as Dagster records it."""
    run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job(), **kwargs)
    if status == dg.DagsterRunStatus.FAILURE:
        instance.report_run_failed(run, "stopped")
    else:
        instance.report_run_canceled(run, "stopped")
    updated = instance.get_run_by_id(run.run_id)
    assert updated is not None and updated.status == status
    return updated


def test_a_dead_runs_open_trainings_are_closed_once(
    store: es.EventStore, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    service = _service(store, tmp_path)
    dead = _run(instance, dg.DagsterRunStatus.FAILURE)
    other = _run(instance, dg.DagsterRunStatus.FAILURE)
    version = _dataset(service)
    open_one = service.start_training({}, version, correlation_id=dead.run_id)
    done = service.start_training({}, version, correlation_id=dead.run_id)
    service.fail_training(done, "ended by itself")
    not_ours = service.start_training({}, version, correlation_id=other.run_id)

    closed = close_orphaned_trainings(store, instance, dead, "worker killed")
    assert [event.stream_id for event in closed] == [open_one]
    run = service.replay_training(open_one)
    assert run["status"] == "failed"
    assert dead.run_id in run["error"] and "worker killed" in run["error"]
    assert closed[0].metadata["dagster_run_id"] == dead.run_id
    assert service.replay_training(not_ours)["status"] == "running"
    # A second tick for the same run finds nothing left to close.
    assert close_orphaned_trainings(store, instance, dead, "worker killed") == []


def test_a_training_resumed_by_a_live_reexecution_is_left_to_it(
    store: es.EventStore, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    service = _service(store, tmp_path)
    root = _run(instance, dg.DagsterRunStatus.FAILURE)
    training_id = service.start_training({}, _dataset(service), correlation_id=root.run_id)
    live = instance.create_run_for_job(
        dg.GraphDefinition("noop").to_job(),
        root_run_id=root.run_id,
        parent_run_id=root.run_id,
        tags={"dagster/root_run_id": root.run_id, "dagster/parent_run_id": root.run_id},
    )
    assert not live.is_finished
    assert close_orphaned_trainings(store, instance, root, "failed") == []
    assert service.replay_training(training_id)["status"] == "running"
    # When the re-execution dies too, its failure closes the training its root started.
    retried = _run(
        instance,
        dg.DagsterRunStatus.CANCELED,
        root_run_id=root.run_id,
        parent_run_id=root.run_id,
        tags={"dagster/root_run_id": root.run_id, "dagster/parent_run_id": root.run_id},
    )
    instance.delete_run(live.run_id)
    closed = close_orphaned_trainings(store, instance, retried, "canceled")
    assert [event.stream_id for event in closed] == [training_id]
    assert "was canceled" in service.replay_training(training_id)["error"]


def _started_run(instance: dg.DagsterInstance, pid: int) -> dg.DagsterRun:
    """A run Dagster believes STARTED, whose worker (its RUN_START event's process) is `pid`."""
    run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job())
    instance.report_dagster_event(
        dg.DagsterEvent(
            DagsterEventType.RUN_START.value, job_name=run.job_name, message="started", pid=pid
        ),
        run_id=run.run_id,
    )
    started = instance.get_run_by_id(run.run_id)
    assert started is not None and started.status == dg.DagsterRunStatus.STARTED
    return started


def test_a_started_run_whose_worker_is_gone_is_marked_failed_after_a_grace_period(
    instance: dg.DagsterInstance,
) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = _started_run(instance, int(finished.stdout))
    alive = _started_run(instance, os.getpid())

    gone, seen = find_runs_whose_worker_is_gone(instance, {}, now=1000.0, grace=60.0)
    assert gone == [] and seen == {dead.run_id: 1000.0}  # seen dead once: wait for a watcher
    gone, seen = find_runs_whose_worker_is_gone(instance, seen, now=1030.0, grace=60.0)
    assert gone == [] and seen == {dead.run_id: 1000.0}
    gone, seen = find_runs_whose_worker_is_gone(instance, seen, now=1060.0, grace=60.0)
    assert [run.run_id for run in gone] == [dead.run_id] and seen == {}

    # The sensor: the first tick remembers the dead run, a tick after the grace fails it.
    with dg.build_sensor_context(instance=instance) as context:
        result = fail_runs_whose_worker_is_gone(context)
    assert list(json.loads(result.cursor)) == [dead.run_id]
    cursor = json.dumps({dead.run_id: 0.0})
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        result = fail_runs_whose_worker_is_gone(context)
    assert json.loads(result.cursor) == {}
    failed = instance.get_run_by_id(dead.run_id)
    assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
    running = instance.get_run_by_id(alive.run_id)
    assert running is not None and running.status == dg.DagsterRunStatus.STARTED


def _run_worker_pid(home: Path, run_id: str) -> int | None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
        event = started[0].dagster_event if started else None
        return event.pid if event is not None else None


@pytest.mark.slow
def test_sigkilled_run_worker_leaves_its_training_failed_not_running(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    place = installation(tmp_path, store_url)
    with running_dagster(place) as dagster:
        # The landing sensor waits while the seed lands, so the seed is ingested by our run.
        dagster.stop_sensor("landing_folder_sensor")
        seed_landing(place.landing)
        # The orphan sensor must have ticked once: a run status sensor starts from "now".
        wait_until(
            lambda: dagster._sensor("close_trainings_of_failed_runs")["sensorState"]["ticks"]
            or None,
            TIMEOUT,
            "the orphan sensor's first tick",
            0.5,
        )
        # Many CV folds: the training runs long enough to be killed in the middle.
        run_id = dagster.launch(
            full_pipeline_job.name,
            run_config={"ops": {"trained_model": {"config": {"cv_folds": 100}}}},
        )

        def training_in_progress() -> str | None:
            with es.connect(store_url) as store:
                events = store.read_correlated(run_id)
            steps = [e for e in events if e.event_type == EventTypes.TRAINING_PROGRESS]
            return steps[0].stream_id if steps else None

        training_id = wait_until(training_in_progress, TIMEOUT, "training to start", 0.2)
        pid = wait_until(lambda: _run_worker_pid(place.home, run_id), TIMEOUT, "pid", 0.5)
        os.kill(pid, signal.SIGKILL)

        def run_failed() -> str | None:
            status = dagster.run(run_id)["status"]
            return status if status in ("FAILURE", "CANCELED", "SUCCESS") else None

        assert wait_until(run_failed, TIMEOUT, f"run {run_id} to be marked failed") == "FAILURE"

        def summary() -> dict[str, object] | None:
            with es.connect(store_url) as store:
                ProjectionRunner(store, builtin_projections()).run()
                row = get_training_summary(store, training_id)
            return row if row is not None and row["status"] != "running" else None

        row = wait_until(summary, TIMEOUT, "the training run to be closed", 1.0)
    assert row["status"] == "failed"
    assert run_id in str(row["error"])
    with es.connect(store_url) as store:
        types = [e.event_type for e in store.read_stream(training_id)]
    assert types[-1] == EventTypes.TRAINING_FAILED
    assert EventTypes.TRAINING_COMPLETED not in types
