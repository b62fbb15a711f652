"""TrainingService: records training runs as events, replays them, and re-runs them to verify.

It owns the training_run streams and the model-name streams that hand out model versions.

Streams written here:

- ``<training_id>`` (stream_type ``training_run``): training_started, training_progress...,
  then training_completed or training_failed, then any training_verified verdicts. Every
  event of a run shares one correlation id (the training id unless one is given).
- ``<model_id>`` (stream_type ``model``): model_created, caused by training_completed.
- ``model-name:<name>`` (stream_type ``model_name``): one model_versioned per version of that
  name, so version n is the stream's n-th event and an optimistic append hands out numbers
  without gaps or duplicates.

training_started names the run's training function (``training_function``); training_completed
carries ``model_name``, ``eval_set`` (ArtifactRef of the evaluation inputs),
``fingerprint_components`` and ``fingerprint_digits``, which model registration and
verification read. The user's ``config`` is recorded as given.
"""

from __future__ import annotations

import random
import traceback as traceback_module
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from event_sourcing.artifacts import (
    URI_PREFIX,
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactStore,
    artifact_uri,
    parse_artifact_id,
    read_canonical_table,
    sha256_hex,
)
from event_sourcing.catalog import (
    ArtifactRef,
    EventTypes,
    ModelCreated,
    ModelVersioned,
    Resources,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingStarted,
    TrainingVerified,
)
from event_sourcing.errors import ConcurrencyError
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.training.errors import (
    TrainingError,
    TrainingFunctionNotFoundError,
    TrainingNotFoundError,
    TrainingStateError,
)
from event_sourcing.training.reproducibility import (
    DEFAULT_DIGITS,
    TrainFn,
    TrainingFunctionRegistry,
    capture_environment,
    code_version,
    default_training_functions,
    fingerprint_components,
    fingerprint_of,
)

if TYPE_CHECKING:
    from event_sourcing.stores import EventStore

__all__ = [
    "MODEL_NAME_STREAM_PREFIX",
    "MODEL_STREAM_TYPE",
    "TRAINING_STREAM_TYPE",
    "TrainingOutcome",
    "TrainingService",
    "model_name_stream",
]

TRAINING_STREAM_TYPE = "training_run"
MODEL_STREAM_TYPE = "model"
MODEL_NAME_STREAM_TYPE = "model_name"
MODEL_NAME_STREAM_PREFIX = "model-name:"

