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

The service is the public face; each job lives in a module of its own: recording a run
(recording.py), keyed runs (keyed.py), replaying one (runs.py), model versions
(versioning.py) and re-running to verify (verification.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import ArtifactRef, TrainingVerified
from event_sourcing.events import RecordedEvent
from event_sourcing.training.errors import TrainingError
from event_sourcing.training.keyed import keyed_run, start_keyed
from event_sourcing.training.recording import (
    complete_run,
    completed_model,
    fail_run,
    record_step,
    started_event,
)
from event_sourcing.training.reproducibility import (
    DEFAULT_DIGITS,
    TrainFn,
    TrainingFunctionRegistry,
    default_training_functions,
)
from event_sourcing.training.runs import (
    MODEL_NAME_STREAM_PREFIX,
    MODEL_STREAM_TYPE,
    TRAINING_STREAM_TYPE,
    Run,
    TrainingOutcome,
    check_metrics,
    load_run,
    model_name_stream,
    replay,
)
from event_sourcing.training.verification import seed_globals, verify_run
from event_sourcing.training.versioning import register_model

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


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        idempotency_key: str | None = None,
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

        `idempotency_key` (e.g. an orchestrator's run + step) makes a retry find its run
        instead of starting another: the run an earlier call with this key left open is
        resumed (its id returned, nothing written) when its recorded inputs are the same,
        else closed with training_failed before a new one starts; a completed one is
        returned as it is (see `keyed_run`). Ids of keyed runs derive from the key.
        """
        if idempotency_key is not None and training_id is not None:
            raise TrainingError("pass training_id or idempotency_key, not both")
        event = started_event(
            self, config, dataset_version, dataset_id=dataset_id, dataset_uri=dataset_uri,
            feature_version=feature_version, hyperparameters=hyperparameters, seed=seed,
            train_fn=train_fn, model_name=model_name, user_id=user_id,
        )
        if idempotency_key is not None:
            return start_keyed(self, idempotency_key, event, correlation_id, metadata)
        training_id = str(training_id or uuid.uuid4())
        self.store.append(
            training_id,
            [event],
            expected_version=0,
            stream_type=TRAINING_STREAM_TYPE,
            correlation_id=correlation_id or training_id,
            metadata=metadata,
        )
        return training_id

    def keyed_run(self, idempotency_key: str) -> str | None:
        """The run a `start_training(idempotency_key=...)` left open or completed, or None.

        Runs of one key are numbered; the failed ones are history, the next one is current.
        """
        return keyed_run(self.store, idempotency_key)

    def record_training_step(
        self,
        training_id: str,
        step_data: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> RecordedEvent:
        """Append training_progress. `step_data` keys: step (required), metrics, loss,
        learning_rate, timestamp, and resources (or gpu_memory / cpu_usage). `metadata` goes
        on the event's envelope.

        A step number is recorded once per run: recording it again (a retried step) returns
        the event recorded first and writes nothing, even after the run has ended.
        """
        return record_step(self, training_id, step_data, metadata)

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
        return complete_run(
            self, training_id, model, metrics, X_eval=X_eval, model_name=model_name,
            model_id=model_id, metadata=metadata,
        )

    def completed_model(
        self, training_id: str, *, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        """The model id of a completed run (None if it has not completed), first finishing
        its model registration if the attempt that completed it was interrupted.

        What a retried step calls when `start_training(idempotency_key=...)` handed it a run
        an earlier attempt already completed.
        """
        return completed_model(self, training_id, metadata)

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
        return fail_run(self, training_id, error, step=step, metadata=metadata)

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
            seed_globals(seed)
            model = train_fn(snapshot, dict(params), seed)
            metrics = check_metrics(evaluate(model) if evaluate is not None else {})
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
            if load_run(self.store, training_id).status == "running":
                self.fail_training(training_id, exc, metadata=metadata)
            raise
        run = load_run(self.store, training_id)
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
        return replay(self.store, training_id)

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
        return verify_run(self, training_id, train_fn, metadata=metadata)

    # -- internals ------------------------------------------------------------------------

    def _register_model(
        self, completed_event: RecordedEvent, run: Run, metadata: Mapping[str, Any] | None = None
    ) -> None:
        register_model(self.store, completed_event, run, metadata)
