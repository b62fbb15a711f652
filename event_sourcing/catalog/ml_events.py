"""The built-in AI/ML events (data, features, training, models, inference) and their parts.

Every event here is registered in `default_registry`; field docstrings are the documentation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, JsonValue, model_validator

from event_sourcing.catalog.registry import DomainEvent, default_registry
from event_sourcing.privacy.marking import Personal


class EventTypes:
    """The name of every built-in event type."""

    DATA_INGESTED = "data_ingested"
    DATA_PREPROCESSED = "data_preprocessed"
    DATA_VALIDATED = "data_validated"

    FEATURE_COMPUTED = "feature_computed"
    FEATURE_VALIDATED = "feature_validated"
    FEATURE_VERSIONED = "feature_versioned"

    TRAINING_STARTED = "training_started"
    TRAINING_PROGRESS = "training_progress"
    TRAINING_COMPLETED = "training_completed"
    TRAINING_FAILED = "training_failed"
    TRAINING_VERIFIED = "training_verified"

    MODEL_CREATED = "model_created"
    MODEL_VERSIONED = "model_versioned"
    MODEL_EVALUATED = "model_evaluated"
    MODEL_DEPLOYED = "model_deployed"
    MODEL_RETIRED = "model_retired"

    INFERENCE_REQUESTED = "inference_requested"
    INFERENCE_COMPLETED = "inference_completed"
    INFERENCE_FEEDBACK = "inference_feedback"

    INTEGRITY_SEALED = "integrity_sealed"
    INTEGRITY_TRIGGERS_RESTORED = "integrity_triggers_restored"
    ARCHIVE_CREATED = "archive_created"
    SUBJECT_ERASED = "subject_erased"
    DATASET_SUBJECTS_RECORDED = "dataset_subjects_recorded"
    DATASET_REDACTED = "dataset_redacted"


# -- field types ---------------------------------------------------------------------------------


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1)]
DEFAULT_ENVIRONMENT = "production"
"""The deployment environment events and reads mean when they name none."""
Count = Annotated[int, Field(ge=0)]
Version = Annotated[int, Field(ge=1)]
# Naive datetimes are rejected ("Input should have timezone info"); aware ones are stored as UTC.
Timestamp = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Metrics = dict[str, float]
JsonObject = dict[str, JsonValue]


class _Part(BaseModel):
    """Base of the value objects events embed: same rules as DomainEvent."""

    model_config = DomainEvent.model_config


class ArtifactRef(_Part):
    """A content-addressed file in the artifact store (dataset, model, large inputs)."""

    uri: Name
    """Where the bytes live: `artifact://sha256/<hex>` (event_sourcing.artifacts.ArtifactStore),
    or file:// / s3:// for external files."""
    sha256: Sha256
    """sha256 of the bytes; the identity of the artifact."""
    size_bytes: Count | None = None
    media_type: str | None = None
    """MIME type, e.g. application/x-parquet."""


class DatasetRef(_Part):
    """A dataset at one version, as training and provenance refer to it."""

    dataset_id: Name
    version: Sha256
    """Content hash of the dataset: same data, same version."""
    uri: str | None = None
    sha256: Sha256 | None = None
    """sha256 of the file at `uri`, if it is a single file."""
    rows: Count | None = None
    columns: list[str] | None = None


class CodeVersion(_Part):
    """The code that produced something."""

    package_version: Name
    git_commit: str | None = None
    source_sha256: Sha256 | None = None
    """sha256 over the source of the training/feature code actually run."""


class Environment(_Part):
    """The runtime a training run used; enough to rebuild it."""

    python: Name
    """Python version, e.g. 3.11.9."""
    platform: Name
    """e.g. Linux-6.8-x86_64."""
    packages: dict[str, str] = {}
    """Distribution name -> version of the libraries that influence the result."""


class QualityCheck(_Part):
    """One data or feature quality check."""

    name: Name
    passed: bool
    detail: str | None = None


