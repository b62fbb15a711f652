"""Exactly-once emission under real Dagster execution: multiprocess steps that die right after
appending, step retries, re-execution from failure, and fresh runs.

Steps run in child processes (multiprocess executor) that `os._exit` after their append, so
Dagster never hears of their success; see tests/_crashing_pipeline.py.
"""

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from _crashing_pipeline import crashing_retrain_job

import event_sourcing as es
from event_sourcing.catalog import EventTypes, ModelRetired
from event_sourcing.dagster import EventStoreResource, keyed_event_id
from pipelines.dataset import seed_landing
from pipelines.definitions import all_assets, make_resources
from pipelines.jobs import INGESTION_ASSETS


class Place:
    def __init__(self, root: Path) -> None:
        self.url = f"sqlite:///{root / 'events.db'}"
        self.crash_dir = root / "crashes"
        self.crash_dir.mkdir()

    def events(self) -> list[es.RecordedEvent]:
        with es.connect(self.url) as store:
            return list(store.read_all())

    def counts(self) -> Counter[str]:
        return Counter(event.event_type for event in self.events())


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Place]:
    """Ingested and validated data, the environment the job's child processes read."""
    place = Place(tmp_path)
    monkeypatch.setenv("MLEVENTS_URL", place.url)
    monkeypatch.setenv("MLEVENTS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLEVENTS_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("MLEVENTS_CRASH_DIR", str(place.crash_dir))
    seed_landing(tmp_path / "landing")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            all_assets,
            selection=dg.AssetSelection.assets(*INGESTION_ASSETS),
            resources=make_resources(),
            instance=instance,
        )
        assert result.success
    yield place


def _execute(
    instance: dg.DagsterInstance,
    reexecution: dg.ReexecutionOptions | None = None,
    retries: int = 0,
) -> dg.JobExecutionResult:
    # The executor's child processes import the job's module from tests/.
    job = dg.build_reconstructable_job(
        "_crashing_pipeline",
        crashing_retrain_job.__name__,
        reconstructable_kwargs={"retries": retries},
        reconstructor_working_directory=str(Path(__file__).parent),
    )
    return dg.execute_job(job, instance, reexecution_options=reexecution)


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [record.user_message for record in instance.all_logs(run_id)]


@pytest.mark.slow
def test_steps_that_die_after_appending_are_retried_without_writing_twice(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Training dies after its first step, evaluation and deployment right after their append.
    monkeypatch.setenv(
        "MLEVENTS_CRASH_AFTER", "training_progress,model_evaluated,model_deployed"
    )
    with dg.instance_for_test() as instance:
        result = _execute(instance, retries=1)
        assert result.success
        crashed = sorted(path.name for path in place.crash_dir.iterdir())
        assert crashed == [
            "crashed-model_deployed", "crashed-model_evaluated", "crashed-training_progress"
        ]
        retries = [
            e for e in instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
        ]
        assert len(retries) == 3
        messages = _messages(instance, result.run_id)

    counts = place.counts()
    assert counts[EventTypes.TRAINING_STARTED] == 1
    assert counts[EventTypes.TRAINING_PROGRESS] == 3  # 3 CV folds, the first not twice
    assert counts[EventTypes.TRAINING_COMPLETED] == 1
    assert counts[EventTypes.TRAINING_FAILED] == 0  # resumed, never left open or failed
    assert counts[EventTypes.MODEL_VERSIONED] == 1
    assert counts[EventTypes.MODEL_EVALUATED] == 1
    assert counts[EventTypes.MODEL_DEPLOYED] == 1
    # The retried steps said what they reused.
    assert any("resuming it" in m for m in messages)
    assert any("idempotency key 'model_evaluated': reusing 1 event(s)" in m for m in messages)
    assert any("idempotency key 'deploy': reusing 1 event(s)" in m for m in messages)


@pytest.mark.slow
def test_reexecution_from_failure_reuses_then_a_fresh_run_is_new_history(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No step retries: the death of deployed_model (after its append) fails the run.
    monkeypatch.setenv("MLEVENTS_CRASH_AFTER", "model_deployed")
    with dg.instance_for_test() as instance:
        failed = _execute(instance)
        assert not failed.success
        first_ids = {e.id for e in place.events()}
        assert place.counts()[EventTypes.MODEL_DEPLOYED] == 1

        again = _execute(
            instance, dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        )
        assert again.success
        run = instance.get_run_by_id(again.run_id)
        assert run is not None and run.root_run_id == failed.run_id
        assert any(
            "idempotency key 'deploy': reusing 1 event(s)" in m
            for m in _messages(instance, again.run_id)
        )
        counts = place.counts()
        assert counts[EventTypes.MODEL_DEPLOYED] == 1
        assert counts[EventTypes.MODEL_VERSIONED] == 1
        assert {e.id for e in place.events()} == first_ids  # the re-execution wrote nothing

        # A fresh run of the same job is new history: a new training run, new ids.
        fresh = _execute(instance)
        assert fresh.success
        new = [e for e in place.events() if e.id not in first_ids]
        assert {e.metadata["dagster_run_id"] for e in new} == {fresh.run_id}
        counts = place.counts()
        assert counts[EventTypes.TRAINING_STARTED] == 2
        assert counts[EventTypes.MODEL_VERSIONED] == 2
        assert counts[EventTypes.MODEL_EVALUATED] == 2
        # Same data and seed, same model: identical to the champion, so not deployed again.
        assert counts[EventTypes.MODEL_DEPLOYED] == 1


def test_emit_with_a_key_records_once_per_step_and_run_family(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    seen: dict[str, object] = {}

    def retired(n: int) -> ModelRetired:
        return ModelRetired(model_id="m", model_name="m", version=1, environment="e", reason=str(n))

    @dg.asset
    def emitter(context: dg.AssetExecutionContext, event_store: EventStoreResource) -> None:
        first = event_store.emit(context, "s", [retired(1)], key="tick")
        again = event_store.emit(context, "s", [retired(2)], key="tick")
        other = event_store.emit(context, "s", [retired(3)], key="tock")
        assert again == first and first[0].id == keyed_event_id(context, "tick")
        assert other[0].id != first[0].id
        assert first[0].metadata["idempotency_key"] == "tick"
        with pytest.raises(es.EventValidationError, match="derives every id"):
            event_store.emit(
                context, "s", [es.NewEvent.of(retired(4), id=str(uuid.uuid4()))], key="x"
            )
        seen["ids"] = {first[0].id, other[0].id}

    resources = {"event_store": EventStoreResource(url=url)}
    with dg.instance_for_test() as instance:
        one = dg.materialize([emitter], resources=resources, instance=instance)
        messages = _messages(instance, one.run_id)
        first_ids = seen["ids"]
        # A fresh run of the same job: new root run id, new ids.
        dg.materialize([emitter], resources=resources, instance=instance)
    assert any("idempotency key 'tick': reusing 1 event(s)" in m for m in messages)
    assert not first_ids & seen["ids"]  # type: ignore[operator]
    with es.connect(url) as store:
        assert [e.payload["reason"] for e in store.read_stream("s")] == ["1", "3", "1", "3"]
