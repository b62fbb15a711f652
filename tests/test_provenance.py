"""Lineage, impact and explain over a recorded ML history, their renderings (dict, Mermaid,
OpenLineage) and the CLI commands; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _projection_worker import CLEAN, FEATURES, RAW, SteppingClock, build_ml_history, sha
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

import event_sourcing as es
import event_sourcing.cli as cli
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import ModelDeployed
from event_sourcing.provenance import (
    Edge,
    LineageGraph,
    Node,
    ProvenanceError,
    build_graph,
    explain,
    impact,
    lineage,
)
from event_sourcing.provenance.lineage import _subgraph
from event_sourcing.training import TrainingService, log_prediction

MakeStore = Callable[..., es.EventStore]
History = tuple[es.EventStore, dict[str, es.RecordedEvent]]


@pytest.fixture
def history(make_store: MakeStore) -> History:
    store = make_store(clock=SteppingClock())
    return store, build_ml_history(store)


def edges(graph: LineageGraph) -> set[tuple[str, str, str]]:
    return {(e.source, e.target, e.relation) for e in graph.edges}


def assert_proven(store: es.EventStore, graph: LineageGraph) -> None:
    """Every node and edge carries event ids, and each names a recorded event."""
    items: list[Node | Edge] = [*graph.nodes.values(), *graph.edges]
    for item in items:
        assert item.event_ids, f"{item} carries no proof"
    for event_id in graph.event_ids():
        assert store.get_event(event_id) is not None


def test_lineage_walks_model_to_ingestion_batches(history: History) -> None:
    store, e = history
    graph = lineage(store, "m1")

    assert graph.root == "model:m1" and graph.direction == "upstream"
    feature = "feature:wine_features@fv1"
    b1, b2 = f"ingestion:{e['ingested_b1'].id}", f"ingestion:{e['ingested_b2'].id}"
    assert set(graph.nodes) == {
        "model:m1", "training:run-1", f"dataset:{FEATURES}", feature, f"dataset:{CLEAN}",
        f"dataset:{RAW}", b1, b2,
    }
    assert edges(graph) == {
        (b1, f"dataset:{RAW}", "ingested"),
        (b2, f"dataset:{RAW}", "ingested"),
        (f"dataset:{RAW}", f"dataset:{CLEAN}", "preprocessed"),
        (f"dataset:{CLEAN}", feature, "features_computed"),
        (feature, f"dataset:{FEATURES}", "materialized"),
        (f"dataset:{FEATURES}", "training:run-1", "trained_on"),
        (feature, "training:run-1", "features_used"),
        ("training:run-1", "model:m1", "produced"),
    }
    batch = graph.node(b1).attributes
    assert (batch["source_uri"], batch["content_sha256"], batch["batch_id"]) == (
        "s3://lake/b1.csv", sha("b1"), "b1"
    )
    run = graph.node("training:run-1")
    assert run.event_ids[:2] == [e["run1_started"].id, e["run1_completed"].id]
    assert run.attributes["code_version"]["git_commit"] == "abc123"
    assert run.attributes["verifications"] == [{"reproducible": True, "differences": []}]
    model = graph.node("model:m1")
    assert set(model.event_ids) == {
        e["run1_completed"].id, e["run1_created"].id, e["run1_versioned"].id,
        e["m1_deployed"].id, e["m1_staging"].id,
    }
    assert (model.attributes["model_name"], model.attributes["version"]) == ("wine-clf", 1)
    assert set(graph.node(f"dataset:{CLEAN}").event_ids) == {
        e["preprocessed"].id, e["validated"].id
    }
    assert_proven(store, graph)


def test_lineage_by_name_and_version(history: History) -> None:
    store, _ = history
    assert lineage(store, "wine-clf").root == "model:m2"  # the latest version
    assert lineage(store, "wine-clf@1").root == "model:m1"
    with pytest.raises(ProvenanceError, match="no model 'm9'"):
        lineage(store, "m9")


def test_impact_of_a_bad_raw_dataset(history: History) -> None:
    store, _ = history
    graph = impact(store, RAW)

    assert graph.root == f"dataset:{RAW}" and graph.direction == "downstream"
    kinds: dict[str, set[str]] = {}
    for node in graph.nodes.values():
        kinds.setdefault(node.kind, set()).add(node.id)
    assert kinds["training_run"] == {"training:run-1", "training:run-2", "training:run-3"}
    assert kinds["model"] == {"model:m1", "model:m2"}
    assert kinds["feature_version"] == {"feature:wine_features@fv1"}
    assert kinds["dataset_version"] == {f"dataset:{RAW}", f"dataset:{CLEAN}", f"dataset:{FEATURES}"}
    deployments = {n.attributes["environment"] + ":" + n.attributes["model_id"]: n.attributes
                   for n in graph.of_kind("deployment")}
    assert set(deployments) == {"production:m1", "staging:m1", "production:m2"}
    assert deployments["production:m2"]["retired_at"] is None
    assert deployments["production:m1"]["replaced_by_model_id"] == "m2"
    assert "ingestion_batch" not in kinds  # upstream of the dataset, not downstream
    assert_proven(store, graph)

    assert impact(store, CLEAN[:8]).root == f"dataset:{CLEAN}"
    assert set(impact(store, FEATURES).nodes) >= {"training:run-3", "model:m2"}
    with pytest.raises(ProvenanceError, match="6\\+ leading"):
        impact(store, CLEAN[:3])
    with pytest.raises(ProvenanceError, match="no dataset version"):
        impact(store, sha("never landed"))


def test_explain_names_the_serving_model_and_its_lineage(history: History) -> None:
    store, e = history
    graph = explain(store, "inf-2")

    assert graph.root == "inference:inf-2" and graph.direction == "explain"
    inference = graph.node("inference:inf-2").attributes
    assert (inference["model_id"], inference["model_version"], inference["prediction"]) == (
        "m2", 2, "b"
    )
    assert inference["feedback"] == [{"actual": "a", "correct": False}]
    assert inference["serving_environments"] == ["production"]
    [deployment] = graph.of_kind("deployment")
    assert deployment.event_ids[0] == e["m2_deployed"].id
    assert (deployment.id, "inference:inf-2", "served") in edges(graph)
    assert ("model:m2", deployment.id, "deployed") in edges(graph)
    assert {"training:run-3", f"dataset:{RAW}"} <= set(graph.nodes)
    assert "model:m1" not in graph.nodes
    assert_proven(store, graph)

    # By the id of the inference_completed event: the same prediction.
    assert set(explain(store, e["inference_2"].id).nodes) == set(graph.nodes)
    # inf-1 ran while m1 served production and staging: the event names no environment.
    first = explain(store, "inf-1")
    assert first.node("inference:inf-1").attributes["serving_environments"] == [
        "production", "staging"
    ]
    assert ("model:m1", "inference:inf-1", "served") in edges(first)
    with pytest.raises(ProvenanceError, match="no prediction"):
        explain(store, "inf-404")
    with pytest.raises(ProvenanceError, match="no prediction"):
        explain(store, str(uuid.uuid4()))


def test_explain_picks_the_deployment_of_the_recorded_environment(history: History) -> None:
    store, _ = history
    # m2 serves production; deploying it to staging too leaves two deployments of it open.
    [staging] = store.append(
        "deployments:wine-clf",
        [ModelDeployed(model_id="m2", model_name="wine-clf", version=2, environment="staging")],
    )
    served = log_prediction(store, "m2", 2, {"a": 1.0}, "b", environment="staging")
    unnamed = log_prediction(store, "m2", 2, {"a": 1.0}, "b")
    elsewhere = log_prediction(store, "m2", 2, {"a": 1.0}, "b", environment="canary")
    assert store.read_stream(served)[0].payload["environment"] == "staging"
    assert store.read_stream(unnamed)[0].payload["environment"] is None

    graph = explain(store, served)
    inference = graph.node(f"inference:{served}").attributes
    assert (inference["environment"], inference["serving_environments"]) == (
        "staging", ["staging"]
    )
    assert "environment_mismatch" not in inference
    [deployment] = graph.of_kind("deployment")
    assert deployment.event_ids[0] == staging.id
    assert (deployment.id, f"inference:{served}", "served") in edges(graph)
    assert_proven(store, graph)

    # No environment recorded: every open deployment is shown, none is picked.
    graph = explain(store, unnamed)
    assert graph.node(f"inference:{unnamed}").attributes["serving_environments"] == [
        "production", "staging"
    ]
    assert len(graph.of_kind("deployment")) == 2
    assert ("model:m2", f"inference:{unnamed}", "served") in edges(graph)

    # An environment where the model was not deployed is reported, not guessed around.
    graph = explain(store, elsewhere)
    inference = graph.node(f"inference:{elsewhere}").attributes
    assert inference["serving_environments"] == [] and graph.of_kind("deployment") == []
    assert "'canary'" in inference["environment_mismatch"]
    assert ("model:m2", f"inference:{elsewhere}", "served") in edges(graph)


def test_renderings(history: History) -> None:
    store, e = history
    graph = lineage(store, "m1")

    as_dict = json.loads(json.dumps(graph.to_dict()))
    assert as_dict["root"] == "model:m1"
    assert len(as_dict["nodes"]) == 8 and len(as_dict["edges"]) == 8

    mermaid = graph.to_mermaid().splitlines()
    assert mermaid[0] == "flowchart LR"
    assert sum("-->" in line for line in mermaid) == 8
    assert any("model wine-clf v1<br/>m1" in line for line in mermaid)

    events = json.loads(json.dumps(graph.to_openlineage()))
    for event in events:
        assert event["eventType"] in {"COMPLETE", "FAIL", "RUNNING"}
        assert event["schemaURL"].startswith("https://openlineage.io/spec/")
        uuid.UUID(event["run"]["runId"])
        assert event["job"]["namespace"] == "mlevents" and event["job"]["name"]
        assert event["eventTime"]
        for dataset in event["inputs"] + event["outputs"]:
            assert dataset["namespace"] and dataset["name"]
            for facet in dataset["facets"].values():
                assert facet["_producer"] and facet["_schemaURL"]
    by_job = {event["job"]["name"]: event for event in events}
    training = by_job["train/wine-clf"]
    assert training["run"]["runId"] == e["run1_started"].id
    assert {d["name"] for d in training["inputs"]} == {
        f"dataset:{FEATURES}", "feature:wine_features@fv1"
    }
    assert [d["name"] for d in training["outputs"]] == ["model:m1"]
    ingest = [ev for ev in events if ev["job"]["name"] == "ingest/wine"]
    assert len(ingest) == 2
    assert {(ev["inputs"][0]["namespace"], ev["inputs"][0]["name"]) for ev in ingest} == {
        ("s3://lake", "b1.csv"), ("s3://lake", "b2.csv")
    }
    assert ingest[0]["outputs"][0]["facets"]["version"]["datasetVersion"] == RAW
    assert "preprocessed/wine" in by_job and "features_computed/wine_features" in by_job
    run_ids = [event["run"]["runId"] for event in events]
    assert len(run_ids) == len(set(run_ids))  # one event proving two steps: still two runs
    # A prediction served through a deployment has the model as its input.
    [predict] = [ev for ev in explain(store, "inf-2").to_openlineage()
                 if ev["job"]["name"] == "predict/m2"]
    assert [d["name"] for d in predict["inputs"]] == ["model:m2"]


def test_mermaid_escapes_quotes() -> None:
    graph = LineageGraph(
        root="a", direction="upstream",
        nodes={"a": Node("a", "model", 'model "x"\nv1'), "b": Node("b", "training_run", "run")},
        edges=[Edge("b", "a", "produced")],
    )
    text = graph.to_mermaid()
    assert 'n0[["model #quot;x#quot;<br/>v1"]]' in text
    assert 'n1 -->|"produced"| n0' in text


def test_explain_a_prediction_logged_by_the_training_service(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    iris = load_iris(as_frame=True).frame

    def tree(dataset: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
        return DecisionTreeClassifier(random_state=seed, **hyperparameters).fit(
            dataset.drop(columns="target"), dataset["target"]
        )

    outcome = TrainingService(store, ArtifactStore(tmp_path)).train(
        tree, iris, hyperparameters={"max_depth": 2}, seed=1, model_name="iris-tree"
    )
    inference = log_prediction(store, outcome.model_id, 1, {"sepal": 1.0}, 0)

    graph = explain(store, inference)
    model = graph.node(f"model:{outcome.model_id}")
    assert (model.attributes["model_name"], model.attributes["version"]) == ("iris-tree", 1)
    run = graph.node(f"training:{outcome.training_id}")
    assert run.attributes["hyperparameters"] == {"max_depth": 2}
    [dataset] = graph.of_kind("dataset_version")
    assert dataset.attributes["uri"].startswith("artifact://sha256/")
    assert graph.node(f"inference:{inference}").attributes["serving_environments"] == []
    assert_proven(store, graph)


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def mlevents(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `mlevents ARGS`; return (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = cli.main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_cli_lineage_impact_explain(history: History, store_url: str, mlevents: Any) -> None:
    status, out, _ = mlevents("lineage", "m1", "--url", store_url)
    assert status == 0 and json.loads(out)["root"] == "model:m1"
    status, out, _ = mlevents("lineage", "wine-clf@1", store_url, "--format", "mermaid")
    assert status == 0 and out.startswith("flowchart LR")
    status, out, _ = mlevents("impact", RAW[:10], "--url", store_url, "--format", "openlineage")
    assert status == 0 and all(json.loads(line)["eventType"] for line in out.splitlines())
    status, out, _ = mlevents("explain", "inf-2", "--url", store_url)
    assert status == 0 and json.loads(out)["root"] == "inference:inf-2"
    status, _, err = mlevents("explain", "nope", "--url", store_url)
    assert status == 2 and "no prediction 'nope'" in err


def test_cli_project_and_read_models(history: History, store_url: str, mlevents: Any) -> None:
    _, e = history
    status, out, _ = mlevents("project", "--url", store_url)
    lines = {row["projection"]: row for row in map(json.loads, out.splitlines())}
    assert status == 0 and set(lines) == {
        "training_summaries", "model_catalog", "model_provenance", "deployments",
        "inference_quality",
    }
    assert all(row["lag"] == 0 and row["dead_letters"] == 0 for row in lines.values())
    # 3 starts, 10 + 3 + 2 steps, 2 completions, 1 failure, 1 verification
    assert lines["training_summaries"]["applied"] == 3 + 15 + 2 + 1 + 1

    status, out, _ = mlevents("models", store_url, "--status", "deployed")
    assert status == 0 and [json.loads(x)["model_id"] for x in out.splitlines()] == ["m2"]
    status, out, _ = mlevents("trainings", store_url, "--status", "failed")
    assert [json.loads(x)["training_id"] for x in out.splitlines()] == ["run-2"]
    before_m2 = (e["m2_deployed"].created_at - timedelta(seconds=1)).isoformat()
    status, out, _ = mlevents(
        "deployments", store_url, "--as-of", before_m2, "--environment", "production", "--active"
    )
    assert status == 0 and [json.loads(x)["model_id"] for x in out.splitlines()] == ["m1"]
    status, out, _ = mlevents("deployments", store_url, "--as-of", str(e["m2_deployed"].position))
    assert [json.loads(x)["model_id"] for x in out.splitlines()] == ["m1", "m1", "m2"]

    status, out, _ = mlevents("project", store_url, "--rebuild", "deployments")
    rebuilt = [json.loads(x) for x in out.splitlines() if '"deployments"' in x]
    assert status == 0 and rebuilt[0]["rebuilt"] is True and rebuilt[0]["read"] == 4
    status, out, _ = mlevents("project", store_url, "--follow", "--max-idle", "0.01",
                              "--poll-interval", "0.01")
    assert status == 0 and len(out.splitlines()) == 5
    status, _, err = mlevents("models", store_url, "--as-of", "2025-01-01T00:00:00")
    assert status == 2 and "has no timezone" in err


def test_indexed_answers_are_the_whole_log_answers(history: History) -> None:
    """Lineage and impact fold only the events the provenance index finds for them; the
    result is what walking the graph of the whole log gives, for every model and dataset."""
    store, _ = history
    whole = build_graph(store)
    models = [node.id for node in whole.of_kind("model")]
    datasets = [node.id for node in whole.of_kind("dataset_version")]
    assert models and datasets
    for model in models:
        expected = _subgraph(whole, model, "upstream").to_dict()
        assert lineage(store, model.removeprefix("model:")).to_dict() == expected
    for dataset in datasets:
        expected = _subgraph(whole, dataset, "downstream").to_dict()
        assert impact(store, dataset.removeprefix("dataset:")).to_dict() == expected


def test_provenance_reads_the_index_not_the_log(history: History) -> None:
    """The index is a projection: caught up on demand, then only new events are read."""
    from event_sourcing.projections import ProjectionRunner
    from event_sourcing.provenance.index import PROVENANCE_INDEX, provenance_index_projection

    store, _ = history
    lineage(store, "m1")
    runner = ProjectionRunner(store, [provenance_index_projection()])
    assert runner.lag(PROVENANCE_INDEX) == 0
    with store.transaction(read_only=True) as tx:
        assert tx.execute("SELECT count(*) FROM provenance_edges").fetchone()[0] > 0


def test_provenance_and_serving_on_a_single_connection(pg_schema_url: str) -> None:
    """Nothing here holds a connection while asking for another: a store with a pool of one
    connection answers lineage, impact, explain and serving, and catches projections up."""
    from event_sourcing.projections import ProjectionRunner, builtin_projections
    from event_sourcing.serving import current_deployment as serving_now

    with es.connect(pg_schema_url, clock=SteppingClock(), pool_size=1) as store:
        events = build_ml_history(store)
        assert lineage(store, "m1").root == "model:m1"
        assert impact(store, RAW).root == f"dataset:{RAW}"
        assert explain(store, events["inference_2"].stream_id).root.startswith("inference:")
        now = serving_now(store, "production", "wine-clf")
        assert now is not None and now.model_id == "m2"
        stats = ProjectionRunner(store, builtin_projections()).run()
        assert all(s.parked == 0 for s in stats.values())


def test_the_index_of_a_page_at_once_is_the_index_of_one_event_at_a_time(
    history: History,
) -> None:
    """The index writes a page's rows at once (deployments closed and features linked by
    earlier events of the same page included): its tables hold what indexing one event per
    batch gives."""
    from event_sourcing.projections import ProjectionRunner
    from event_sourcing.provenance.index import (
        _TABLES,
        PROVENANCE_INDEX,
        provenance_index_projection,
    )

    store, _ = history

    def index() -> dict[str, list[tuple[Any, ...]]]:
        with store.transaction(read_only=True) as tx:
            return {t: sorted(tx.execute(f"SELECT * FROM {t}").fetchall()) for t in _TABLES}

    runner = ProjectionRunner(store, [provenance_index_projection()])
    assert runner.rebuild(PROVENANCE_INDEX).batches == 1
    paged = index()
    assert paged["provenance_edges"] and paged["provenance_node_events"]
    runner.rebuild(PROVENANCE_INDEX, batch_size=1)
    assert index() == paged
