"""Sensors: the event store and the landing folder drive retraining and provenance refreshes.

Store sensors keep the last global position they processed as their cursor (O(new events)).

Every RunRequest's run_key is the id of the event that caused it (or, for the landing folder,
a hash of the new files), so a tick that is evaluated again never launches a second run. A
store sensor ignores events written by a run that itself covers the assets it would launch
(a full pipeline run retrains and refreshes provenance on its own), unless that run failed.
"""

import hashlib
import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from pipelines.jobs import (
    PROVENANCE_ASSETS,
    RETRAIN_ASSETS,
    ingestion_job,
    provenance_job,
    retrain_job,
)
from pipelines.orphans import orphan_sensors
from pipelines.state import dataset_history
from resources import EventStoreResource, LandingFolderResource

__all__ = [
    "CAUSE_TAG",
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_READ_LIMIT",
    "PROVENANCE_TRIGGERS",
    "QualityPolicy",
    "build_quality_sensor",
    "landing_folder_sensor",
    "read_new_events",
    "refresh_provenance",
    "retrain_on_new_data",
    "retrain_on_quality_drop",
    "sensors",
]

DEFAULT_INTERVAL_SECONDS = int(os.environ.get("MLEVENTS_SENSOR_INTERVAL", "10"))
DEFAULT_READ_LIMIT = 1000
"""Events a store sensor looks at per tick; the rest wait for the next tick."""
CAUSE_TAG = "mlevents/cause_event_id"


