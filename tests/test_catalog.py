"""Tests of the typed event catalog: registry, encode/parse, upcasting and schema export."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from event_sourcing.catalog import (
    ArtifactRef,
    DomainEvent,
    EventRegistry,
    EventTypes,
    TrainingStarted,
    default_registry,
    export_json_schemas,
    render_markdown_catalog,
)
from event_sourcing.errors import EventValidationError, SchemaVersionError, UnknownEventTypeError
from event_sourcing.events import RecordedEvent

SHA = "ab" * 32
SHA2 = "cd" * 32
ARTIFACT = {"uri": "file:///tmp/model.pkl", "sha256": SHA, "size_bytes": 10}
CHECKS = [{"name": "no_nulls", "passed": True}]

# One valid payload per built-in type: each must round-trip through JSON.
SAMPLES: dict[str, dict[str, Any]] = {
    "data_ingested": {
        "dataset_id": "iris",
        "dataset_version": SHA,
        "source_uri": "s3://b/iris.csv",
        "rows": 150,
        "columns": ["a", "b"],
        "content_sha256": SHA2,
        "artifact": ARTIFACT,
        "ingested_at": "2024-05-01T12:00:00+00:00",
    },
    "data_preprocessed": {
        "dataset_id": "iris",
        "input_version": SHA,
        "output_version": SHA2,
        "steps": ["dropna"],
        "rows_in": 150,
        "rows_out": 148,
    },
    "data_validated": {
        "dataset_id": "iris",
        "dataset_version": SHA,
        "passed": True,
        "checks": CHECKS,
        "rows": 150,
    },
    "feature_computed": {
        "feature_set": "iris_f",
        "feature_version": "fv1",
        "dataset_version": SHA,
        "features": ["x1"],
        "rows": 150,
    },
    "feature_validated": {
        "feature_set": "iris_f",
        "feature_version": "fv1",
        "passed": False,
        "checks": [{"name": "range", "passed": False, "detail": "x1 > 10"}],
    },
    "feature_versioned": {
        "feature_set": "iris_f",
        "feature_version": "fv1",
        "dataset_version": SHA,
        "code_sha256": SHA2,
        "features": ["x1"],
    },
    "training_started": {
        "config": {"model": "logreg", "layers": [4, 3], "opts": {"C": 1.0, "x": None}},
        "dataset_id": "iris",
        "dataset_version": SHA,
        "feature_version": "fv1",
        "code_version": {"package_version": "0.1.0", "git_commit": "abc123"},
        "hyperparameters": {"C": 1.0},
        "seed": 42,
        "environment": {"python": "3.11.9", "platform": "linux", "packages": {"numpy": "2"}},
        "started_at": "2024-05-01T12:00:00Z",
        "user_id": "ana",
        "model_name": "iris_clf",
        "training_function": "train:fit_logreg",
    },
    "training_progress": {
        "step": 3,
        "metrics": {"acc": 0.9},
        "loss": 0.3,
        "learning_rate": 0.01,
        "timestamp": "2024-05-01T12:00:01Z",
        "resources": {"gpu_memory": 512.0},
    },
    "training_completed": {
        "model_id": "m1",
        "model_artifact": ARTIFACT,
        "final_metrics": {"acc": 0.95},
        "completed_at": "2024-05-01T12:05:00Z",
        "duration_seconds": 300,
        "model_fingerprint": SHA,
        "model_name": "iris_clf",
        "eval_set": {"uri": f"artifact://sha256/{SHA2}", "sha256": SHA2},
        "fingerprint_components": {"params": SHA, "predictions": SHA2},
        "fingerprint_digits": 10,
    },
    "training_failed": {"error": "CUDA out of memory", "error_type": "RuntimeError", "step": 7},
    "dataset_subjects_recorded": {
        "dataset_id": "customers",
        "dataset_version": SHA,
        "subject_hashes": [SHA2],
    },
    "dataset_redacted": {
        "dataset_id": "customers",
        "old_version": SHA,
        "new_version": SHA2,
        "artifact": ARTIFACT,
        "erasure_event_id": "0190c6a0-0000-7000-8000-000000000000",
        "subject_column": "customer_id",
        "rows_removed": 3,
        "rows_out": 97,
        "deleted_artifacts": [SHA],
    },
    "subject_erased": {
        "subject_hash": SHA,
        "reason": "GDPR art. 17 request #12",
        "keys_destroyed": 1,
        "affected_count": 2,
        "affected_types": {"inference_requested": 2},
        "affected_events": ["01a2321b-69a9-712f-9140-773fd6fb053f"],
        "erased_at": "2024-05-01T12:05:00Z",
    },
    "training_verified": {
        "training_id": "t1",
        "reproducible": True,
        "expected_fingerprint": SHA,
        "actual_fingerprint": SHA,
    },
    "model_created": {
        "model_id": "m1",
        "training_id": "t1",
        "model_name": "iris_clf",
        "artifact": ARTIFACT,
        "metrics": {"acc": 0.95},
    },
    "model_versioned": {
        "model_id": "m1",
        "model_name": "iris_clf",
        "version": 1,
        "training_id": "t1",
        "artifact": ARTIFACT,
    },
    "model_evaluated": {
        "model_id": "m2",
        "model_name": "iris_clf",
        "version": 2,
        "environment": "production",
        "champion_model_id": "m1",
        "dataset_version": SHA,
        "metrics": {"accuracy": 0.91},
        "champion_metrics": {"accuracy": 0.93},
        "promoted": False,
        "reason": "held-out accuracy 0.9100 < champion's 0.9300",
        "evaluated_at": "2024-05-01T12:06:00Z",
    },
    "model_deployed": {"model_id": "m1", "model_name": "iris_clf", "version": 1},
    "model_retired": {
        "model_id": "m1",
        "model_name": "iris_clf",
        "version": 1,
        "environment": "staging",
        "replaced_by_model_id": "m2",
    },
    "inference_requested": {
        "model_id": "m1",
        "model_version": 1,
        "inputs": {"x1": 0.5},
        "environment": "staging",
    },
    "inference_completed": {
        "model_id": "m1",
        "model_version": 1,
        "prediction": "setosa",
        "probabilities": {"setosa": 0.9, "virginica": 0.1},
        "latency_ms": 1.5,
    },
    "inference_feedback": {"inference_id": "i1", "actual": "virginica", "correct": False},
    "integrity_sealed": {
        "from_position": 0, "to_position": 6, "count": 6, "root": "ab" * 32,
        "previous": "00" * 32, "chain": "cd" * 32,
    },
    "integrity_triggers_restored": {
        "problems": ["trigger event_store_no_update was missing"], "restored": True,
        "head_position": 6,
    },
    "archive_created": {
        "uri": "artifact://sha256/" + "ab" * 32, "sha256": "ab" * 32, "from_position": 0,
        "to_position": 4, "count": 5, "seal_roots": ["cd" * 32], "file_bytes": 900,
        "payload_bytes": 2000,
    },
}


def constants() -> set[str]:
    return {v for k, v in vars(EventTypes).items() if k.isupper() and isinstance(v, str)}


def recorded(event_type: str, schema_version: int, payload: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        id="e1",
        stream_id="s1",
        stream_type="t",
        version=1,
        position=1,
        event_type=event_type,
        schema_version=schema_version,
        payload=payload,
        metadata={},
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        correlation_id=None,
        causation_id=None,
        recorded_schema_version=schema_version,
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


def test_every_constant_is_registered_and_vice_versa() -> None:
    assert "training_verified" in constants()
    assert constants() == set(default_registry.types())
    assert default_registry.types() == sorted(default_registry.types())
    for name in constants():
        assert default_registry.model_for(name).event_type == name
        assert default_registry.current_version(name) == 1
    assert set(SAMPLES) == constants()


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_builtin_round_trips_through_json(event_type: str) -> None:
    version, payload = default_registry.encode(event_type, SAMPLES[event_type])
    assert version == 1
    stored = json.loads(json.dumps(payload, allow_nan=False))
    event = default_registry.parse(recorded(event_type, version, stored))
    assert type(event) is default_registry.model_for(event_type)
    assert event.model_dump(mode="json") == payload


def test_encode_normalizes_a_valid_payload() -> None:
    version, payload = default_registry.encode(
        EventTypes.TRAINING_PROGRESS,
        {"step": "5", "metrics": {"acc": 1}, "timestamp": "2024-05-01T14:00:00+02:00"},
    )
    assert version == 1
    assert payload == {
        "step": 5,
        "metrics": {"acc": 1.0},
        "loss": None,
        "learning_rate": None,
        "timestamp": "2024-05-01T12:00:00Z",  # converted to UTC
        "resources": None,
    }


def test_invalid_payload_names_every_failing_field() -> None:
    with pytest.raises(EventValidationError) as info:
        default_registry.encode(
            EventTypes.TRAINING_STARTED,
            {"dataset_id": "iris", "dataset_version": "NOT-A-HASH", "seed": "abc", "oops": 1},
        )
    message = str(info.value)
    assert message.startswith("training_started payload invalid: ")
    assert "config: field required" in message
    assert "dataset_version: string should match pattern" in message
    assert "seed: input should be a valid integer" in message
    assert "oops: extra inputs are not permitted" in message
    assert "dataset_id" not in message


def test_nested_errors_carry_their_path() -> None:
    payload = {**SAMPLES["training_completed"], "model_artifact": {"uri": "x", "sha256": "AB"}}
    with pytest.raises(EventValidationError, match=r"model_artifact\.sha256: string should"):
        default_registry.encode(EventTypes.TRAINING_COMPLETED, payload)


def test_naive_datetime_rejected() -> None:
    payload = {**SAMPLES["training_started"], "started_at": "2024-05-01T12:00:00"}
    with pytest.raises(EventValidationError, match="started_at: input should have timezone"):
        default_registry.encode(EventTypes.TRAINING_STARTED, payload)
    naive = {**payload, "started_at": datetime(2024, 5, 1)}
    with pytest.raises(EventValidationError, match="started_at: input should have timezone"):
        default_registry.encode(EventTypes.TRAINING_STARTED, naive)


def test_values_json_cannot_carry_are_rejected_at_encode() -> None:
    with pytest.raises(EventValidationError, match="loss: input should be a finite number"):
        default_registry.encode(EventTypes.TRAINING_PROGRESS, {"step": 1, "loss": float("nan")})
    payload = {**SAMPLES["training_started"], "config": {"when": datetime.now(UTC)}}
    with pytest.raises(EventValidationError, match=r"config\.when: .*plain JSON values"):
        default_registry.encode(EventTypes.TRAINING_STARTED, payload)


def test_cross_field_rules() -> None:
    with pytest.raises(EventValidationError, match="give inputs or inputs_ref"):
        default_registry.encode(
            EventTypes.INFERENCE_REQUESTED, {"model_id": "m1", "model_version": 1}
        )
    by_ref = {"model_id": "m1", "model_version": 1, "inputs_ref": ARTIFACT}
    assert default_registry.encode(EventTypes.INFERENCE_REQUESTED, by_ref)[1]["inputs"] is None
    lie = {**SAMPLES["training_verified"], "actual_fingerprint": SHA2}
    with pytest.raises(EventValidationError, match="fingerprints differ"):
        default_registry.encode(EventTypes.TRAINING_VERIFIED, lie)
    orphan = {**SAMPLES["model_evaluated"], "champion_model_id": None}
    with pytest.raises(EventValidationError, match="champion_model_id is not"):
        default_registry.encode(EventTypes.MODEL_EVALUATED, orphan)
    first = {**orphan, "champion_metrics": None, "promoted": True, "reason": "nothing serves"}
    assert default_registry.encode(EventTypes.MODEL_EVALUATED, first)[1]["promoted"] is True


def test_unknown_type() -> None:
    with pytest.raises(UnknownEventTypeError) as info:
        default_registry.encode("training_start", {})
    message = str(info.value)
    assert "registry.register" in message and "validate=False" in message
    assert "did you mean 'training_started'" in message
    with pytest.raises(UnknownEventTypeError):
        default_registry.model_for("nope")
    with pytest.raises(UnknownEventTypeError):
        default_registry.parse(recorded("nope", 1, {}))
    assert not default_registry.is_registered("nope")


def test_events_are_frozen_and_encode_model() -> None:
    event = TrainingStarted.model_validate(SAMPLES["training_started"])
    with pytest.raises(ValueError):
        event.seed = 1
    name, version, payload = default_registry.encode_model(event)
    assert (name, version) == ("training_started", 1)
    assert payload == default_registry.encode(name, SAMPLES["training_started"])[1]
    assert ArtifactRef(uri="u", sha256=SHA).size_bytes is None


def test_custom_event_on_a_copied_registry() -> None:
    registry = default_registry.copy()

    @registry.register
    class DriftDetected(DomainEvent):
        """Input drift crossed a threshold."""

        event_type: ClassVar[str] = "drift_detected"
        model_id: str
        score: float

    assert registry.encode("drift_detected", {"model_id": "m", "score": "0.5"}) == (
        1,
        {"model_id": "m", "score": 0.5},
    )
    assert isinstance(registry.encode_model(DriftDetected(model_id="m", score=1)), tuple)
    assert set(registry.types()) == constants() | {"drift_detected"}
    # The default registry is untouched.
    assert not default_registry.is_registered("drift_detected")
    with pytest.raises(UnknownEventTypeError):
        default_registry.encode_model(DriftDetected(model_id="m", score=1))


def test_encode_model_needs_the_registered_class() -> None:
    class Impostor(DomainEvent):
        event_type: ClassVar[str] = EventTypes.MODEL_DEPLOYED
        model_id: str

    with pytest.raises(UnknownEventTypeError, match="Impostor"):
        default_registry.encode_model(Impostor(model_id="m"))


def test_register_rules() -> None:
    registry = EventRegistry()

    class V2(DomainEvent):
        event_type: ClassVar[str] = "thing"
        schema_version: ClassVar[int] = 2

    class V1(DomainEvent):
        event_type: ClassVar[str] = "thing"

    class V2b(DomainEvent):
        event_type: ClassVar[str] = "thing"
        schema_version: ClassVar[int] = 2

    class NoName(DomainEvent):
        pass

    assert registry.register(V2) is V2
    assert registry.register(V2) is V2  # idempotent
    with pytest.raises(SchemaVersionError, match="versions only go up"):
        registry.register(V1)
    registry.register(V2b)
    assert registry.model_for("thing") is V2b
    with pytest.raises(EventValidationError, match="no event_type"):
        registry.register(NoName)
    with pytest.raises(EventValidationError, match="not a DomainEvent"):
        registry.register(dict)  # type: ignore[type-var]


# -- upcasting ------------------------------------------------------------------------------------


class RunV1(DomainEvent):
    event_type: ClassVar[str] = "run_logged"
    lr: float


class RunV2(DomainEvent):  # v2 renamed lr -> learning_rate
    event_type: ClassVar[str] = "run_logged"
    schema_version: ClassVar[int] = 2
    learning_rate: float


class RunV3(DomainEvent):  # v3 added a required optimizer (old runs used sgd)
    event_type: ClassVar[str] = "run_logged"
    schema_version: ClassVar[int] = 3
    learning_rate: float
    optimizer: str


def evolved_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(RunV1)
    registry.register(RunV2)

    @registry.upcaster("run_logged", 1)
    def rename(payload: dict[str, Any]) -> dict[str, Any]:
        payload["learning_rate"] = payload.pop("lr")
        return payload

    registry.register(RunV3)
    registry.register_upcaster("run_logged", 2, lambda p: {**p, "optimizer": "sgd"})
    return registry


def test_upcast_chains_to_the_current_version() -> None:
    registry = evolved_registry()
    stored = {"lr": 0.1}
    assert registry.upcast("run_logged", 1, stored) == (
        3,
        {"learning_rate": 0.1, "optimizer": "sgd"},
    )
    assert stored == {"lr": 0.1}  # the caller's dict is not modified
    assert registry.upcast("run_logged", 2, {"learning_rate": 0.2}) == (
        3,
        {"learning_rate": 0.2, "optimizer": "sgd"},
    )
    current = {"learning_rate": 0.3, "optimizer": "adam"}
    assert registry.upcast("run_logged", 3, current) == (3, current)
    assert registry.upcast("unregistered", 7, {"a": 1}) == (7, {"a": 1})

    event = registry.parse(recorded("run_logged", 1, {"lr": 0.1}))
    assert event == RunV3(learning_rate=0.1, optimizer="sgd")
    # An already-upcast payload (as the store returns it) is parsed as is.
    assert registry.parse(recorded("run_logged", 3, current)) == RunV3.model_validate(current)


def test_missing_upcaster_step_is_an_error() -> None:
    registry = EventRegistry()
    registry.register(RunV3)
    registry.register_upcaster("run_logged", 2, lambda p: {**p, "optimizer": "sgd"})
    with pytest.raises(SchemaVersionError, match=r"'run_logged' from schema version 1 to 2"):
        registry.upcast("run_logged", 1, {"lr": 0.1})
    with pytest.raises(SchemaVersionError):
        registry.parse(recorded("run_logged", 1, {"lr": 0.1}))


def test_stored_version_newer_than_code_is_an_error() -> None:
    registry = EventRegistry()
    registry.register(RunV2)
    with pytest.raises(
        SchemaVersionError, match="schema version 3 but this code knows only up to 2"
    ):
        registry.upcast("run_logged", 3, {"learning_rate": 0.1, "optimizer": "adam"})
    with pytest.raises(SchemaVersionError, match="upgrade the code"):
        registry.parse(recorded("run_logged", 3, {"learning_rate": 0.1}))


def test_parse_reports_a_payload_the_model_rejects() -> None:
    registry = evolved_registry()
    registry.register_upcaster("run_logged", 2, lambda p: p)  # a buggy upcaster
    with pytest.raises(EventValidationError, match=r"stored event e1 .*optimizer: field required"):
        registry.parse(recorded("run_logged", 2, {"learning_rate": 0.1}))


def test_copy_is_independent() -> None:
    original = evolved_registry()
    clone = original.copy()
    clone.register_upcaster("run_logged", 2, lambda p: {**p, "optimizer": "adam"})
    assert original.upcast("run_logged", 2, {"learning_rate": 1.0})[1]["optimizer"] == "sgd"
    assert clone.upcast("run_logged", 2, {"learning_rate": 1.0})[1]["optimizer"] == "adam"


# -- schemas ------------------------------------------------------------------------------------


def test_json_schemas_cover_every_type() -> None:
    schemas = default_registry.json_schemas()
    assert set(schemas) == constants()
    for name, schema in schemas.items():
        assert schema["x-event-type"] == name
        assert schema["x-schema-version"] == 1
        assert schema["additionalProperties"] is False
    assert "config" in schemas["training_started"]["required"]
    assert evolved_registry().json_schemas()["run_logged"]["x-schema-version"] == 3


def test_export_writes_one_file_per_type(tmp_path: Any) -> None:
    paths = export_json_schemas(default_registry, tmp_path / "schemas")
    assert sorted(p.name for p in paths) == sorted(f"{t}.v1.json" for t in constants())
    schema = json.loads((tmp_path / "schemas" / "model_deployed.v1.json").read_text())
    assert schema["x-event-type"] == "model_deployed"
    assert "model_id" in schema["properties"]


def test_markdown_catalog_mentions_each_type() -> None:
    markdown = render_markdown_catalog(default_registry)
    for name in constants():
        assert f"\n## {name}\n" in markdown
    assert "A training run began; records everything needed to re-run it." in markdown
    assert "| `config` | map of string to any JSON | yes | The training configuration" in markdown
    assert "### ArtifactRef" in markdown
