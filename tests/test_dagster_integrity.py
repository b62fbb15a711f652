"""The `log_integrity` asset and its blocking check, run for real with dg.materialize: seals
land in the store and in Dagster's metadata, and a rewrite of the store is caught against them.
"""

from pathlib import Path

import dagster as dg
import pytest
from test_integrity import _recompute_everything, ev, raw_owner

import event_sourcing as es
from pipelines.integrity import log_integrity, log_verifies, seal_schedule, witness
from resources import EventStoreResource

# Tampering drops triggers; every reconnect then warns (tests that check it use pytest.warns).
pytestmark = pytest.mark.filterwarnings(
    "ignore::event_sourcing.integrity.audit.IntegrityWarning"
)


def _run(url: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [log_integrity, log_verifies],  # type: ignore[list-item]
        resources={"event_store": EventStoreResource(url=url)},
        instance=instance,
        raise_on_error=False,
    )


def _check_passed(result: dg.ExecuteInProcessResult) -> bool:
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation.passed


def test_seals_are_kept_in_dagster_and_a_rewrite_fails_the_blocking_check(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with es.connect(url) as store:
        store.append("run-a", [ev(1), ev(2)])
    with dg.instance_for_test() as instance:
        first = _run(url, instance)
        assert first.success and _check_passed(first)
        with es.connect(url) as store:
            store.append("run-a", [ev(3)])
            [kept] = witness(instance, store.recorder.description)
            assert kept.root == store.read_stream("mlevents.integrity.seals")[0].payload["root"]
            assert (kept.number, kept.count) == (1, 2)
        second = _run(url, instance)
        assert second.success and _check_passed(second)
        # Someone with the file rewrites an event and recomputes every hash and seal.
        with es.connect(url) as store:
            target = store.read_stream("run-a", 3, 3)[0].position
            with raw_owner(url) as run:
                run("UPDATE event_store SET payload = ? WHERE position = ?",
                    '{"loss":0.001,"step":3}', target)
                _recompute_everything(store, run)
            assert store.verify().ok  # consistent with itself...
        third = _run(url, instance)
        [evaluation] = third.get_asset_check_evaluations()
        assert not evaluation.passed  # ...but not with the roots Dagster kept
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert "witness" in evaluation.metadata["first_bad_event"].value


def test_a_tampered_new_event_fails_the_seal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with es.connect(url) as store:
        position = store.append("run-a", [ev(1)])[0].position
    with raw_owner(url) as run:
        run("UPDATE event_store SET created_at = ? WHERE position = ?",
            "2020-01-01T00:00:00.000000+00:00", position)
    with dg.instance_for_test() as instance, pytest.warns(Warning):
        result = _run(url, instance)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "do not verify" in str(failure.step_failure_data.error)


def test_the_seal_schedule_runs_hourly_by_default() -> None:
    assert seal_schedule.cron_schedule == "0 * * * *"
    assert seal_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert seal_schedule.job_name == "seal_log"