def _position(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return max(0, int(cursor))
    except ValueError:
        raise es.ConfigurationError(
            f"sensor cursor {cursor!r} is not a global position (an integer); reset the "
            "sensor's cursor in the Dagster UI (or set it to 0 to reprocess the log)"
        ) from None


def read_new_events(
    store: es.EventStore,
    after: int,
    event_types: Collection[str],
    limit: int = DEFAULT_READ_LIMIT,
) -> tuple[list[es.RecordedEvent], int]:
    """(matching events after `after`, new cursor), reading at most `limit` events.

    The head position is read first: every position up to it is visible (the store makes
    positions visible in order), so when the filtered read comes back short the cursor can
    jump to the head, and the next tick starts after events it has no interest in.
    """
    if limit < 1:
        raise es.ConfigurationError(f"limit must be at least 1, got {limit}")
    head = store.head_position()
    found = list(store.read_all(after=after, event_types=list(event_types), limit=limit))
    kept = [event for event in found if event.position <= head]
    if len(found) == limit and len(kept) == len(found):
        return kept, kept[-1].position  # a full page: more may wait up to the head
    return kept, max(after, head)


def _run_asset_keys(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[dg.AssetKey]:
    """The assets a run materializes (its selection, else the asset steps of its plan)."""
    if run.asset_selection:
        return set(run.asset_selection)
    if not run.execution_plan_snapshot_id:
        return set()
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    selected = set(plan.step_keys_to_execute or [step.key for step in plan.steps])
    return {
        output.properties.asset_key
        for step in plan.steps
        if step.key in selected
        for output in step.outputs
        if output.properties is not None and output.properties.asset_key is not None
    }


def _covered_by_own_run(
    instance: dg.DagsterInstance, event: es.RecordedEvent, asset_keys: Sequence[dg.AssetKey]
) -> bool:
    """True if the Dagster run that wrote `event` also materializes all of `asset_keys`.

    Such a run does the work itself (a full pipeline run retrains and refreshes provenance),
    unless it failed or was canceled, in which case the sensor must.
    """
    run_id = event.metadata.get("dagster_run_id") or event.correlation_id
    if not run_id:
        return False
    try:
        run = instance.get_run_by_id(str(run_id))
    except Exception:  # a correlation id that is not a run id is simply not one of our runs
        return False
    if run is None or run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return False
    covered = _run_asset_keys(instance, run)
    return all(key in covered for key in asset_keys)


def _run_request(job: Any, cause: es.RecordedEvent, extra: dict[str, str] | None = None) -> Any:
    tags = {
        CAUSE_TAG: cause.id,
        "mlevents/cause_event_type": cause.event_type,
        "mlevents/cause_position": str(cause.position),
        **(extra or {}),
    }
    return dg.RunRequest(run_key=cause.id, job_name=job.name, tags=tags)


# -- retrain on new data -------------------------------------------------------------------------


@dg.sensor(
    name="retrain_on_new_data",
    jobs=[retrain_job],
    minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="data_validated (passed) for a new dataset version -> features, training, "
    "evaluation, deployment. One run per tick, keyed by the newest such event.",
)
def retrain_on_new_data(
    context: dg.SensorEvaluationContext, event_store: EventStoreResource
) -> dg.SensorResult:
    after = _position(context.cursor)
    events, cursor = read_new_events(event_store.store, after, [EventTypes.DATA_VALIDATED])
    causes = [
        event
        for event in events
        if event.payload.get("passed")
        and not _covered_by_own_run(context.instance, event, RETRAIN_ASSETS)
    ]
    requests = []
    if causes:
        # Several versions validated since the last tick: one retrain on the newest suffices.
        cause = causes[-1]
        versions = ",".join(e.payload["dataset_version"][:12] for e in causes)
        requests.append(_run_request(retrain_job, cause, {"mlevents/dataset_versions": versions}))
        context.log.info(f"retraining for dataset version(s) {versions}")
    return dg.SensorResult(run_requests=requests, cursor=str(cursor))


# -- refresh provenance --------------------------------------------------------------------------

PROVENANCE_TRIGGERS = (
    EventTypes.TRAINING_COMPLETED,
    EventTypes.MODEL_EVALUATED,
    EventTypes.MODEL_DEPLOYED,
    EventTypes.MODEL_RETIRED,
)


@dg.sensor(
    name="refresh_provenance",
    jobs=[provenance_job],
    minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="training_completed / model_deployed / model_retired -> refresh the read "
    "models and the deployed model's lineage.",
)
def refresh_provenance(
    context: dg.SensorEvaluationContext, event_store: EventStoreResource
) -> dg.SensorResult:
    after = _position(context.cursor)
    events, cursor = read_new_events(event_store.store, after, PROVENANCE_TRIGGERS)
    causes = [e for e in events if not _covered_by_own_run(context.instance, e, PROVENANCE_ASSETS)]
    requests = [_run_request(provenance_job, causes[-1])] if causes else []
    return dg.SensorResult(run_requests=requests, cursor=str(cursor))


# -- retrain on quality drop ---------------------------------------------------------------------


@dataclass(frozen=True)
class QualityPolicy:
    """When falling accuracy triggers a retrain.

    Over the last `window` feedback events of a model, if at least `min_feedback` are known
    and the share of correct predictions is below `threshold`, retrain once; the model can
    trigger again only after its accuracy has recovered to the threshold.
    """

    threshold: float = 0.8
    window: int = 50
    min_feedback: int = 20

    @classmethod
    def from_env(cls) -> "QualityPolicy":
        """From $MLEVENTS_QUALITY_THRESHOLD, _WINDOW and _MIN_FEEDBACK (defaults otherwise)."""
        return cls(
            threshold=float(os.environ.get("MLEVENTS_QUALITY_THRESHOLD", cls.threshold)),
            window=int(os.environ.get("MLEVENTS_QUALITY_WINDOW", cls.window)),
            min_feedback=int(os.environ.get("MLEVENTS_QUALITY_MIN_FEEDBACK", cls.min_feedback)),
        )


def _quality_state(cursor: str | None) -> dict[str, Any]:
    if not cursor:
        return {"position": 0, "windows": {}, "fired": []}
    try:
        state = json.loads(cursor)
        int(state["position"])
        return {
            "position": int(state["position"]),
            "windows": dict(state.get("windows") or {}),
            "fired": list(state.get("fired") or []),
        }
    except (ValueError, KeyError, TypeError):
        raise es.ConfigurationError(
            f"retrain_on_quality_drop cursor {cursor!r} is not its JSON state; reset the "
            "sensor's cursor in the Dagster UI"
        ) from None


def build_quality_sensor(
    policy: QualityPolicy | None = None, name: str = "retrain_on_quality_drop"
) -> dg.SensorDefinition:
    """The quality sensor for a policy (default: `QualityPolicy.from_env()`).

    Its cursor is JSON: the last position read, each model's last `window` outcomes (1 =
    correct) and the models that already triggered; it stays small however long the log.
    """
    policy = policy or QualityPolicy.from_env()

    @dg.sensor(
        name=name,
        jobs=[retrain_job],
        minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"rolling accuracy over the last {policy.window} inference_feedback events "
        f"of a model below {policy.threshold:g} (with >= {policy.min_feedback} known) -> retrain",
    )
    def quality_sensor(
        context: dg.SensorEvaluationContext, event_store: EventStoreResource
    ) -> dg.SensorResult:
        state = _quality_state(context.cursor)
        events, cursor = read_new_events(
            event_store.store, state["position"], [EventTypes.INFERENCE_FEEDBACK]
        )
        windows: dict[str, list[int]] = state["windows"]
        fired: list[str] = state["fired"]
        requests = []
        for event in events:
            correct = event.payload.get("correct")
            model_id = event.payload.get("model_id")
            if correct is None or not model_id:
                continue  # not a labelled judgement of a known model
            window = [*windows.get(model_id, []), 1 if correct else 0][-policy.window :]
            windows[model_id] = window
            accuracy = sum(window) / len(window)
            if accuracy >= policy.threshold:
                if model_id in fired:
                    fired.remove(model_id)  # recovered: may trigger again later
                continue
            if len(window) >= policy.min_feedback and model_id not in fired:
                fired.append(model_id)
                requests.append(
                    _run_request(
                        retrain_job,
                        event,
                        {
                            "mlevents/model_id": model_id,
                            "mlevents/rolling_accuracy": f"{accuracy:.4f}",
                        },
                    )
                )
                context.log.info(
                    f"model {model_id}: rolling accuracy {accuracy:.3f} over {len(window)} "
                    f"feedback events < {policy.threshold:g}; retraining"
                )
        new_state = {"position": cursor, "windows": windows, "fired": fired[-100:]}
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_state))

    return quality_sensor


