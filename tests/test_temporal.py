"""As-of queries: projections evaluated at a past time or position, in memory, leaving the live
read models alone. Events are written at chosen times through an injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from _projection_worker import SteppingClock, build_ml_history, counter_projection

import event_sourcing as es
from event_sourcing.projections import (
    ProjectionRunner,
    as_of,
    builtin_projections,
    deployed_model_at,
    get_training_summary,
    list_models,
    model_catalog_at,
    training_summary_at,
)
from event_sourcing.projections.runner import table_exists

MakeStore = Callable[..., es.EventStore]
History = tuple[es.EventStore, dict[str, es.RecordedEvent]]
SECOND = timedelta(seconds=1)


@pytest.fixture
def history(make_store: MakeStore) -> History:
    store = make_store(clock=SteppingClock())
    return store, build_ml_history(store)


def test_which_model_served_production_at_a_time(history: History) -> None:
    store, e = history
    m1_at, m2_at = e["m1_deployed"].created_at, e["m2_deployed"].created_at
    assert deployed_model_at(store, "wine-clf", m1_at - SECOND) is None
    for moment in (m1_at, m2_at - SECOND):
        served = deployed_model_at(store, "wine-clf", moment)
        assert served is not None and (served["model_id"], served["version"]) == ("m1", 1)
    served = deployed_model_at(store, "wine-clf", m2_at)
    assert served is not None and served["model_id"] == "m2"
    staging = deployed_model_at(store, "wine-clf", m2_at, environment="staging")
    assert staging is not None and staging["model_id"] == "m1"
    retired_at = e["m1_staging_retired"].created_at
    assert deployed_model_at(store, "wine-clf", retired_at, "staging") is None
    # The same question by global position.
    by_position = deployed_model_at(store, "wine-clf", e["m2_deployed"].position - 1)
    assert by_position is not None and by_position["model_id"] == "m1"


def test_model_catalog_at_a_time(history: History) -> None:
    store, e = history
    assert model_catalog_at(store, e["run1_completed"].created_at) == []
    early = model_catalog_at(store, e["run1_versioned"].created_at)
    assert [(m["model_id"], m["version"], m["status"]) for m in early] == [("m1", 1, "ready")]
    serving = model_catalog_at(store, e["m1_staging"].created_at)
    assert {m["model_id"]: m["environments"] for m in serving} == {
        "m1": ["production", "staging"], "m2": []
    }


def test_training_summary_as_it_looked_at_step_50(history: History) -> None:
    store, e = history
    runner = ProjectionRunner(store, builtin_projections())
    runner.run()
    live_checkpoint = runner.checkpoint("training_summaries")

    then = training_summary_at(store, "run-1", e["run1_step50"].position)

    assert then is not None
    assert (then["status"], then["last_step"], then["final_metrics"]) == ("running", 50, None)
    assert then["latest_metrics"] == {"accuracy": 0.5, "loss": 0.2}
    assert training_summary_at(store, "run-1", e["run1_started"].position - 1) is None
    # The live read model is untouched.
    live = get_training_summary(store, "run-1")
    assert live is not None and (live["status"], live["last_step"]) == ("completed", 100)
    assert runner.checkpoint("training_summaries") == live_checkpoint


def test_as_of_needs_no_live_read_model_and_creates_none(history: History) -> None:
    store, e = history
    with as_of(store, "model_catalog", e["run3_versioned"].created_at) as snapshot:
        assert [m["model_id"] for m in list_models(snapshot)] == ["m1", "m2"]
        assert snapshot.position == e["run3_versioned"].position
        assert snapshot.applied == 4 and snapshot.dead_letters == []
    with store.transaction() as tx:
        assert not table_exists(tx, "model_catalog")
        assert not table_exists(tx, "projection_checkpoints")


def test_any_projection_as_of_a_position(make_store: MakeStore) -> None:
    store = make_store(validate=False)
    store.append("s", [es.NewEvent("tick", {"value": v}) for v in range(1, 11)])

    def refuse_four(event: es.RecordedEvent) -> None:
        if event.payload["value"] == 4:
            raise ValueError("four")

    with as_of(store, counter_projection(hook=refuse_four), 6) as snapshot:
        assert snapshot.query("SELECT n, total FROM counter_totals") == [
            {"n": 5, "total": 1 + 2 + 3 + 5 + 6}
        ]
        [letter] = snapshot.dead_letters  # reported, not silently skipped
        assert (letter.position, letter.error) == (4, "ValueError: four")


def test_as_of_rejects_naive_times_and_bad_positions(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(es.EventValidationError, match="timezone-aware"):
        as_of(store, "deployments", datetime(2025, 1, 1))
    with pytest.raises(es.EventValidationError, match="position >= 0"):
        as_of(store, "deployments", -1)
    with pytest.raises(es.EventStoreError, match="no built-in projection named 'nope'"):
        as_of(store, "nope", 0)
