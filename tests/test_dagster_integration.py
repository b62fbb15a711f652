"""The namespaced integration `event_sourcing.dagster`: the library imports no dagster, and
`event_sensor` launches runs for the events it is given (cursor = position, run key = event id).
"""

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

import event_sourcing as es
from event_sourcing.catalog import DataValidated, QualityCheck, TrainingProgress
from event_sourcing.dagster import CAUSE_TAG, EventStoreResource, event_sensor


def test_the_library_imports_no_dagster() -> None:
    code = (
        "import sys, event_sourcing, event_sourcing.projections, event_sourcing.training, "
        "event_sourcing.provenance, event_sourcing.serving, event_sourcing.cli\n"
        "loaded = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        "print(loaded)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_pipelines_and_resources_are_not_installed_packages(tmp_path: Any) -> None:
    """Outside the repository, only `event_sourcing` is importable (no top-level clash)."""
    code = (
        "import importlib.util as u\n"
        "print([n for n in ('pipelines', 'resources', 'event_sourcing.dagster') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert out.strip() == "['event_sourcing.dagster']"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _validated(passed: bool, version: str) -> DataValidated:
    return DataValidated(
        dataset_id="d",
        dataset_version=version * 64,
        passed=passed,
        checks=[QualityCheck(name="schema", passed=passed)],
        rows=1,
    )


@dg.op
def _noop() -> None:
    return None


@dg.job
def _target_job() -> None:
    _noop()


def test_event_sensor_runs_one_job_per_matching_event_with_config_from_the_event(
    store: es.EventStore, store_url: str, instance: dg.DagsterInstance
) -> None:
    sensor = event_sensor(
        "on_validated",
        ["data_validated"],
        job=_target_job,
        filter=lambda event: bool(event.payload["passed"]),
        run_config=lambda event: {
            "ops": {"_noop": {"config": {"version": event.payload["dataset_version"][:4]}}}
        },
        latest_only=False,
    )
    passed = store.append("s", [_validated(True, "a")])[0]
    store.append("s", [_validated(False, "b")])
    store.append("t", [TrainingProgress(step=1)])
    second = store.append("s", [_validated(True, "c")])[0]
    resources = {"event_store": EventStoreResource(url=store_url)}

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    requests = result.run_requests or []
    assert [r.run_key for r in requests] == [passed.id, second.id]
    assert [r.tags[CAUSE_TAG] for r in requests] == [passed.id, second.id]
    assert requests[1].run_config["ops"]["_noop"]["config"]["version"] == "cccc"
    assert all(r.job_name == "_target_job" for r in requests)
    assert result.cursor == str(store.head_position())

    # Evaluated again from its cursor: nothing new, nothing launched.
    with dg.build_sensor_context(
        instance=instance, resources=resources, cursor=result.cursor
    ) as context:
        again = sensor(context)
    assert not again.run_requests and again.cursor == result.cursor


def test_event_sensor_can_target_assets_and_launches_only_for_the_newest(
    store: es.EventStore, store_url: str, instance: dg.DagsterInstance
) -> None:
    key = dg.AssetKey("refreshed")
    sensor = event_sensor("on_any", ["data_validated"], asset_selection=[key])
    store.append("s", [_validated(True, "a")])
    newest = store.append("s", [_validated(False, "b")])[0]
    with dg.build_sensor_context(
        instance=instance, resources={"event_store": EventStoreResource(url=store_url)}
    ) as context:
        result = sensor(context)
    (request,) = result.run_requests or []
    assert request.run_key == newest.id and list(request.asset_selection or []) == [key]


def test_event_sensor_needs_exactly_one_target() -> None:
    with pytest.raises(es.ConfigurationError, match="a job or an asset_selection"):
        event_sensor("x", ["data_validated"])
    with pytest.raises(es.ConfigurationError, match="at least one event type"):
        event_sensor("x", [], job=_target_job)


def test_the_integration_reads_no_environment_at_import_time() -> None:
    """Settings are read when a resource opens or a location builds its definitions, so
    importing the integration with nonsense in every setting still works."""
    env = {
        "MLEVENTS_SENSOR_INTERVAL": "not-a-number",
        "MLEVENTS_QUALITY_THRESHOLD": "high",
        "MLEVENTS_INGEST_CRON": "never",
    }
    code = "import event_sourcing.dagster, event_sourcing.dagster.ml; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**__import__("os").environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