retrain_on_quality_drop = build_quality_sensor()


# -- landing folder ------------------------------------------------------------------------------


def _sha256_file(path: Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dg.sensor(
    name="landing_folder_sensor",
    jobs=[ingestion_job],
    minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New batch CSVs in the landing folder (by content hash, skipping any already "
    "ingested) -> ingest and validate them.",
)
def landing_folder_sensor(
    context: dg.SensorEvaluationContext,
    landing: LandingFolderResource,
    event_store: EventStoreResource,
) -> dg.SensorResult:
    seen: list[str] = json.loads(context.cursor) if context.cursor else []
    known = set(seen)
    ingested = dataset_history(event_store.store).ingested_hashes()
    new: dict[str, str] = {}
    for path in landing.batch_files():
        digest = _sha256_file(path)
        if digest not in known and digest not in ingested:
            new.setdefault(digest, path.name)
        known.add(digest)
    requests = []
    if new:
        key = hashlib.sha256(",".join(sorted(new)).encode()).hexdigest()
        requests.append(
            dg.RunRequest(
                run_key=f"landing:{key}",
                job_name=ingestion_job.name,
                tags={"mlevents/batch_files": ",".join(sorted(new.values()))[:1000]},
            )
        )
        context.log.info(f"new batch files: {sorted(new.values())}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(known)))


sensors = [
    retrain_on_new_data,
    retrain_on_quality_drop,
    refresh_provenance,
    landing_folder_sensor,
    *orphan_sensors,
]
