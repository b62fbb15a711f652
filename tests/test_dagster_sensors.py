"""Sensors evaluated with dg.build_sensor_context against real stores and a real Dagster instance.

Each fires on the right events, advances its cursor, never fires twice for one event and
stays quiet on unrelated events.
"""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

import event_sourcing as es
from event_sourcing.catalog import (
    DataIngested,
    DataValidated,
    InferenceFeedback,
    ModelDeployed,
    QualityCheck,
    TrainingProgress,
)
from event_sourcing.dagster import QualityPolicy
from event_sourcing.projections.pages import read_page
from pipelines.dataset import seed_landing, write_new_batch
from pipelines.definitions import all_assets, make_resources
from pipelines.jobs import INGESTION_ASSETS
from pipelines.sensors import (
    build_quality_sensor,
    landing_folder_sensor,
    refresh_provenance,
    retrain_on_new_data,
)
from pipelines.state import MODEL_NAME


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def version(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def validated(passed: bool, name: str = "v1") -> DataValidated:
    return DataValidated(
        dataset_id="breast_cancer",
        dataset_version=version(name),
        passed=passed,
        checks=[QualityCheck(name="schema", passed=passed)],
        rows=10,
    )


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None,
) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def keys(result: dg.SensorResult) -> list[str]:
    return [request.run_key for request in result.run_requests or []]  # type: ignore[misc]