class Resources(_Part):
    """Resource use at a training step."""

    gpu_memory: Annotated[float, Field(ge=0)] | None = None
    """GPU memory in use, MiB."""
    cpu_usage: Annotated[float, Field(ge=0)] | None = None
    """CPU use, percent of one core (can exceed 100)."""


# -- data ----------------------------------------------------------------------------------------


@default_registry.register
class DataIngested(DomainEvent):
    """Raw data landed: one version of a dataset was read from a source and stored."""

    event_type = EventTypes.DATA_INGESTED
    dataset_id: Name
    dataset_version: Sha256
    """Content hash of the dataset as stored."""
    source_uri: Name
    """Where the data came from."""
    rows: Count
    columns: list[str]
    content_sha256: Sha256
    """sha256 of the raw bytes read from the source."""
    artifact: ArtifactRef | None = None
    batch_id: str | None = None
    ingested_at: Timestamp | None = None


@default_registry.register
class DataPreprocessed(DomainEvent):
    """A dataset version was transformed into a new version."""

    event_type = EventTypes.DATA_PREPROCESSED
    dataset_id: Name
    input_version: Sha256
    output_version: Sha256
    steps: list[str]
    """The transformations applied, in order."""
    rows_in: Count
    rows_out: Count
    artifact: ArtifactRef | None = None


@default_registry.register
class DataValidated(DomainEvent):
    """Quality checks ran against a dataset version."""

    event_type = EventTypes.DATA_VALIDATED
    dataset_id: Name
    dataset_version: Sha256
    passed: bool
    checks: list[QualityCheck]
    rows: Count


# -- features ------------------------------------------------------------------------------------


@default_registry.register
class FeatureComputed(DomainEvent):
    """A feature set was computed from a dataset version."""

    event_type = EventTypes.FEATURE_COMPUTED
    feature_set: Name
    feature_version: Name
    dataset_version: Sha256
    features: list[str]
    rows: Count
    artifact: ArtifactRef | None = None


@default_registry.register
class FeatureValidated(DomainEvent):
    """Quality checks ran against a feature set version."""

    event_type = EventTypes.FEATURE_VALIDATED
    feature_set: Name
    feature_version: Name
    passed: bool
    checks: list[QualityCheck]


@default_registry.register
class FeatureVersioned(DomainEvent):
    """A feature set version was frozen: its data version and code are now fixed."""

    event_type = EventTypes.FEATURE_VERSIONED
    feature_set: Name
    feature_version: Name
    dataset_version: Sha256
    code_sha256: Sha256
    """sha256 of the feature code."""
    features: list[str]


# -- training ------------------------------------------------------------------------------------


@default_registry.register
class TrainingStarted(DomainEvent):
    """A training run began; records everything needed to re-run it."""

    event_type = EventTypes.TRAINING_STARTED
    config: JsonObject
    """The training configuration as given."""
    dataset_id: Name
    dataset_version: Sha256
    dataset_uri: str | None = None
    feature_version: str | None = None
    code_version: CodeVersion | None = None
    hyperparameters: JsonObject = {}
    seed: int | None = None
    """Random seed; required in practice for a reproducible run."""
    environment: Environment | None = None
    started_at: Timestamp | None = None
    user_id: Annotated[str | None, Personal()] = None
    """Who started the run. Personal: encrypted when the event names a data subject
    (metadata["subject_id"], e.g. this user id, to make it forgettable)."""
    model_name: str | None = None
    training_function: str | None = None
    """Registered name of the training function (e.g. `module:qualname`); re-runs look it up."""


@default_registry.register
class TrainingProgress(DomainEvent):
    """A training run reached a step (or epoch)."""

    event_type = EventTypes.TRAINING_PROGRESS
    step: Count
    metrics: Metrics = {}
    loss: float | None = None
    learning_rate: float | None = None
    timestamp: Timestamp | None = None
    resources: Resources | None = None


