"""Recording a training run: the events `TrainingService` appends to a run's stream.

training_started (with everything a re-run needs), training_progress once per step number,
then training_completed (and the model's registration) or training_failed. Each function
takes the service for its store, artifact store, training-function registry and clock;
`TrainingService` documents the public behaviour.
"""

from __future__ import annotations

import traceback as traceback_module
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from event_sourcing.artifacts import ArtifactError, artifact_uri, parse_artifact_id
from event_sourcing.catalog import (
    ArtifactRef,
    Resources,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingStarted,
)
from event_sourcing.errors import ConcurrencyError
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.training.errors import (
    TrainingError,
    TrainingFunctionNotFoundError,
    TrainingStateError,
)
from event_sourcing.training.reproducibility import (
    TrainFn,
    capture_environment,
    code_version,
    fingerprint_components,
    fingerprint_of,
)
from event_sourcing.training.runs import (
    TERMINAL,
    TRAINING_STREAM_TYPE,
    check_metrics,
    derived_id,
    load_run,
    optional_float,
    optional_str,
    run_ends,
)
from event_sourcing.training.versioning import APPEND_ATTEMPTS, model_registered

if TYPE_CHECKING:
    from event_sourcing.training.service import TrainingService

__all__ = ["STEP_KEYS", "complete_run", "completed_model", "fail_run", "record_step",
           "started_event"]

STEP_KEYS = frozenset(
    {
        "step",
        "metrics",
        "loss",
        "learning_rate",
        "timestamp",
        "resources",
        "gpu_memory",
        "cpu_usage",
    }
)
"""The keys a step's `step_data` may have."""


def started_event(
    service: TrainingService,
    config: Mapping[str, Any],
    dataset_version: str | ArtifactRef,
    *,
    dataset_id: str | None,
    dataset_uri: str | None,
    feature_version: str | None,
    hyperparameters: Mapping[str, Any] | None,
    seed: int | None,
    train_fn: TrainFn | str | None,
    model_name: str | None,
    user_id: str | None,
) -> TrainingStarted:
    """The training_started a `start_training` call records (see there)."""
    if isinstance(dataset_version, ArtifactRef):
        dataset_uri = dataset_uri or dataset_version.uri
        dataset_version = dataset_version.sha256
    try:
        version = parse_artifact_id(dataset_version)
    except ArtifactError:
        raise TrainingError(
            f"dataset_version {dataset_version!r} is not a sha256 hex digest; snapshot the "
            "dataset with ArtifactStore.put_table(df) and pass the returned ref (or .sha256)"
        ) from None
    if not isinstance(config, Mapping):
        raise TrainingError(f"config must be a mapping, got {type(config).__name__}")
    run_config: dict[str, Any] = dict(config)
    if hyperparameters is None:
        hyperparameters = run_config.get("hyperparameters") or {}
    if seed is None and isinstance(run_config.get("seed"), int):
        seed = run_config["seed"]
    fn: TrainFn | None = None
    function_name: str | None = None
    if isinstance(train_fn, str):
        if not train_fn:
            raise TrainingError(
                "train_fn is an empty name; pass the training function or its registered name"
            )
        function_name = train_fn
        try:
            fn = service.functions.get(train_fn)
        except TrainingFunctionNotFoundError:
            fn = None  # recorded by name only; verification will say it is missing
    elif train_fn is not None:
        function_name = service.functions.name_of(train_fn)
        fn = train_fn
    if dataset_uri is None and service.artifacts.exists(version):
        dataset_uri = artifact_uri(version)
    return TrainingStarted(
        config=run_config,
        dataset_id=dataset_id or str(run_config.get("dataset_id") or "dataset"),
        dataset_version=version,
        dataset_uri=dataset_uri,
        feature_version=feature_version,
        code_version=code_version(fn),
        hyperparameters=dict(hyperparameters),
        seed=seed,
        environment=capture_environment(),
        started_at=service.clock(),
        user_id=user_id,
        model_name=model_name or optional_str(run_config.get("model_name")),
        training_function=function_name,
    )


def record_step(
    service: TrainingService,
    training_id: str,
    step_data: Mapping[str, Any],
    metadata: Mapping[str, Any] | None,
) -> RecordedEvent:
    """Append training_progress once per step number (see `record_training_step`)."""
    unknown = set(step_data) - STEP_KEYS
    if unknown:
        raise TrainingError(
            f"unknown step_data keys {sorted(unknown)}; allowed: {sorted(STEP_KEYS)}. "
            "Put other numbers in step_data['metrics']"
        )
    if "step" not in step_data:
        raise TrainingError("step_data needs a 'step' number (the step or epoch index)")
    resources = step_data.get("resources")
    if resources is None and (
        step_data.get("gpu_memory") is not None or step_data.get("cpu_usage") is not None
    ):
        resources = Resources(
            gpu_memory=step_data.get("gpu_memory"), cpu_usage=step_data.get("cpu_usage")
        )
    event = TrainingProgress(
        step=int(step_data["step"]),
        metrics=check_metrics(step_data.get("metrics") or {}),
        loss=optional_float(step_data.get("loss")),
        learning_rate=optional_float(step_data.get("learning_rate")),
        timestamp=step_data.get("timestamp") or service.clock(),
        resources=resources,
    )
    store = service.store
    step_id = derived_id(training_id, "step", str(event.step))
    for _attempt in range(APPEND_ATTEMPTS):
        version, last, first = run_ends(store, training_id)
        if last.event_type in TERMINAL:
            recorded = store.get_event(step_id)
            if recorded is not None and recorded.stream_id == training_id:
                return recorded
            raise TrainingStateError(
                f"training run {training_id} has ended ({last.event_type}); steps can only "
                "be recorded while it runs. Start a new run"
            )
        try:
            return store.append(
                training_id,
                [NewEvent.of(event, id=step_id)],
                expected_version=version,
                stream_type=TRAINING_STREAM_TYPE,
                correlation_id=first.correlation_id or training_id,
                causation_id=first.id,
                metadata=metadata,
                on_duplicate="return_existing",
            )[0]
        except ConcurrencyError:
            continue  # another writer stepped the run; re-check it is still running
    raise TrainingError(
        f"training run {training_id} kept changing while recording a step; retry"
    )


