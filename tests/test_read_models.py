"""The built-in read models over a realistic ML history, and over what TrainingService and
inference logging really append; on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _projection_worker import CLEAN, FEATURES, SteppingClock, artifact, build_ml_history
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import TrainingProgress
from event_sourcing.catalog.ml_events import ModelEvaluated
from event_sourcing.projections import (
    ProjectionRunner,
    ReadModelMissingError,
    builtin_projections,
    current_deployment,
    get_inference_quality,
    get_model,
    get_model_provenance,
    get_training_summary,
    inference_quality_projection,
    list_deployments,
    list_models,
    list_trainings,
)
from event_sourcing.projections.runner import iso
from event_sourcing.training import TrainingService, log_feedback, log_prediction

MakeStore = Callable[..., es.EventStore]


@pytest.fixture
def history(make_store: MakeStore) -> tuple[es.EventStore, dict[str, es.RecordedEvent]]:
    store = make_store(clock=SteppingClock())
    events = build_ml_history(store)
    stats = ProjectionRunner(store, builtin_projections()).run()
    assert all(s.parked == 0 for s in stats.values()), stats
    return store, events


def test_training_summaries(history: tuple[es.EventStore, dict[str, es.RecordedEvent]]) -> None:
    store, e = history
    run1 = get_training_summary(store, "run-1")
    assert run1 is not None
    assert run1["status"] == "completed"
    assert run1["started_at"] == iso(e["run1_started"].created_at)
    assert run1["completed_at"] == iso(e["run1_completed"].created_at)
    assert run1["duration_seconds"] == 42.0
    assert (run1["user_id"], run1["dataset_id"], run1["dataset_version"]) == (
        "ada", "wine", FEATURES
    )
    assert run1["config"] == {"estimator": "logreg", "C": 1.0}
    assert run1["last_step"] == 100
    assert run1["latest_metrics"] == {"accuracy": 1.0, "loss": 0.1}
    assert run1["final_metrics"] == {"accuracy": 0.91}
    assert (run1["model_id"], run1["model_name"], run1["reproducible"]) == ("m1", "wine-clf", 1)

    run2 = get_training_summary(store, "run-2")
    assert run2 is not None
    assert (run2["status"], run2["error"], run2["last_step"]) == ("failed", "diverged", 30)
    assert run2["duration_seconds"] == (
        e["run2_failed"].created_at - e["run2_started"].created_at
    ).total_seconds()
    assert run2["final_metrics"] is None

    assert [r["training_id"] for r in list_trainings(store, status="completed")] == [
        "run-3", "run-1"
    ]
    assert list_trainings(store, status="running") == []
    assert get_training_summary(store, "nope") is None


def test_model_catalog(history: tuple[es.EventStore, dict[str, es.RecordedEvent]]) -> None:
    store, e = history
    models = {m["model_id"]: m for m in list_models(store)}
    assert set(models) == {"m1", "m2"}
    m1, m2 = models["m1"], models["m2"]
    assert (m1["name"], m1["version"], m1["training_id"]) == ("wine-clf", 1, "run-1")
    assert (m2["version"], m2["training_id"]) == (2, "run-3")
    # m1 served production and staging; m2 replaced it in production, staging retired it.
    assert (m1["status"], m1["environments"]) == ("retired", [])
    assert (m2["status"], m2["environments"]) == ("deployed", ["production"])
    ref = artifact("m1")
    assert (m1["artifact_uri"], m1["artifact_sha256"]) == (ref.uri, ref.sha256)
    assert m1["metrics"] == {"accuracy": 0.9}
    assert m1["created_at"] == iso(e["run1_created"].created_at)
    assert m1["updated_at"] == iso(e["m1_staging_retired"].created_at)
    assert [m["model_id"] for m in list_models(store, status="deployed")] == ["m2"]
    assert get_model(store, "m3") is None


def test_model_catalog_keeps_each_models_last_evaluation(
    history: tuple[es.EventStore, dict[str, es.RecordedEvent]],
) -> None:
    store, _ = history
    assert get_model(store, "m1")["last_evaluation"] is None  # type: ignore[index]

    def verdict(model_id: str, version: int, promoted: bool, reason: str) -> ModelEvaluated:
        return ModelEvaluated(
            model_id=model_id, model_name="wine-clf", version=version, champion_model_id="m2",
            dataset_version=FEATURES, metrics={"accuracy": 0.9},
            champion_metrics={"accuracy": 0.95}, promoted=promoted, reason=reason,
        )

    store.append("deployment:production", [verdict("m1", 1, True, "first look")])
    [last] = store.append("deployment:production", [verdict("m1", 1, False, "0.90 < 0.95")])
    store.append("deployment:production", [verdict("m9", 9, False, "trained elsewhere")])
    stats = ProjectionRunner(store, builtin_projections()).run("model_catalog")
    assert stats["model_catalog"].parked == 0

    m1 = get_model(store, "m1")
    assert m1 is not None
    assert m1["last_evaluation"] == {
        "event_id": last.id, "evaluated_at": iso(last.created_at), "environment": "production",
        "promoted": False, "reason": "0.90 < 0.95", "champion_model_id": "m2",
        "dataset_version": FEATURES, "metrics": {"accuracy": 0.9},
        "champion_metrics": {"accuracy": 0.95},
    }
    assert (m1["status"], m1["updated_at"]) == ("retired", iso(last.created_at))
    # A verdict on a model the catalog has not seen still gets it a row.
    m9 = get_model(store, "m9")
    assert m9 is not None and (m9["name"], m9["version"], m9["status"]) == ("wine-clf", 9, "ready")
    assert m9["last_evaluation"]["reason"] == "trained elsewhere"


def test_model_provenance(history: tuple[es.EventStore, dict[str, es.RecordedEvent]]) -> None:
    store, e = history
    row = get_model_provenance(store, "m1")
    assert row is not None
    assert row["training_run_id"] == "run-1"
    assert (row["dataset_id"], row["dataset_version"], row["feature_version"]) == (
        "wine", FEATURES, "fv1"
    )
    assert row["code_version"] == {
        "package_version": "0.1.0", "git_commit": "abc123", "source_sha256": None
    }
    assert row["hyperparameters"] == {"C": 1.0} and row["seed"] == 7
    assert row["training_environment"]["python"] == "3.11.9"
    assert row["created_at"] == iso(e["run1_completed"].created_at)
    assert get_model_provenance(store, "run-2") is None  # failed runs make no model


def test_deployments(history: tuple[es.EventStore, dict[str, es.RecordedEvent]]) -> None:
    store, e = history
    rows = list_deployments(store)
    assert [(r["model_id"], r["environment"]) for r in rows] == [
        ("m1", "production"), ("m1", "staging"), ("m2", "production")
    ]
    prod_m1, staging_m1, prod_m2 = rows
    assert prod_m1["deployed_at"] == iso(e["m1_deployed"].created_at)
    assert prod_m1["retired_at"] == iso(e["m2_deployed"].created_at)
    assert (prod_m1["replaced_by_model_id"], prod_m1["retired_reason"]) == ("m2", "replaced")
    assert staging_m1["retired_at"] == iso(e["m1_staging_retired"].created_at)
    assert staging_m1["retired_reason"] == "retired"
    assert prod_m2["retired_at"] is None

    serving = current_deployment(store, "wine-clf", "production")
    assert serving is not None and (serving["model_id"], serving["version"]) == ("m2", 2)
    assert current_deployment(store, "wine-clf", "staging") is None
    assert len(list_deployments(store, environment="production", active_only=True)) == 1


def test_inference_quality_per_version(
    history: tuple[es.EventStore, dict[str, es.RecordedEvent]],
) -> None:
    store, _ = history
    rows = {(r["model_id"], r["model_version"]): r for r in get_inference_quality(store)}
    assert rows[("m1", 1)]["predictions"] == 1 and rows[("m1", 1)]["feedback"] == 1
    assert rows[("m1", 1)]["rolling_accuracy"] == 1.0
    assert rows[("m2", 2)]["rolling_accuracy"] == 0.0
    assert rows[("m2", 2)]["rolling_mae"] is None  # labels, not numbers


def test_inference_quality_rolling_window(make_store: MakeStore) -> None:
    store = make_store()
    labels = ["a", "a", "b", "b", "b"]  # the model always says "a": right, right, then wrong
    for label in labels:
        log_feedback(store, log_prediction(store, "clf", 1, {"x": 1}, "a"), label)
    for predicted, actual in [(1.5, 2.0), (2.5, 2.5), (5.5, 1.5), (3.25, 3.75)]:
        log_feedback(store, log_prediction(store, "reg", 4, [1.0, 2.0], predicted), actual)

    runner = ProjectionRunner(store, [inference_quality_projection(window=3)])
    runner.run()
    rows = {r["model_id"]: r for r in get_inference_quality(store)}
    clf, reg = rows["clf"], rows["reg"]
    assert (clf["predictions"], clf["feedback"], clf["window_count"]) == (5, 5, 3)
    assert clf["rolling_accuracy"] == 0.0  # the last three were all wrong
    assert (reg["model_version"], reg["feedback"], reg["rolling_accuracy"]) == (4, 4, None)
    assert reg["rolling_mae"] == pytest.approx((0.0 + 4.0 + 0.5) / 3)
    with store.transaction() as tx:
        kept = tx.execute("SELECT count(*) FROM inference_quality_window").fetchone()[0]
    assert kept == 6  # the window side table holds only the last N per model version

    # A wider window is a new projection version: the runner rebuilds the figures.
    wider = ProjectionRunner(store, [inference_quality_projection(window=5)]).run()
    assert wider["inference_quality"].rebuilt
    clf = get_inference_quality(store, "clf")[0]
    assert (clf["window_size"], clf["rolling_accuracy"]) == (5, pytest.approx(2 / 5))


def test_training_service_and_inference_logging_feed_every_read_model(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    service = TrainingService(store, ArtifactStore(tmp_path / "artifacts"))
    iris = load_iris(as_frame=True).frame

    def train(dataset: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
        X, y = dataset.drop(columns="target"), dataset["target"]
        return LogisticRegression(max_iter=500, random_state=seed, **hyperparameters).fit(X, y)

    X = iris.drop(columns="target")
    outcome = service.train(
        train, iris, hyperparameters={"C": 0.5}, seed=3, X_eval=X.head(5), model_name="iris",
        feature_version="fv-iris", user_id="grace",
        evaluate=lambda model: {"accuracy": float(model.score(X, iris["target"]))},
    )
    predicted = int(outcome.model.predict(X.head(1))[0])
    inference = log_prediction(store, outcome.model_id, 1, X.iloc[0], predicted)
    log_feedback(store, inference, predicted)

    stats = ProjectionRunner(store, builtin_projections()).run()
    assert all(s.parked == 0 for s in stats.values()), stats
    summary = get_training_summary(store, outcome.training_id)
    assert summary is not None
    assert (summary["status"], summary["model_id"], summary["user_id"]) == (
        "completed", outcome.model_id, "grace"
    )
    assert summary["final_metrics"] == outcome.metrics
    model = get_model(store, outcome.model_id)
    assert model is not None
    assert (model["name"], model["version"], model["status"]) == ("iris", 1, "ready")
    assert model["fingerprint"] == outcome.fingerprint
    provenance = get_model_provenance(store, outcome.model_id)
    assert provenance is not None
    assert provenance["feature_version"] == "fv-iris"
    assert provenance["hyperparameters"] == {"C": 0.5} and provenance["seed"] == 3
    assert provenance["code_version"]["source_sha256"]
    [quality] = get_inference_quality(store, outcome.model_id)
    assert (quality["predictions"], quality["feedback"], quality["rolling_accuracy"]) == (1, 1, 1.0)


def test_an_update_without_its_start_is_parked_not_dropped(make_store: MakeStore) -> None:
    store = make_store()
    store.append("orphan-run", [TrainingProgress(step=1)])
    runner = ProjectionRunner(store, builtin_projections())
    assert runner.run("training_summaries")["training_summaries"].parked == 1
    [letter] = runner.dead_letters("training_summaries")
    assert "orphan-run" in letter.error and "training_started was not applied" in letter.error


def test_queries_before_the_projections_ran_say_what_to_do(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(ReadModelMissingError, match="mlevents project"):
        list_models(store)
    assert CLEAN  # the shared history's constants import cleanly


def test_reading_a_read_model_does_not_hold_appends_back(tmp_path: Path) -> None:
    """A read-only read-model transaction on SQLite takes no write lock: an append from
    another connection, which waits for no lock at all (busy timeout 0), goes through."""
    from event_sourcing.stores.sqlite import SQLiteRecorder

    path = str(tmp_path / "events.db")
    store = es.connect(f"sqlite:///{path}", clock=SteppingClock())
    impatient = es.EventStore(SQLiteRecorder(path, busy_timeout_ms=0), validate=False)
    try:
        build_ml_history(store)
        ProjectionRunner(store, builtin_projections()).run()
        with store.transaction(read_only=True) as tx:
            assert tx.execute("SELECT count(*) FROM deployments").fetchone()[0] > 0
            impatient.append("while-reading", [es.NewEvent("noise", {})])
        assert impatient.stream_version("while-reading") == 1
    finally:
        impatient.close()
        store.close()


def test_read_model_queries_go_through_while_another_connection_writes(tmp_path: Path) -> None:
    """On SQLite the read-model queries take no write lock: while another connection holds
    it, each query answers on a store that waits for no lock (busy timeout 0)."""
    import sqlite3

    from event_sourcing.stores.sqlite import SQLiteRecorder

    path = str(tmp_path / "events.db")
    with es.connect(f"sqlite:///{path}", clock=SteppingClock()) as store:
        build_ml_history(store)
        ProjectionRunner(store, builtin_projections()).run()
    impatient = es.EventStore(SQLiteRecorder(path, busy_timeout_ms=0), validate=False)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert list_models(impatient) and list_trainings(impatient)
        assert list_deployments(impatient) and get_inference_quality(impatient)
        assert get_model_provenance(impatient, list_models(impatient)[0]["model_id"])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        impatient.close()


def read_all_models(store: es.EventStore) -> dict[str, list[tuple[Any, ...]]]:
    tables = [t for p in builtin_projections() for t in p.tables]
    with store.transaction(read_only=True) as tx:
        return {t: sorted(tx.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_a_page_at_once_gives_what_one_event_at_a_time_gives(
    history: tuple[es.EventStore, dict[str, es.RecordedEvent]],
) -> None:
    """Catch-up applies a page per transaction and skips progress events a later one of the
    same run overwrites; one event per batch must give the very same rows."""
    store, _ = history
    paged = read_all_models(store)
    runner = ProjectionRunner(store, builtin_projections())
    for projection in builtin_projections():
        runner.rebuild(projection.name, batch_size=1)
    assert read_all_models(store) == paged


def test_serving_answers_from_the_read_model_as_fresh_as_the_log(make_store: MakeStore) -> None:
    """serving.current_deployment catches the deployments read model up on every question,
    so a deployment or retirement just appended is already the answer."""
    from event_sourcing.catalog import ModelDeployed, ModelRetired
    from event_sourcing.serving import current_deployment as serving_now
    from event_sourcing.serving import deployments

    store = make_store()
    assert serving_now(store) is None
    [first] = store.append("d", [ModelDeployed(model_id="m1", model_name="clf", version=1)])
    now = serving_now(store)
    assert now is not None and (now.model_id, now.deployed_event.id) == ("m1", first.id)
    store.append("d", [ModelDeployed(model_id="m2", model_name="clf", version=2)])
    store.append("d", [ModelDeployed(model_id="s1", model_name="clf", version=1,
                                     environment="staging")])
    assert {k: d.model_id for k, d in deployments(store).items()} == {
        ("production", "clf"): "m2", ("staging", "clf"): "s1"
    }
    store.append("d", [ModelRetired(model_id="m2", model_name="clf", version=2)])
    assert serving_now(store) is None
    staging = serving_now(store, "staging", "clf")
    assert staging is not None and staging.model_id == "s1"