@default_registry.register
class TrainingCompleted(DomainEvent):
    """A training run produced a model."""

    event_type = EventTypes.TRAINING_COMPLETED
    model_id: Name
    model_artifact: ArtifactRef
    final_metrics: Metrics
    completed_at: Timestamp | None = None
    duration_seconds: Annotated[float, Field(ge=0)] | None = None
    model_fingerprint: str | None = None
    """Digest of the trained model's learned state; equal fingerprints mean equal models."""
    model_name: str | None = None
    """Name the model is registered (and versioned) under."""
    eval_set: ArtifactRef | None = None
    """The evaluation set the fingerprint's predictions were computed on; None if it had none."""
    fingerprint_components: dict[str, str] = {}
    """Per-part hashes (params, learned, predictions...) the fingerprint combines."""
    fingerprint_digits: int | None = None
    """Significant digits floats were rounded to before hashing; re-runs use the same."""


@default_registry.register
class TrainingFailed(DomainEvent):
    """A training run stopped with an error."""

    event_type = EventTypes.TRAINING_FAILED
    error: Name
    """The error message."""
    error_type: str | None = None
    """Exception class name."""
    traceback: str | None = None
    failed_at: Timestamp | None = None
    step: Count | None = None
    """The last step reached, if any."""


@default_registry.register
class TrainingVerified(DomainEvent):
    """Verdict of a reproducibility check: a recorded run was re-run and the models compared."""

    event_type = EventTypes.TRAINING_VERIFIED
    training_id: Name
    """The run that was checked."""
    reproducible: bool
    expected_fingerprint: Name
    """Fingerprint recorded by the original run."""
    actual_fingerprint: str | None = None
    """Fingerprint of the re-run's model; None if the re-run produced none."""
    differences: list[str] = []
    """What differed (fingerprint, metrics, environment...), human-readable."""
    rerun_id: str | None = None
    """The training id of the re-run, if it was recorded."""
    verified_at: Timestamp | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainingVerified:
        if self.reproducible and self.actual_fingerprint != self.expected_fingerprint:
            raise ValueError("reproducible is true but the fingerprints differ")
        return self


# -- models --------------------------------------------------------------------------------------


@default_registry.register
class ModelCreated(DomainEvent):
    """A trained model entered the model catalog."""

    event_type = EventTypes.MODEL_CREATED
    model_id: Name
    training_id: Name
    model_name: Name
    artifact: ArtifactRef
    metrics: Metrics = {}
    fingerprint: str | None = None


@default_registry.register
class ModelVersioned(DomainEvent):
    """A model was given a version number under its name."""

    event_type = EventTypes.MODEL_VERSIONED
    model_id: Name
    model_name: Name
    version: Version
    training_id: Name
    artifact: ArtifactRef
    metrics: Metrics = {}


@default_registry.register
class ModelEvaluated(DomainEvent):
    """A candidate model was compared with the serving champion on held-out data: the verdict.

    Recorded for every decision, promoted or not; the model_deployed that carries out a
    promotion names this event as its causation.
    """

    event_type = EventTypes.MODEL_EVALUATED
    model_id: Name
    """The candidate model."""
    model_name: Name
    version: Version
    """The candidate's version under `model_name`."""
    environment: Name = DEFAULT_ENVIRONMENT
    """Where the champion serves (and the candidate would be deployed)."""
    champion_model_id: str | None = None
    """The model serving in `environment` at evaluation time; None if nothing served."""
    dataset_version: Sha256
    """Version of the dataset whose held-out rows both models were scored on."""
    metrics: Metrics
    """The candidate's metrics on the held-out rows."""
    champion_metrics: Metrics | None = None
    """The champion's metrics on the same rows; None when there is no champion."""
    promoted: bool
    """The verdict: true if the candidate is to replace the champion (be deployed)."""
    reason: Name
    """Why, human-readable, e.g. `held-out accuracy 0.9412 < champion's 0.9521`."""
    evaluated_at: Timestamp | None = None

    @model_validator(mode="after")
    def _champion_named(self) -> ModelEvaluated:
        if self.champion_metrics is not None and self.champion_model_id is None:
            raise ValueError("champion_metrics is given but champion_model_id is not")
        return self