_TERMINAL = frozenset(
    {EventTypes.TRAINING_COMPLETED, EventTypes.TRAINING_FAILED, EventTypes.TRAINING_VERIFIED}
)
_STEP_KEYS = frozenset(
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
_APPEND_ATTEMPTS = 5
# Fixed namespace for deterministic ids of model events, so a retried complete_training
# finds (instead of duplicating) what an interrupted one already wrote.
_ID_NAMESPACE = uuid.UUID("6f1d4c1e-8a57-4f6e-9a49-6d6c6576656e")


def model_name_stream(model_name: str) -> str:
    """The stream that holds the model_versioned events of `model_name`."""
    return MODEL_NAME_STREAM_PREFIX + model_name


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TrainingOutcome:
    """What `TrainingService.train` produced."""

    training_id: str
    model_id: str
    model: Any
    metrics: dict[str, float]
    fingerprint: str


@dataclass
class _Run:
    """A training run folded from its stream."""

    training_id: str
    events: list[RecordedEvent]
    started: TrainingStarted
    started_event: RecordedEvent
    steps: list[RecordedEvent] = field(default_factory=list)
    completed: TrainingCompleted | None = None
    completed_event: RecordedEvent | None = None
    failed: TrainingFailed | None = None
    verifications: list[TrainingVerified] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.events[-1].version

    @property
    def correlation_id(self) -> str:
        return self.started_event.correlation_id or self.training_id

    @property
    def status(self) -> str:
        if self.completed is not None:
            return "completed"
        return "failed" if self.failed is not None else "running"


class TrainingService:
    """Records, replays and verifies training runs on an event store.

    `artifacts` holds dataset snapshots, evaluation sets and models. `functions` is the
    registry training functions are looked up in (the process-wide one by default). `clock`
    stamps the times inside payloads (default: the store's clock, else UTC now).
    """

    def __init__(
        self,
        store: EventStore,
        artifacts: ArtifactStore | None = None,
        *,
        functions: TrainingFunctionRegistry | None = None,
        clock: Callable[[], datetime] | None = None,
        fingerprint_digits: int = DEFAULT_DIGITS,
    ) -> None:
        self.store = store
        self.artifacts = artifacts if artifacts is not None else ArtifactStore()
        self.functions = functions if functions is not None else default_training_functions
        self.clock: Callable[[], datetime] = clock or getattr(store, "clock", None) or _utc_now
        self.fingerprint_digits = fingerprint_digits

    # -- recording ------------------------------------------------------------------------

    def start_training(
        self,
        config: Mapping[str, Any],
        dataset_version: str | ArtifactRef,
        *,
        dataset_id: str | None = None,
        dataset_uri: str | None = None,
        feature_version: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        seed: int | None = None,
        train_fn: TrainFn | str | None = None,
        model_name: str | None = None,
        user_id: str | None = None,
        correlation_id: str | None = None,
        training_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Record training_started with everything a re-run needs; return the training id.

        `dataset_version` is the sha256 of the dataset's canonical bytes (what
        `ArtifactStore.put_table(df)` returns as `.sha256`), or that ArtifactRef itself.
        `hyperparameters` and `seed` default to ``config["hyperparameters"]`` and
        ``config["seed"]``. `train_fn` (registered if it is not) is recorded by name in
        ``training_function`` so `verify_reproducibility` can find it, and its source hash
        goes into the code version. A registered name may be given instead of the function;
        a name this process cannot resolve is recorded as is (verification reports it
        missing). `config` is recorded as given. `metadata` (e.g. the orchestrator's run ids)
        goes on the event's envelope, as it does for every append of the service's methods.

        Train on the snapshot (``artifacts.get_table(ref)``), not on the frame you took it
        from: verification re-runs on the snapshot, and equal numbers in another memory
        layout can move a model's last bits. `train` does all of this for you.
        """
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
                fn = self.functions.get(train_fn)
            except TrainingFunctionNotFoundError:
                fn = None  # recorded by name only; verification will say it is missing
        elif train_fn is not None:
            function_name = self.functions.name_of(train_fn)
            fn = train_fn
        if dataset_uri is None and self.artifacts.exists(version):
            dataset_uri = artifact_uri(version)
        training_id = str(training_id or uuid.uuid4())
        event = TrainingStarted(
            config=run_config,
            dataset_id=dataset_id or str(run_config.get("dataset_id") or "dataset"),
            dataset_version=version,
            dataset_uri=dataset_uri,
            feature_version=feature_version,
            code_version=code_version(fn),
            hyperparameters=dict(hyperparameters),
            seed=seed,
            environment=capture_environment(),
            started_at=self.clock(),
            user_id=user_id,
            model_name=model_name or _optional_str(run_config.get("model_name")),
            training_function=function_name,
        )
        self.store.append(
            training_id,
            [event],
            expected_version=0,
            stream_type=TRAINING_STREAM_TYPE,
            correlation_id=correlation_id or training_id,
            metadata=metadata,
        )
        return training_id

    def record_training_step(
        self,
        training_id: str,
        step_data: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> RecordedEvent:
        """Append training_progress. `step_data` keys: step (required), metrics, loss,
        learning_rate, timestamp, and resources (or gpu_memory / cpu_usage). `metadata` goes
        on the event's envelope."""
        unknown = set(step_data) - _STEP_KEYS
        if unknown:
            raise TrainingError(
                f"unknown step_data keys {sorted(unknown)}; allowed: {sorted(_STEP_KEYS)}. "
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
            metrics=_metrics(step_data.get("metrics") or {}),
            loss=_optional_float(step_data.get("loss")),
            learning_rate=_optional_float(step_data.get("learning_rate")),
            timestamp=step_data.get("timestamp") or self.clock(),
            resources=resources,
        )
        for _attempt in range(_APPEND_ATTEMPTS):
            version, last, first = self._ends(training_id)
            if last.event_type in _TERMINAL:
                raise TrainingStateError(
                    f"training run {training_id} has ended ({last.event_type}); steps can only "
                    "be recorded while it runs. Start a new run"
                )
            try:
                return self.store.append(
                    training_id,
                    [event],
                    expected_version=version,
                    stream_type=TRAINING_STREAM_TYPE,
                    correlation_id=first.correlation_id or training_id,
                    causation_id=first.id,
                    metadata=metadata,
                )[0]
            except ConcurrencyError:
                continue  # another writer stepped the run; re-check it is still running
        raise TrainingError(
            f"training run {training_id} kept changing while recording a step; retry"
        )

    def complete_training(
        self,
        training_id: str,
        model: Any,
        metrics: Mapping[str, Any],
        *,
        X_eval: Any = None,
        model_name: str | None = None,
        model_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store the model, append training_completed, model_created and model_versioned.

        `X_eval` (evaluation inputs) is stored as an artifact and the model's fingerprint is
        computed on it, which verification repeats; without it the fingerprint covers only
        parameters and learned state. The model name defaults to the one given at start,
        then ``config["model_name"]``, then ``"model"``. Returns the new model id.
        `metadata` goes on the envelope of each of the three events.

        If an earlier call recorded training_completed but was interrupted before the model
        events, calling again finishes them and returns the recorded model id.
        """
        run = self._load(training_id)
        if run.completed is not None and run.completed_event is not None:
            if self._model_registered(run):
                raise TrainingStateError(
                    f"training run {training_id} is already completed (model "
                    f"{run.completed.model_id}); start a new run to train again"
                )
            self._register_model(run.completed_event, run, metadata)
            return run.completed.model_id
        if run.failed is not None:
            raise TrainingStateError(
                f"training run {training_id} failed ({run.failed.error}); start a new run"
            )
        final_metrics = _metrics(metrics)
        model_ref = self.artifacts.put_model(model)
        digits = self.fingerprint_digits
        eval_ref = self.artifacts.put_table(X_eval) if X_eval is not None else None
        # Fingerprint on the stored evaluation set, read back, exactly as verification will.
        eval_set = self.artifacts.get_table(eval_ref) if eval_ref is not None else None
        components = fingerprint_components(model, eval_set, digits=digits)
        name = (
            model_name
            or run.started.model_name
            or _optional_str(run.started.config.get("model_name"))
            or "model"
        )
        completed_at = self.clock()
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
            recorded = self.store.append(
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
        self._register_model(recorded, run, metadata)
        return event.model_id

    def fail_training(
        self,
        training_id: str,
        error: BaseException | str,
        *,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RecordedEvent:
        """Append training_failed with the error message, type and traceback; `metadata` goes
        on the event's envelope."""
        run = self._load(training_id)
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
            failed_at=self.clock(),
            step=step,
        )
        try:
            return self.store.append(
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

    def train(
        self,
        train_fn: TrainFn,
        dataset: Any,
        *,
        hyperparameters: Mapping[str, Any] | None = None,
        seed: int | None = None,
        X_eval: Any = None,
        evaluate: Callable[[Any], Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        dataset_id: str = "dataset",
        feature_version: str | None = None,
        model_name: str | None = None,
        user_id: str | None = None,
        correlation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TrainingOutcome:
        """Snapshot `dataset`, start a run, call ``train_fn(dataset, hyperparameters, seed)``,
        and complete the run (or fail it, re-raising the error).

        `evaluate(model)` returns the final metrics. The function receives the dataset as
        read back from its snapshot, exactly what `verify_reproducibility` will give it.
        `metadata` goes on the envelope of every event the run appends.
        """
        dataset_ref = self.artifacts.put_table(dataset)
        params = dict(hyperparameters or {})
        training_id = self.start_training(
            dict(config or {}),
            dataset_ref,
            dataset_id=dataset_id,
            feature_version=feature_version,
            hyperparameters=params,
            seed=seed,
            train_fn=train_fn,
            model_name=model_name,
            user_id=user_id,
            correlation_id=correlation_id,
            metadata=metadata,
        )
        try:
            snapshot = self.artifacts.get_table(dataset_ref)
            _seed_globals(seed)
            model = train_fn(snapshot, dict(params), seed)
            metrics = _metrics(evaluate(model) if evaluate is not None else {})
        except Exception as exc:
            self.fail_training(training_id, exc, metadata=metadata)
            raise
        try:
            model_id = self.complete_training(
                training_id,
                model,
                metrics,
                X_eval=X_eval,
                model_name=model_name,
                metadata=metadata,
            )
        except Exception as exc:
            # e.g. an unpicklable model or an X_eval the model rejects: do not leave the run
            # "running" forever. A run that did complete is left as it is.
            if self._load(training_id).status == "running":
                self.fail_training(training_id, exc, metadata=metadata)
            raise
        run = self._load(training_id)
        assert run.completed is not None and run.completed.model_fingerprint is not None
        return TrainingOutcome(
            training_id, model_id, model, metrics, run.completed.model_fingerprint
        )

    # -- reading --------------------------------------------------------------------------

    def replay_training(self, training_id: str) -> dict[str, Any]:
        """The run's state rebuilt from its events alone.

        Keys ``config``, ``dataset_id``, ``steps`` (the training_progress payloads) and
        ``final_metrics`` (None until completed) as in the seed; plus ``training_id``,
        ``status``, ``dataset_version``, ``dataset_uri``, ``feature_version``,
        ``hyperparameters``, ``seed``, ``training_function``, ``code_version``,
        ``environment``, ``model_id``, ``model_name``, ``model_fingerprint``, ``error`` and
        ``verifications``.
        """
        run = self._load(training_id)
        started = run.started
        return {
            "config": started.config,
            "dataset_id": started.dataset_id,
            "steps": [dict(event.payload) for event in run.steps],
            "final_metrics": run.completed.final_metrics if run.completed else None,
            "training_id": training_id,
            "status": run.status,
            "dataset_version": started.dataset_version,
            "dataset_uri": started.dataset_uri,
            "feature_version": started.feature_version,
            "hyperparameters": started.hyperparameters,
            "seed": started.seed,
            "training_function": started.training_function,
            "code_version": (
                started.code_version.model_dump(mode="json") if started.code_version else None
            ),
            "environment": (
                started.environment.model_dump(mode="json") if started.environment else None
            ),
            "model_id": run.completed.model_id if run.completed else None,
            "model_name": run.completed.model_name if run.completed else started.model_name,
            "model_fingerprint": run.completed.model_fingerprint if run.completed else None,
            "error": run.failed.error if run.failed else None,
            "verifications": [v.model_dump(mode="json") for v in run.verifications],
        }

    # -- verification ---------------------------------------------------------------------

    def verify_reproducibility(
        self,
        training_id: str,
        train_fn: TrainFn | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> TrainingVerified:
        """Re-run a completed run from its recorded inputs and append the verdict.

        Loads the recorded dataset and evaluation set (hash-checked), re-runs the training
        function with the recorded hyper-parameters and seed, and compares the new model's
        fingerprint with the recorded one. `differences` names each input that differs
        (``dataset``, ``evaluation set``, ``code``, ``environment``, ``hyperparameters``,
        ``seed``) and, on mismatch, which part of the model differs. The verdict is appended
        to the run's stream as training_verified (with `metadata` on its envelope) and
        returned.
        """
        run = self._load(training_id)
        completed, completed_event = run.completed, run.completed_event
        if completed is None or completed_event is None:
            raise TrainingStateError(
                f"training run {training_id} is {run.status}; only completed runs can be verified"
            )
        expected = completed.model_fingerprint
        if not expected:
            raise TrainingStateError(
                f"training run {training_id} recorded no model fingerprint, so there is "
                "nothing to compare a re-run with; complete runs with TrainingService"
            )
        started = run.started
        differences: list[str] = []
        blocked = False  # an input is missing or corrupt: the re-run cannot happen

        dataset = self._load_dataset(started, differences)
        blocked |= dataset is None
        eval_set, eval_ok = self._load_eval_set(completed, differences)
        blocked |= not eval_ok

        fn = train_fn
        function_name = started.training_function
        if fn is None:
            if function_name is None:
                differences.append(
                    "code: the run recorded no training function; pass train_fn= to verify it"
                )
                blocked = True
            else:
                try:
                    fn = self.functions.get(function_name)
                except TrainingFunctionNotFoundError as exc:
                    differences.append(f"code: {exc}")
                    blocked = True
        if fn is not None:
            differences.extend(_code_differences(started, fn))
        differences.extend(_environment_differences(started))
        if started.seed is None:
            differences.append(
                "seed: the run recorded no seed; it reproduces only if training is "
                "deterministic without one"
            )

        actual: str | None = None
        if not blocked and fn is not None:
            try:
                _seed_globals(started.seed)
                model = fn(dataset, dict(started.hyperparameters), started.seed)
                digits = (
                    completed.fingerprint_digits
                    if completed.fingerprint_digits is not None
                    else DEFAULT_DIGITS
                )
                components = fingerprint_components(model, eval_set, digits=digits)
                actual = fingerprint_of(components)
            except Exception as exc:  # the verdict records any re-run failure
                differences.append(
                    f"code: re-running the training function raised {type(exc).__name__}: {exc}"
                )
            else:
                if actual != expected:
                    differences.extend(
                        _model_differences(completed.fingerprint_components, components)
                    )

        verdict = TrainingVerified(
            training_id=training_id,
            reproducible=actual is not None and actual == expected,
            expected_fingerprint=expected,
            actual_fingerprint=actual,
            differences=differences,
            verified_at=self.clock(),
        )
        self.store.append(
            training_id,
            [verdict],
            stream_type=TRAINING_STREAM_TYPE,
            correlation_id=run.correlation_id,
            causation_id=completed_event.id,
            metadata=metadata,
        )
        return verdict

    # -- internals ------------------------------------------------------------------------

    def _ends(self, training_id: str) -> tuple[int, RecordedEvent, RecordedEvent]:
        """(version, last event, first event) of a run, without reading the whole stream."""
        version = self.store.stream_version(training_id)
        if version == 0:
            raise self._not_found(training_id)
        first = self.store.read_stream(training_id, 1, 1)[0]
        if first.event_type != EventTypes.TRAINING_STARTED:
            raise self._not_found(training_id)
        last = first if version == 1 else self.store.read_stream(training_id, version, version)[0]
        return version, last, first

    @staticmethod
    def _not_found(training_id: str) -> TrainingNotFoundError:
        return TrainingNotFoundError(
            f"no training run {training_id!r}: its stream has no training_started event. "
            "Check the id (start_training returns it)"
        )

    def _load(self, training_id: str) -> _Run:
        events = self.store.read_stream(str(training_id))
        if not events or events[0].event_type != EventTypes.TRAINING_STARTED:
            raise self._not_found(training_id)
        run = _Run(
            training_id=str(training_id),
            events=events,
            started=TrainingStarted.model_validate(events[0].payload),
            started_event=events[0],
        )
        for event in events[1:]:
            if event.event_type == EventTypes.TRAINING_PROGRESS:
                run.steps.append(event)
            elif event.event_type == EventTypes.TRAINING_COMPLETED:
                run.completed = TrainingCompleted.model_validate(event.payload)
                run.completed_event = event
            elif event.event_type == EventTypes.TRAINING_FAILED:
                run.failed = TrainingFailed.model_validate(event.payload)
            elif event.event_type == EventTypes.TRAINING_VERIFIED:
                run.verifications.append(TrainingVerified.model_validate(event.payload))
        return run

    @staticmethod
    def _model_event_ids(model_id: str) -> tuple[str, str]:
        return (
            str(uuid.uuid5(_ID_NAMESPACE, f"{model_id}/model_created")),
            str(uuid.uuid5(_ID_NAMESPACE, f"{model_id}/model_versioned")),
        )

    def _model_registered(self, run: _Run) -> bool:
        assert run.completed is not None
        created_id, versioned_id = self._model_event_ids(run.completed.model_id)
        return (
            self.store.get_event(created_id) is not None
            and self.store.get_event(versioned_id) is not None
        )

    def _register_model(
        self,
        completed_event: RecordedEvent,
        run: _Run,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Append model_created and model_versioned for a training_completed (idempotent)."""
        completed = TrainingCompleted.model_validate(completed_event.payload)
        name = completed.model_name or "model"
        created_id, versioned_id = self._model_event_ids(completed.model_id)
        created = ModelCreated(
            model_id=completed.model_id,
            training_id=run.training_id,
            model_name=name,
            artifact=completed.model_artifact,
            metrics=completed.final_metrics,
            fingerprint=completed.model_fingerprint,
        )
        # Deterministic ids make the append a no-op when an earlier attempt got this far.
        created_event = self.store.append(
            completed.model_id,
            [NewEvent(EventTypes.MODEL_CREATED, created.model_dump(mode="json"), id=created_id)],
            stream_type=MODEL_STREAM_TYPE,
            correlation_id=run.correlation_id,
            causation_id=completed_event.id,
            metadata=metadata,
        )[0]
        stream = model_name_stream(name)
        for _attempt in range(_APPEND_ATTEMPTS):
            if self.store.get_event(versioned_id) is not None:
                return
            current = self.store.stream_version(stream)
            versioned = ModelVersioned(
                model_id=completed.model_id,
                model_name=name,
                version=current + 1,
                training_id=run.training_id,
                artifact=completed.model_artifact,
                metrics=completed.final_metrics,
            )
            try:
                self.store.append(
                    stream,
                    [
                        NewEvent(
                            EventTypes.MODEL_VERSIONED,
                            versioned.model_dump(mode="json"),
                            id=versioned_id,
                        )
                    ],
                    expected_version=current,
                    stream_type=MODEL_NAME_STREAM_TYPE,
                    correlation_id=run.correlation_id,
                    causation_id=created_event.id,
                    metadata=metadata,
                )
                return
            except ConcurrencyError:
                continue  # another run took that version number; take the next one
        raise TrainingError(
            f"could not allocate a version of model {name!r} after {_APPEND_ATTEMPTS} "
            f"attempts (heavy contention); call complete_training({run.training_id!r}, ...) "
            "again to finish registering the model"
        )

    def _load_dataset(self, started: TrainingStarted, differences: list[str]) -> Any | None:
        uri = started.dataset_uri or artifact_uri(started.dataset_version)
        if not uri.startswith(URI_PREFIX):
            differences.append(
                f"dataset: recorded at {uri}, outside the artifact store, so its content cannot "
                f"be checked against dataset_version {started.dataset_version}; snapshot "
                "datasets with ArtifactStore.put_table"
            )
            return None
        try:
            data = self.artifacts.get_bytes(uri)
        except ArtifactIntegrityError as exc:
            differences.append(
                f"dataset: the dataset artifact {uri} (dataset {started.dataset_id!r}, version "
                f"{started.dataset_version}) changed since the run: its bytes now hash to "
                f"{exc.actual}. The recorded dataset is gone; restore it to re-run"
            )
            return None
        except ArtifactNotFoundError:
            differences.append(
                f"dataset: the dataset artifact {uri} (dataset {started.dataset_id!r}) is not "
                f"in the artifact store at {self.artifacts.root}"
            )
            return None
        if sha256_hex(data) != started.dataset_version:
            differences.append(
                f"dataset: the artifact {uri} holds sha256 {sha256_hex(data)} but the run "
                f"recorded dataset_version {started.dataset_version}"
            )
            return None
        try:
            return read_canonical_table(data)
        except ArtifactError as exc:
            differences.append(f"dataset: the dataset artifact {uri} cannot be read: {exc}")
            return None

    def _load_eval_set(
        self, completed: TrainingCompleted, differences: list[str]
    ) -> tuple[Any, bool]:
        ref = completed.eval_set
        if ref is None:
            return None, True  # the fingerprint covered parameters only
        try:
            return self.artifacts.get_table(ref), True
        except ArtifactIntegrityError as exc:
            differences.append(
                f"evaluation set: the artifact {ref.uri} changed since the run: its bytes now "
                f"hash to {exc.actual}"
            )
        except ArtifactError as exc:
            differences.append(f"evaluation set: {exc}")
        return None, False


# -- helpers --------------------------------------------------------------------------------------


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TrainingError(f"metrics must be a mapping of name -> number, got {metrics!r}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TrainingError(
                f"metric {key!r} is {value!r}, not a number; metrics map names to numbers"
            ) from None
        if not np.isfinite(number):
            raise TrainingError(
                f"metric {key!r} is {number}; JSON has no NaN/inf, so record it as a "
                "finite number or leave it out"
            )
        out[str(key)] = number
    return out


def _seed_globals(seed: int | None) -> None:
    # For training code that (wrongly) relies on global RNGs; explicit seeding still wins.
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed % 2**32)


def _code_differences(started: TrainingStarted, fn: TrainFn) -> list[str]:
    recorded = started.code_version
    current = code_version(fn)
    out: list[str] = []
    if recorded is None:
        return ["code: the run recorded no code version"]
    if recorded.source_sha256 != current.source_sha256:
        out.append(
            f"code: the training function's source sha256 was {recorded.source_sha256}, now "
            f"{current.source_sha256} (the function changed since the run)"
        )
    if recorded.git_commit and current.git_commit and recorded.git_commit != current.git_commit:
        out.append(f"code: git commit was {recorded.git_commit}, now {current.git_commit}")
    if recorded.package_version != current.package_version:
        out.append(
            f"code: mlevents version was {recorded.package_version}, now {current.package_version}"
        )
    return out


def _environment_differences(started: TrainingStarted) -> list[str]:
    recorded = started.environment
    if recorded is None:
        return ["environment: the run recorded no environment"]
    current = capture_environment(extra_packages=recorded.packages)
    out: list[str] = []
    if recorded.python != current.python:
        out.append(f"environment: python was {recorded.python}, now {current.python}")
    for name in sorted(set(recorded.packages) | set(current.packages)):
        was, now = recorded.packages.get(name), current.packages.get(name)
        if was != now:
            out.append(
                f"environment: {name} was {was or 'not installed'}, now {now or 'not installed'}"
            )
    return out


_PART_NAMES = {
    "params": "hyperparameters: the re-run estimator's parameters (get_params) differ from the "
    "recorded model's, so the recorded hyper-parameters do not rebuild the same estimator",
    "learned": "model: learned parameters (coefficients, importances, tree nodes) differ",
    "predictions": "model: predictions on the recorded evaluation set differ",
    "probabilities": "model: predicted probabilities on the recorded evaluation set differ",
}


def _model_differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    if not recorded:
        return ["model: the fingerprint differs (the run recorded no per-part fingerprints)"]
    out = []
    for part in sorted(set(recorded) | set(current)):
        if recorded.get(part) != current.get(part):
            out.append(_PART_NAMES.get(part, f"model: fingerprint part {part!r} differs"))
    return out or ["model: the fingerprint differs"]
