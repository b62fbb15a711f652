"""Store sensors: `event_sensor` (events of given types launch a job or assets) and the
quality sensor (falling rolling accuracy in inference_feedback launches a retrain).

Cursor = the last global position read (a tick costs O(new events)); run key = the id of the
event that caused the run, so a tick evaluated again never launches a second run.
"""

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster.event_store import EventStoreResource
from event_sourcing.projections.pages import read_page

__all__ = [
    "CAUSE_TAG",
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_READ_LIMIT",
    "QualityPolicy",
    "cause_run_request",
    "covered_by_own_run",
    "event_sensor",
    "quality_sensor",
    "sensor_position",
]

DEFAULT_INTERVAL_SECONDS = 10
DEFAULT_READ_LIMIT = 1000
"""Events a store sensor looks at per tick; the rest wait for the next tick."""
CAUSE_TAG = "mlevents/cause_event_id"

EventFilter = Callable[[es.RecordedEvent], bool]
RunConfigFn = Callable[[es.RecordedEvent], Mapping[str, Any]]


def sensor_position(cursor: str | None) -> int:
    """A store sensor's cursor as a global position (0 when unset)."""
    if not cursor:
        return 0
    try:
        return max(0, int(cursor))
    except ValueError:
        raise es.ConfigurationError(
            f"sensor cursor {cursor!r} is not a global position (an integer); reset the "
            "sensor's cursor in the Dagster UI (or set it to 0 to reprocess the log)"
        ) from None


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


def covered_by_own_run(
    instance: dg.DagsterInstance, event: es.RecordedEvent, asset_keys: Collection[dg.AssetKey]
) -> bool:
    """True if the Dagster run that wrote `event` also materializes all of `asset_keys`.

    Such a run does the work itself (a full pipeline run retrains and refreshes provenance),
    unless it failed or was canceled, in which case the sensor must.
    """
    if not asset_keys:
        return False
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


def cause_run_request(
    cause: es.RecordedEvent,
    *,
    job_name: str | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.RunRequest:
    """A RunRequest keyed by the event that caused it, tagged with its id, type and position."""
    return dg.RunRequest(
        run_key=cause.id,
        job_name=job_name,
        asset_selection=list(asset_selection) if asset_selection is not None else None,
        run_config=dict(run_config or {}),
        tags={
            CAUSE_TAG: cause.id,
            "mlevents/cause_event_type": cause.event_type,
            "mlevents/cause_position": str(cause.position),
            **(tags or {}),
        },
    )


def event_sensor(
    name: str,
    event_types: Collection[str],
    *,
    job: Any = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    filter: EventFilter | None = None,
    run_config: RunConfigFn | None = None,
    tags: Callable[[list[es.RecordedEvent]], Mapping[str, str]] | None = None,
    latest_only: bool = True,
    covers: Collection[dg.AssetKey] | None = None,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
    limit: int = DEFAULT_READ_LIMIT,
) -> dg.SensorDefinition:
    """A sensor that launches `job` (or materializes `asset_selection`) for events in the log.

    Each tick reads the events of `event_types` after its cursor (a global position), keeps
    those `filter` accepts and launches one run per event, or only for the newest one with
    `latest_only` (several dataset versions validated since the last tick: one retrain
    suffices). `run_config(event)` gives each run's config. The run key is the causing event's
    id. Events written by a run that itself materializes the assets the launched run would
    (`covers`; default: `asset_selection`, else the job's asset selection) are ignored: that
    run did the work, unless it failed. Needs an `event_store` resource.
    """
    if (job is None) == (asset_selection is None):
        raise es.ConfigurationError(f"event_sensor {name!r}: give a job or an asset_selection")
    types = list(event_types)
    if not types:
        raise es.ConfigurationError(f"event_sensor {name!r}: give at least one event type")
    selection = list(asset_selection) if asset_selection is not None else None
    job_name = getattr(job, "name", None) if job is not None else None

    def covered_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetKey]:
        if covers is not None:
            return list(covers)
        if selection is not None:
            return selection
        repository = context.repository_def
        if isinstance(getattr(job, "selection", None), dg.AssetSelection) and repository:
            try:
                return sorted(job.selection.resolve(repository.asset_graph))
            except Exception:  # no repository in a bare test context, an unresolvable selection
                return []
        return []

    @dg.sensor(
        name=name,
        jobs=[job] if job is not None else None,
        asset_selection=selection,
        minimum_interval_seconds=interval_seconds,
        default_status=default_status,
        description=description or f"{', '.join(types)} -> {job_name or 'assets'}",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, event_store: EventStoreResource
    ) -> dg.SensorResult:
        page = read_page(event_store.store, sensor_position(context.cursor), types, limit)
        keys = covered_keys(context)
        causes = [
            event
            for event in page.events
            if (filter is None or filter(event))
            and not (keys and covered_by_own_run(context.instance, event, keys))
        ]
        picked = causes[-1:] if latest_only else causes
        requests = [
            cause_run_request(
                cause,
                job_name=job_name,
                asset_selection=selection,
                run_config=run_config(cause) if run_config else None,
                tags=tags(causes) if tags else None,
            )
            for cause in picked
        ]
        if requests:
            context.log.info(f"{len(requests)} run(s) for {len(causes)} event(s) of {types}")
        return dg.SensorResult(run_requests=requests, cursor=str(page.cursor))

    return _sensor