@default_registry.register
class ModelDeployed(DomainEvent):
    """A model version started serving in an environment."""

    event_type = EventTypes.MODEL_DEPLOYED
    model_id: Name
    model_name: Name
    version: Version
    environment: Name = DEFAULT_ENVIRONMENT
    deployed_at: Timestamp | None = None
    replaces_model_id: str | None = None
    """The model that served here before, if any."""
    reason: str | None = None


@default_registry.register
class ModelRetired(DomainEvent):
    """A model version stopped serving in an environment."""

    event_type = EventTypes.MODEL_RETIRED
    model_id: Name
    model_name: Name
    version: Version
    environment: Name = DEFAULT_ENVIRONMENT
    retired_at: Timestamp | None = None
    reason: str | None = None
    replaced_by_model_id: str | None = None


# -- inference -----------------------------------------------------------------------------------


@default_registry.register
class InferenceRequested(DomainEvent):
    """A prediction was asked of a model; small inputs inline, large ones by reference."""

    event_type = EventTypes.INFERENCE_REQUESTED
    model_id: Name
    model_version: Version
    inputs: Annotated[JsonObject | None, Personal()] = None
    """Feature values, inline (keep them small). Personal: encrypted when the event names a
    data subject (metadata["subject_id"])."""
    inputs_ref: ArtifactRef | None = None
    """Inputs stored in the artifact store, for large requests."""
    requested_at: Timestamp | None = None
    environment: Name | None = None
    """The environment whose deployment served the request (e.g. production); None if the
    model was called directly, outside any deployment."""

    @model_validator(mode="after")
    def _has_inputs(self) -> InferenceRequested:
        if self.inputs is None and self.inputs_ref is None:
            raise ValueError("give inputs or inputs_ref (or both)")
        return self


@default_registry.register
class InferenceCompleted(DomainEvent):
    """A model answered a prediction request."""

    event_type = EventTypes.INFERENCE_COMPLETED
    model_id: Name
    model_version: Version
    prediction: Annotated[JsonValue, Personal()]
    """Personal: encrypted when the event names a data subject (metadata["subject_id"])."""
    probabilities: Annotated[
        dict[str, Annotated[float, Field(ge=0, le=1)]] | None, Personal()
    ] = None
    """Class label -> probability (personal, like the prediction)."""
    latency_ms: Annotated[float, Field(ge=0)] | None = None


@default_registry.register
class InferenceFeedback(DomainEvent):
    """The true outcome of an earlier prediction became known."""

    event_type = EventTypes.INFERENCE_FEEDBACK
    inference_id: Name
    """The stream id of the inference being judged."""
    model_id: str | None = None
    model_version: Version | None = None
    actual: Annotated[JsonValue, Personal()]
    """The true value or label. Personal: encrypted when the event names a data subject
    (metadata["subject_id"])."""
    correct: bool | None = None


# -- integrity (docs/integrity.md) ---------------------------------------------------------------


@default_registry.register
class IntegritySealed(DomainEvent):
    """A seal: a Merkle root over the chain hashes of every settled position since the last."""

    event_type = EventTypes.INTEGRITY_SEALED
    from_position: Count
    """The previous seal's `to_position` (0 for the first seal); not included."""
    to_position: Count
    """The last position covered (included): the store's settled head when sealed."""
    count: Count
    """How many events the range holds (positions have gaps on PostgreSQL)."""
    root: Sha256
    """RFC 6962 Merkle tree hash of the range's leaves, in position order."""
    previous: Sha256
    """The previous seal's `chain` (64 zeros for the first seal)."""
    chain: Sha256
    """SHA-256(previous || from || to || count || root): links every seal to the one before."""


