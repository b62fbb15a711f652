"""Reproducibility verification: re-run a completed training run and compare the models.

The verdict (training_verified) names each input that differs and which part of the model.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from event_sourcing.artifacts import (
    URI_PREFIX,
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactStore,
    artifact_uri,
    read_canonical_table,
    sha256_hex,
)
from event_sourcing.catalog import TrainingCompleted, TrainingStarted, TrainingVerified
from event_sourcing.privacy.redaction import redaction_of
from event_sourcing.training.errors import TrainingFunctionNotFoundError, TrainingStateError
from event_sourcing.training.reproducibility import (
    DEFAULT_DIGITS,
    TrainFn,
    capture_environment,
    code_version,
    fingerprint_components,
    fingerprint_of,
)
from event_sourcing.training.runs import TRAINING_STREAM_TYPE, load_run

if TYPE_CHECKING:
    from event_sourcing.training.service import TrainingService

__all__ = ["seed_globals", "verify_run"]


def verify_run(
    service: TrainingService,
    training_id: str,
    train_fn: TrainFn | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> TrainingVerified:
    """Re-run a completed run and append the verdict (`TrainingService.verify_reproducibility`)."""
    run = load_run(service.store, training_id)
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

    erasure = redaction_of(service.store, started.dataset_version)
    if erasure is not None:
        # Not an input problem to fix: the data is gone on purpose, so is the re-run.
        differences.append(
            f"dataset erased by {erasure.payload['erasure_event_id']}: version "
            f"{started.dataset_version} held an erased subject's rows; it was redacted to "
            f"{erasure.payload['new_version']} (dataset_redacted {erasure.id}) and its bytes "
            "deleted, so this run cannot be re-run"
        )
        dataset, eval_set, blocked = None, None, True
    else:
        dataset = _load_dataset(service.artifacts, started, differences)
        blocked |= dataset is None
        eval_set, eval_ok = _load_eval_set(service.artifacts, completed, differences)
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
                fn = service.functions.get(function_name)
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
            seed_globals(started.seed)
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
        verified_at=service.clock(),
    )
    service.store.append(
        training_id,
        [verdict],
        stream_type=TRAINING_STREAM_TYPE,
        correlation_id=run.correlation_id,
        causation_id=completed_event.id,
        metadata=metadata,
    )
    return verdict


def _load_dataset(
    artifacts: ArtifactStore, started: TrainingStarted, differences: list[str]) -> Any | None:
    uri = started.dataset_uri or artifact_uri(started.dataset_version)
    if not uri.startswith(URI_PREFIX):
        differences.append(
            f"dataset: recorded at {uri}, outside the artifact store, so its content cannot "
            f"be checked against dataset_version {started.dataset_version}; snapshot "
            "datasets with ArtifactStore.put_table"
        )
        return None
    try:
        data = artifacts.get_bytes(uri)
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
            f"in the artifact store at {artifacts.root}"
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
    artifacts: ArtifactStore, completed: TrainingCompleted, differences: list[str]
) -> tuple[Any, bool]:
    ref = completed.eval_set
    if ref is None:
        return None, True  # the fingerprint covered parameters only
    try:
        return artifacts.get_table(ref), True
    except ArtifactIntegrityError as exc:
        differences.append(
            f"evaluation set: the artifact {ref.uri} changed since the run: its bytes now "
            f"hash to {exc.actual}"
        )
    except ArtifactError as exc:
        differences.append(f"evaluation set: {exc}")
    return None, False



def seed_globals(seed: int | None) -> None:
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