# -- the quality sensor ----------------------------------------------------------------------


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


def _quality_state(cursor: str | None, name: str) -> dict[str, Any]:
    if not cursor:
        return {"position": 0, "windows": {}, "fired": []}
    try:
        state = json.loads(cursor)
        return {
            "position": int(state["position"]),
            "windows": dict(state.get("windows") or {}),
            "fired": list(state.get("fired") or []),
        }
    except (ValueError, KeyError, TypeError):
        raise es.ConfigurationError(
            f"{name} cursor {cursor!r} is not its JSON state; reset the sensor's cursor in the "
            "Dagster UI"
        ) from None


def _model_name(store: es.EventStore, model_id: str, known: dict[str, str | None]) -> str | None:
    """The name a model was created under (its stream's first event), looked up once a tick."""
    if model_id not in known:
        first = store.read_stream(model_id, 1, 1)
        known[model_id] = first[0].payload.get("model_name") if first else None
    return known[model_id]


def quality_sensor(
    job: Any,
    policy: QualityPolicy | None = None,
    name: str = "retrain_on_quality_drop",
    model_names: Collection[str] | None = None,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    """Launches `job` when a model's rolling accuracy in inference_feedback falls below the
    policy's threshold (with `model_names`, only for those models and models the store has
    no record of).

    Its cursor is JSON: the last position read, each model's last `window` outcomes (1 =
    correct) and the models that already triggered; it stays small however long the log.
    """
    policy = policy or QualityPolicy()
    names = set(model_names) if model_names is not None else None

    @dg.sensor(
        name=name,
        jobs=[job],
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"rolling accuracy over the last {policy.window} inference_feedback events "
        f"of a model below {policy.threshold:g} (with >= {policy.min_feedback} known) -> retrain",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, event_store: EventStoreResource
    ) -> dg.SensorResult:
        state = _quality_state(context.cursor, name)
        page = read_page(
            event_store.store, state["position"], [EventTypes.INFERENCE_FEEDBACK]
        )
        windows: dict[str, list[int]] = state["windows"]
        fired: list[str] = state["fired"]
        known: dict[str, str | None] = {}
        requests = []
        for event in page.events:
            correct = event.payload.get("correct")
            model_id = event.payload.get("model_id")
            if correct is None or not model_id:
                continue  # not a labelled judgement of a known model
            if names is not None:
                created_as = _model_name(event_store.store, model_id, known)
                if created_as is not None and created_as not in names:
                    continue  # another model's (a model this store never created counts)
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
                    cause_run_request(
                        event,
                        job_name=job.name,
                        tags={
                            "mlevents/model_id": model_id,
                            "mlevents/rolling_accuracy": f"{accuracy:.4f}",
                        },
                    )
                )
                context.log.info(
                    f"model {model_id}: rolling accuracy {accuracy:.3f} over {len(window)} "
                    f"feedback events < {policy.threshold:g}; retraining"
                )
        new_state = {"position": page.cursor, "windows": windows, "fired": fired[-100:]}
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_state))

    return _sensor