def test_retrain_on_new_data_fires_once_per_passed_validation(
    store: es.EventStore, store_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    resources = make_resources(store_url, str(tmp_path / "artifacts"), str(tmp_path / "landing"))
    # Nothing yet: quiet, cursor at the (empty) head.
    first = tick(retrain_on_new_data, instance, resources, None)
    assert keys(first) == [] and first.cursor == "0"

    # Unrelated events and a failed validation: quiet, but the cursor moves past them.
    store.append("run-1", [TrainingProgress(step=1)])
    store.append("dataset:breast_cancer", [validated(False, "bad")])
    quiet = tick(retrain_on_new_data, instance, resources, first.cursor)
    assert keys(quiet) == []
    assert quiet.cursor == str(store.head_position()) == "2"

    # A passed validation: one run, keyed by the event that caused it.
    (event,) = store.append("dataset:breast_cancer", [validated(True, "good")])
    fired = tick(retrain_on_new_data, instance, resources, quiet.cursor)
    assert keys(fired) == [event.id]
    (request,) = fired.run_requests or []
    assert request.job_name == "retrain"
    assert request.tags["mlevents/cause_event_id"] == event.id
    assert fired.cursor == str(event.position)

    # Evaluating the same tick again asks for the same run key (Dagster dedupes it) ...
    assert keys(tick(retrain_on_new_data, instance, resources, quiet.cursor)) == [event.id]
    # ... and the next tick, from the advanced cursor, asks for nothing.
    again = tick(retrain_on_new_data, instance, resources, fired.cursor)
    assert keys(again) == [] and again.cursor == fired.cursor

    # Several versions validated between ticks: one retrain, on the newest.
    newer = [store.append("dataset:breast_cancer", [validated(True, name)])[0] for name in "abc"]
    batch = tick(retrain_on_new_data, instance, resources, again.cursor)
    assert keys(batch) == [newer[-1].id]


def test_store_sensors_skip_events_of_runs_that_do_the_work_themselves(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    resources = make_resources(url, str(tmp_path / "artifacts"), str(tmp_path / "landing"))
    seed_landing(tmp_path / "landing", batches=2)

    # A full pipeline run validates, trains, deploys and refreshes provenance itself.
    assert dg.materialize(all_assets, resources=resources, instance=instance).success
    assert keys(tick(retrain_on_new_data, instance, resources, None)) == []
    assert keys(tick(refresh_provenance, instance, resources, None)) == []

    # An ingestion-only run does not retrain: the sensor must.
    write_new_batch(tmp_path / "landing", rows=20, seed=3)
    with es.connect(url) as store:
        head = store.head_position()
    ingest = dg.materialize(
        all_assets,
        selection=dg.AssetSelection.assets(*INGESTION_ASSETS),
        resources=resources,
        instance=instance,
    )
    assert ingest.success
    result = tick(retrain_on_new_data, instance, resources, str(head))
    with es.connect(url) as store:
        (verdict,) = [
            e
            for e in store.read_all(after=head, event_types=["data_validated"])
            if e.correlation_id == ingest.run_id
        ]
    assert keys(result) == [verdict.id]


def test_refresh_provenance_fires_on_training_and_deployment_events(
    store: es.EventStore, store_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    resources = make_resources(store_url, str(tmp_path / "artifacts"), str(tmp_path / "landing"))
    store.append("dataset:breast_cancer", [validated(True)])
    quiet = tick(refresh_provenance, instance, resources, None)
    assert keys(quiet) == [] and quiet.cursor == "1"

    (deployed,) = store.append(
        "deployment:production",
        [ModelDeployed(model_id="m1", model_name=MODEL_NAME, version=1)],
    )
    # Another model's deployment is its own pipeline's business (wine_refresh_provenance).
    store.append(
        "deployment:production",
        [ModelDeployed(model_id="w1", model_name="wine_classifier", version=1)],
    )
    fired = tick(refresh_provenance, instance, resources, quiet.cursor)
    assert keys(fired) == [deployed.id]
    assert fired.run_requests[0].job_name == "refresh_provenance"  # type: ignore[index]
    assert keys(tick(refresh_provenance, instance, resources, fired.cursor)) == []


def feedback(model_id: str, correct: bool) -> InferenceFeedback:
    return InferenceFeedback(inference_id="i", model_id=model_id, actual=1, correct=correct)


def test_retrain_on_quality_drop_fires_when_rolling_accuracy_falls(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    resources = make_resources(url, str(tmp_path / "artifacts"), str(tmp_path / "landing"))
    sensor = build_quality_sensor(
        QualityPolicy(threshold=0.8, window=10, min_feedback=5), name="quality_test"
    )
    with es.connect(url) as store:
        # Four wrong answers: below the threshold but too few to judge.
        for _ in range(4):
            store.append("inf-a", [feedback("model-a", False)])
        early = tick(sensor, instance, resources, None)
        assert keys(early) == []
        state = json.loads(early.cursor or "")
        assert state["position"] == 4 and state["windows"]["model-a"] == [0, 0, 0, 0]

        # The fifth wrong answer tips it: one retrain, keyed by that feedback event.
        (fifth,) = store.append("inf-a", [feedback("model-a", False)])
        fired = tick(sensor, instance, resources, early.cursor)
        assert keys(fired) == [fifth.id]
        request = (fired.run_requests or [])[0]
        assert request.job_name == "retrain"
        assert request.tags["mlevents/model_id"] == "model-a"

        # More bad feedback for the same model does not retrain again ...
        store.append("inf-a", [feedback("model-a", False)])
        calm = tick(sensor, instance, resources, fired.cursor)
        assert keys(calm) == []
        # ... nor does good feedback for another model, or feedback without a verdict.
        for _ in range(6):
            store.append("inf-b", [feedback("model-b", True)])
        store.append("inf-c", [InferenceFeedback(inference_id="c", model_id="m", actual=0.5)])
        calm = tick(sensor, instance, resources, calm.cursor)
        assert keys(calm) == []
        assert json.loads(calm.cursor or "")["position"] == store.head_position()

        # Once model-a recovers above the threshold it may trigger again later.
        for _ in range(10):
            store.append("inf-a", [feedback("model-a", True)])
        recovered = tick(sensor, instance, resources, calm.cursor)
        assert keys(recovered) == []
        assert "model-a" not in json.loads(recovered.cursor or "")["fired"]
        # Two misses in the last ten: 0.8, not below the threshold; the third tips it.
        for _ in range(2):
            store.append("inf-a", [feedback("model-a", False)])
        (third,) = store.append("inf-a", [feedback("model-a", False)])
        again = tick(sensor, instance, resources, recovered.cursor)
        assert keys(again) == [third.id]


def test_landing_sensor_fires_on_new_files_only(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    landing = tmp_path / "landing"
    url = f"sqlite:///{tmp_path / 'events.db'}"
    resources = make_resources(url, str(tmp_path / "artifacts"), str(landing))
    empty = tick(landing_folder_sensor, instance, resources, None)
    assert keys(empty) == [] and json.loads(empty.cursor or "") == []

    seed_landing(landing, batches=2)
    fired = tick(landing_folder_sensor, instance, resources, empty.cursor)
    (request,) = fired.run_requests or []
    assert request.job_name == "ingest_and_validate"
    assert request.tags["mlevents/batch_files"] == "batch_000.csv,batch_001.csv"
    assert len(json.loads(fired.cursor or "")) == 2
    # Same tick again: same run key; next tick: nothing new.
    assert keys(tick(landing_folder_sensor, instance, resources, empty.cursor)) == keys(fired)
    assert keys(tick(landing_folder_sensor, instance, resources, fired.cursor)) == []
    # Half-written files (dot-files) and other extensions are not batches.
    (landing / ".incoming.csv.tmp").write_text("sample_id\n1\n")
    (landing / "notes.txt").write_text("hello")
    assert keys(tick(landing_folder_sensor, instance, resources, fired.cursor)) == []

    new = write_new_batch(landing, rows=10, seed=9)
    third = tick(landing_folder_sensor, instance, resources, fired.cursor)
    assert third.run_requests[0].tags["mlevents/batch_files"] == new.name  # type: ignore[index]
    assert keys(third) != keys(fired)

    # A file the store already ingested (e.g. by the daily schedule) starts no run.
    other = write_new_batch(landing, name="already", rows=10, seed=10)
    with es.connect(url) as store:
        digest = hashlib.sha256(other.read_bytes()).hexdigest()
        store.append(
            "dataset:breast_cancer",
            [
                DataIngested(
                    dataset_id="breast_cancer",
                    dataset_version=version("x"),
                    source_uri=other.as_uri(),
                    rows=10,
                    columns=["a"],
                    content_sha256=digest,
                )
            ],
        )
    assert keys(tick(landing_folder_sensor, instance, resources, third.cursor)) == []


def test_read_page_pages_through_a_backlog(store: es.EventStore) -> None:
    events = [store.append("s", [validated(True, str(i))])[0] for i in range(5)]
    store.append("other", [TrainingProgress(step=1)])

    page = read_page(store, 0, ["data_validated"], limit=2)
    assert page.events == events[:2] and page.cursor == events[1].position and page.full
    page = read_page(store, page.cursor, ["data_validated"], limit=2)
    assert page.events == events[2:4] and page.cursor == events[3].position
    page = read_page(store, page.cursor, ["data_validated"], limit=2)
    # A short page: the cursor jumps to the head, past the unrelated event.
    assert page.events == events[4:] and page.cursor == store.head_position()
    assert not page.full
    again = read_page(store, page.cursor, ["data_validated"], limit=2)
    assert (again.events, again.cursor) == ([], page.cursor)


def test_a_bad_cursor_is_reported_with_what_to_do(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources = make_resources(f"sqlite:///{tmp_path / 'e.db'}", str(tmp_path), str(tmp_path))
    with pytest.raises(Exception, match="reset the sensor's cursor"):
        tick(retrain_on_new_data, instance, resources, "not-a-position")