@default_registry.register
class ArchiveCreated(DomainEvent):
    """A range of sealed positions written to a Parquet file of the artifact store, before
    its partition was dropped (docs/archive.md)."""

    event_type = EventTypes.ARCHIVE_CREATED
    uri: Name
    """The file's artifact URI (artifact://sha256/<hex>)."""
    sha256: Sha256
    """The file's content address."""
    from_position: Count
    """The first position the file covers (included)."""
    to_position: Count
    """The last position the file covers (included)."""
    count: Count
    """How many events the file holds."""
    seal_roots: list[Sha256]
    """The Merkle roots of the seals whose ranges the file's events belong to."""
    file_bytes: Count
    """The file's size."""
    payload_bytes: Count
    """The canonical JSON of its events' payloads, together."""


@default_registry.register
class IntegrityTriggersRestored(DomainEvent):
    """Opening the store found its append-only triggers missing or disabled."""

    event_type = EventTypes.INTEGRITY_TRIGGERS_RESTORED
    problems: list[Name]
    """What was wrong, e.g. "trigger event_store_no_update was missing"."""
    restored: bool
    """Whether the triggers were recreated / re-enabled."""
    error: str | None = None
    """Why they could not be restored (e.g. the role does not own the table)."""
    head_position: Count
    """The settled head when it was noticed: edits may have happened up to here."""


# -- privacy -------------------------------------------------------------------------------------


@default_registry.register
class SubjectErased(DomainEvent):
    """A data subject was forgotten: their key was destroyed, so their personal values now
    read as erased. Holds no personal data: the subject is named by a keyed hash."""

    event_type = EventTypes.SUBJECT_ERASED
    subject_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """HMAC-SHA256 of the subject id under the store's secret (not reversible)."""
    reason: Name
    """Why, e.g. a request reference."""
    keys_destroyed: Count
    """Data keys deleted (0: the subject had no live key)."""
    affected_count: Count
    """Events whose personal values became unreadable."""
    affected_types: dict[str, int] = {}
    """Event type -> how many of the affected events."""
    affected_events: list[str] = []
    """Ids of the affected events (at most 10,000 listed)."""
    dataset_versions: list[Sha256] = []
    """Dataset versions holding rows of the subject (dataset_subjects_recorded)."""
    dataset_ids: list[str] = []
    """The datasets of those versions: their pipelines redact them and retrain."""
    model_ids: list[str] = []
    """Models downstream of those dataset versions at erasure time: flagged in model_catalog
    (their training data held the subject; retrain them without it)."""
    erased_at: Timestamp | None = None


@default_registry.register
class DatasetSubjectsRecorded(DomainEvent):
    """Which data subjects have rows in a dataset version, by keyed hash (not personal data
    itself), so forgetting a subject can name the datasets, and the models, involved."""

    event_type = EventTypes.DATASET_SUBJECTS_RECORDED
    dataset_id: Name
    dataset_version: Sha256
    subject_hashes: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]
    """HMAC-SHA256 of each subject id under the store's secret (store.privacy.keys)."""
    subject_column: str | None = None
    """The snapshot's column naming each row's subject: redaction drops the rows whose
    value's keyed hash is an erased subject's (None: the rows cannot be found)."""


@default_registry.register
class DatasetRedacted(DomainEvent):
    """A dataset version held rows of an erased subject: its rows were removed into a new
    version (`new_version`), and the old version's bytes, and the artifacts derived from
    them (feature tables, evaluation sets), were deleted from the artifact store."""

    event_type = EventTypes.DATASET_REDACTED
    dataset_id: Name
    old_version: Sha256
    new_version: Sha256
    """The sha256 of the redacted snapshot (the new dataset version)."""
    artifact: ArtifactRef
    """The redacted snapshot."""
    erasure_event_id: Name
    """The subject_erased event this redaction carries out."""
    subject_column: Name
    rows_removed: Count
    rows_out: Count
    deleted_artifacts: list[Sha256] = []
    """Artifacts deleted because they held the subject's rows: the old snapshot, feature
    tables and evaluation sets computed from it."""
    redacted_at: Timestamp | None = None