def complete_run(
    service: TrainingService,
    training_id: str,
    model: Any,
    metrics: Mapping[str, Any],
    *,
    X_eval: Any,
    model_name: str | None,
    model_id: str | None,
    metadata: Mapping[str, Any] | None,
) -> str:
    """Store the model, append training_completed and register the model; return its id
    (see `complete_training`)."""
    store = service.store
    run = load_run(store, training_id)
    if run.completed is not None and run.completed_event is not None:
        if model_registered(store, run.completed.model_id):
            raise TrainingStateError(
                f"training run {training_id} is already completed (model "
                f"{run.completed.model_id}); start a new run to train again"
            )
        service._register_model(run.completed_event, run, metadata)
        return run.completed.model_id
    if run.failed is not None:
        raise TrainingStateError(
            f"training run {training_id} failed ({run.failed.error}); start a new run"
        )
    final_metrics = check_metrics(metrics)
    artifacts = service.artifacts
    model_ref = artifacts.put_model(model)
    digits = service.fingerprint_digits
    eval_ref = artifacts.put_table(X_eval) if X_eval is not None else None
    # Fingerprint on the stored evaluation set, read back, exactly as verification will.
    eval_set = artifacts.get_table(eval_ref) if eval_ref is not None else None
    components = fingerprint_components(model, eval_set, digits=digits)
    name = (
        model_name
        or run.started.model_name
        or optional_str(run.started.config.get("model_name"))
        or "model"
    )
    completed_at = service.clock()
    started_at = run.started.started_at or run.started_event.created_at
    event = TrainingCompleted(
        model_id=str(model_id or uuid.uuid4()),
        model_artifact=model_ref,
        final_metrics=final_metrics,
        completed_at=completed_at,
        duration_seconds=max(0.0, (completed_at - started_at).total_seconds()),
        model_fingerprint=fingerprint_of(components),
        model_name=name,
        eval_set=eval_ref,
        fingerprint_components=components,
        fingerprint_digits=digits,
    )
    try:
        recorded = store.append(
            training_id,
            [event],
            expected_version=run.version,
            stream_type=TRAINING_STREAM_TYPE,
            correlation_id=run.correlation_id,
            causation_id=run.started_event.id,
            metadata=metadata,
        )[0]
    except ConcurrencyError:
        raise TrainingStateError(
            f"training run {training_id} changed while completing it (another process "
            "stepped, completed or failed it); replay it and decide again"
        ) from None
    service._register_model(recorded, run, metadata)
    return event.model_id


def completed_model(
    service: TrainingService, training_id: str, metadata: Mapping[str, Any] | None
) -> str | None:
    """The model id of a completed run, finishing an interrupted registration first."""
    run = load_run(service.store, training_id)
    if run.completed is None or run.completed_event is None:
        return None
    if not model_registered(service.store, run.completed.model_id):
        service._register_model(run.completed_event, run, metadata)
    return run.completed.model_id


def fail_run(
    service: TrainingService,
    training_id: str,
    error: BaseException | str,
    *,
    step: int | None,
    metadata: Mapping[str, Any] | None,
) -> RecordedEvent:
    """Append training_failed to a running run (see `fail_training`)."""
    run = load_run(service.store, training_id)
    if run.status != "running":
        raise TrainingStateError(
            f"training run {training_id} has already {run.status}; only a running run can fail"
        )
    if isinstance(error, BaseException):
        message = str(error) or type(error).__name__
        error_type: str | None = type(error).__name__
        trace = (
            "".join(traceback_module.format_exception(error))
            if error.__traceback__ is not None
            else None
        )
    else:
        message, error_type, trace = str(error) or "unknown error", None, None
    if step is None and run.steps:
        step = int(run.steps[-1].payload["step"])
    event = TrainingFailed(
        error=message,
        error_type=error_type,
        traceback=trace,
        failed_at=service.clock(),
        step=step,
    )
    try:
        return service.store.append(
            training_id,
            [event],
            expected_version=run.version,
            stream_type=TRAINING_STREAM_TYPE,
            correlation_id=run.correlation_id,
            causation_id=run.started_event.id,
            metadata=metadata,
        )[0]
    except ConcurrencyError:
        raise TrainingStateError(
            f"training run {training_id} changed while failing it; replay it and retry"
        ) from None
