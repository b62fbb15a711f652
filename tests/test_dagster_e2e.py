"""End to end: the real `dagster dev` (webserver + daemon) driven over GraphQL, on PostgreSQL.

Dagster's own storage (dagster.postgres.yaml) and the event store share one fresh database.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from _dagster_dev import TIMEOUT, installation, running_dagster

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster import CAUSE_TAG
from pipelines.dataset import seed_landing, write_new_batch
from pipelines.demo import PROJECT_ROOT, follow_batch
from pipelines.jobs import FULL_PIPELINE_ASSETS

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FIRST_OCCURRENCE_ORDER = [
    EventTypes.DATA_INGESTED,
    EventTypes.DATA_VALIDATED,
    EventTypes.FEATURE_COMPUTED,
    EventTypes.FEATURE_VERSIONED,
    EventTypes.TRAINING_STARTED,
    EventTypes.TRAINING_PROGRESS,
    EventTypes.TRAINING_COMPLETED,
    EventTypes.MODEL_CREATED,
    EventTypes.MODEL_VERSIONED,
    EventTypes.MODEL_DEPLOYED,
]


@pytest.fixture
def one_database(pg_schema_url: str) -> Iterator[tuple[str, str]]:
    """(Dagster storage URL, event store URL) in one fresh database, dropped afterwards.

    Dagster's tables go to its public schema through psycopg2; the event store gets a schema
    of its own (the `?schema=` of the conftest URL) through psycopg 3.
    """
    parts = urlsplit(pg_schema_url)
    admin_url = urlunsplit(parts._replace(query=""))
    name = f"mlevents_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database = parts._replace(path=f"/{name}")
    try:
        yield (
            urlunsplit(database._replace(scheme="postgresql+psycopg2", query="")),
            urlunsplit(database),
        )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def read_correlated(store_url: str, run_id: str) -> list[es.RecordedEvent]:
    with es.connect(store_url) as store:
        return store.read_correlated(run_id)


def test_dagster_dev_materializes_then_sensors_retrain_on_a_new_batch(
    tmp_path: Path, one_database: tuple[str, str]
) -> None:
    dagster_url, store_url = one_database
    place = installation(tmp_path, store_url, {"DAGSTER_PG_URL": dagster_url})
    with running_dagster(place, PROJECT_ROOT / "dagster.postgres.yaml") as dagster:
        # The landing sensor waits while the seed lands, so the seed is ingested by our run.
        dagster.stop_sensor("landing_folder_sensor")
        seed_landing(place.landing)
        keys = [key.to_user_string() for key in FULL_PIPELINE_ASSETS]
        run_id = dagster.launch("__ASSET_JOB", asset_keys=keys)
        dagster.wait_for_run(run_id, TIMEOUT)

        events = read_correlated(store_url, run_id)
        types = [event.event_type for event in events]
        assert types.count(EventTypes.DATA_INGESTED) == 3
        assert types.count(EventTypes.MODEL_DEPLOYED) == 1
        first = [types.index(event_type) for event_type in FIRST_OCCURRENCE_ORDER]
        assert first == sorted(first), types
        assert all(event.metadata.get("dagster_run_id") == run_id for event in events)
        # Dagster's record of the materializations carries the event store's versions.
        version = [e for e in events if e.event_type == EventTypes.DATA_INGESTED][-1]
        assert (
            dagster.latest_metadata("raw_data")["dataset_version"]
            == (version.payload["dataset_version"])
        )
        deployed = next(e for e in events if e.event_type == EventTypes.MODEL_DEPLOYED)
        assert (
            dagster.latest_metadata("deployed_model")["serving_model_id"]
            == (deployed.payload["model_id"])
        )

        # A new batch: landing sensor -> ingestion, retrain_on_new_data -> retrain,
        # refresh_provenance -> provenance, each run caused by the previous run's events.
        dagster.start_sensor("landing_folder_sensor")
        batch = write_new_batch(place.landing)
        ingest, retrain, provenance = follow_batch(dagster, store_url, batch.name, TIMEOUT)

        ingested = [
            e
            for e in read_correlated(store_url, ingest["runId"])
            if e.event_type == EventTypes.DATA_INGESTED
        ]
        assert [e.payload["batch_id"] for e in ingested] == [batch.name]
        new_version = ingested[0].payload["dataset_version"]
        validated = [
            e
            for e in read_correlated(store_url, ingest["runId"])
            if e.event_type == EventTypes.DATA_VALIDATED
        ]
        assert [(e.payload["dataset_version"], e.payload["passed"]) for e in validated] == [
            (new_version, True)
        ]
        assert retrain["jobName"] == "retrain"
        assert retrain["tags"][CAUSE_TAG] == validated[0].id
        retrained = read_correlated(store_url, retrain["runId"])
        started = [e for e in retrained if e.event_type == EventTypes.TRAINING_STARTED]
        assert [e.payload["dataset_version"] for e in started] == [new_version]
        assert EventTypes.TRAINING_COMPLETED in {e.event_type for e in retrained}
        assert provenance["jobName"] == "refresh_provenance"
        assert provenance["tags"][CAUSE_TAG] in {e.id for e in retrained}

        # Exactly once: our own full run's events triggered nothing (it covered those assets),
        # and no event caused two runs.
        sensor_runs = [run for run in dagster.runs() if "dagster/sensor_name" in run["tags"]]
        by_sensor: dict[str, list[str]] = {}
        for run in sensor_runs:
            by_sensor.setdefault(run["tags"]["dagster/sensor_name"], []).append(run["runId"])
        assert by_sensor["landing_folder_sensor"] == [ingest["runId"]]
        assert by_sensor["retrain_on_new_data"] == [retrain["runId"]]
        causes = [run["tags"].get(CAUSE_TAG) for run in sensor_runs if CAUSE_TAG in run["tags"]]
        assert len(causes) == len(set(causes))
        assert "retrain_on_quality_drop" not in by_sensor

    # Dagster really kept its runs in PostgreSQL, beside the event store.
    with psycopg.connect(dagster_url.replace("+psycopg2", ""), autocommit=True) as connection:
        stored = {row[0] for row in connection.execute("SELECT run_id FROM runs").fetchall()}
    assert {run_id, ingest["runId"], retrain["runId"], provenance["runId"]} <= stored
