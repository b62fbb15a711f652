"""Lineage, impact and explain: provenance graphs folded from the events of the log.

The provenance index (a projection) finds the nodes a question reaches and the events that
record them; folding those events gives what folding the whole log (`build_graph`) gives.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from event_sourcing.catalog import (
    DataIngested,
    DataPreprocessed,
    DataValidated,
    DomainEvent,
    EventTypes,
    FeatureComputed,
    FeatureValidated,
    FeatureVersioned,
    InferenceCompleted,
    InferenceFeedback,
    InferenceRequested,
    ModelCreated,
    ModelDeployed,
    ModelRetired,
    ModelVersioned,
    TrainingCompleted,
    TrainingFailed,
    TrainingStarted,
    TrainingVerified,
)
from event_sourcing.errors import EventStoreError
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.runner import iso
from event_sourcing.provenance.graph import Edge, LineageGraph, Node
from event_sourcing.provenance.index import (
    catch_up,
    datasets_with_prefix,
    event_ids,
    is_node,
    models_named,
    neighbours,
    reachable,
    read_events,
)
from event_sourcing.stores.store import EventStore

__all__ = ["PROVENANCE_EVENT_TYPES", "ProvenanceError", "build_graph", "explain", "impact",
           "lineage"]

PROVENANCE_EVENT_TYPES = (
    EventTypes.DATA_INGESTED, EventTypes.DATA_PREPROCESSED, EventTypes.DATA_VALIDATED,
    EventTypes.FEATURE_COMPUTED, EventTypes.FEATURE_VALIDATED, EventTypes.FEATURE_VERSIONED,
    EventTypes.TRAINING_STARTED, EventTypes.TRAINING_COMPLETED, EventTypes.TRAINING_FAILED,
    EventTypes.TRAINING_VERIFIED, EventTypes.MODEL_CREATED, EventTypes.MODEL_VERSIONED,
    EventTypes.MODEL_DEPLOYED, EventTypes.MODEL_RETIRED,
)
"""The event types the provenance graph is built from (progress and inference are not)."""


class ProvenanceError(EventStoreError, LookupError):
    """The model, dataset version or prediction asked about is not in the log."""


def _short(digest: str) -> str:
    return digest[:12]


class _Builder:
    """Folds provenance events, in position order, into one graph of the whole log."""

    def __init__(self) -> None:
        self.graph = LineageGraph(root="", direction="all")
        self._edges: dict[tuple[str, str, str], Edge] = {}
        self._trainings_by_feature: list[tuple[str, str, RecordedEvent]] = []
        self._feature_artifacts: dict[str, str] = {}  # artifact sha256 -> feature node id

    def node(self, node_id: str, kind: str, label: str, event: RecordedEvent | None) -> Node:
        node = self.graph.nodes.get(node_id)
        if node is None:
            node = self.graph.nodes[node_id] = Node(node_id, kind, label)
        if event is not None:
            if event.id not in node.event_ids:
                node.event_ids.append(event.id)
            node.recorded_at = iso(event.created_at)
        return node

    def edge(self, source: str, target: str, relation: str, event: RecordedEvent) -> None:
        key = (source, target, relation)
        edge = self._edges.get(key)
        if edge is None:
            edge = self._edges[key] = Edge(source, target, relation)
            self.graph.edges.append(edge)
        if event.id not in edge.event_ids:
            edge.event_ids.append(event.id)
        edge.recorded_at = iso(event.created_at)

    def dataset(self, version: str, dataset_id: str | None, event: RecordedEvent | None) -> Node:
        node = self.node(f"dataset:{version}", "dataset_version", "", event)
        node.attributes.setdefault("version", version)
        if dataset_id:
            node.attributes["dataset_id"] = dataset_id
        return node

    def feature(self, feature_set: str, version: str, event: RecordedEvent) -> Node:
        node = self.node(
            f"feature:{feature_set}@{version}", "feature_version",
            f"features {feature_set}\n{version}", event,
        )
        node.attributes.update(feature_set=feature_set, feature_version=version)
        return node

    def model(self, model_id: str, event: RecordedEvent) -> Node:
        node = self.node(f"model:{model_id}", "model", "", event)
        node.attributes["model_id"] = model_id
        return node

    # -- folding ----------------------------------------------------------------------------
    def add(self, event: RecordedEvent, typed: DomainEvent) -> None:
        if isinstance(typed, DataIngested):
            batch = self.node(
                f"ingestion:{event.id}", "ingestion_batch",
                f"ingest {typed.batch_id or event.id[:8]}\n{typed.source_uri}", event,
            )
            batch.attributes.update(
                dataset_id=typed.dataset_id, batch_id=typed.batch_id,
                source_uri=typed.source_uri, content_sha256=typed.content_sha256,
                rows=typed.rows, artifact_uri=typed.artifact.uri if typed.artifact else None,
                ingested_at=iso(typed.ingested_at or event.occurred_at),
            )
            data = self.dataset(typed.dataset_version, typed.dataset_id, event)
            data.attributes["columns"] = typed.columns
            self.edge(batch.id, data.id, "ingested", event)
        elif isinstance(typed, DataPreprocessed):
            source = self.dataset(typed.input_version, typed.dataset_id, None)
            target = self.dataset(typed.output_version, typed.dataset_id, event)
            target.attributes.update(steps=typed.steps, rows=typed.rows_out)
            self.edge(source.id, target.id, "preprocessed", event)
        elif isinstance(typed, DataValidated):
            data = self.dataset(typed.dataset_version, typed.dataset_id, event)
            data.attributes["validation_passed"] = typed.passed
        elif isinstance(typed, FeatureComputed | FeatureVersioned):
            feature = self.feature(typed.feature_set, typed.feature_version, event)
            feature.attributes["features"] = typed.features
            if isinstance(typed, FeatureVersioned):
                feature.attributes["code_sha256"] = typed.code_sha256
            elif typed.artifact is not None:
                feature.attributes["artifact_uri"] = typed.artifact.uri
                self._feature_artifacts[typed.artifact.sha256] = feature.id
            source = self.dataset(typed.dataset_version, None, None)
            self.edge(source.id, feature.id, "features_computed", event)
        elif isinstance(typed, FeatureValidated):
            feature = self.feature(typed.feature_set, typed.feature_version, event)
            feature.attributes["validation_passed"] = typed.passed
        elif isinstance(typed, TrainingStarted):
            self._training_started(event, typed)
        elif isinstance(typed, TrainingCompleted):
            run = self.node(f"training:{event.stream_id}", "training_run", "", event)
            run.attributes.update(
                status="completed", completed_at=iso(typed.completed_at or event.occurred_at),
                final_metrics=typed.final_metrics, model_id=typed.model_id,
                model_fingerprint=typed.model_fingerprint,
                model_name=typed.model_name or run.attributes.get("model_name"),
            )
            run.label = f"training {event.stream_id}\ncompleted"
            model = self.model(typed.model_id, event)
            model.attributes.update(
                artifact_uri=typed.model_artifact.uri,
                artifact_sha256=typed.model_artifact.sha256,
                fingerprint=typed.model_fingerprint, metrics=typed.final_metrics,
            )
            if typed.model_name:
                model.attributes.setdefault("model_name", typed.model_name)
            self.edge(run.id, model.id, "produced", event)
        elif isinstance(typed, TrainingFailed):
            run = self.node(f"training:{event.stream_id}", "training_run", "", event)
            run.attributes.update(status="failed", error=typed.error, error_type=typed.error_type)
            run.label = f"training {event.stream_id}\nfailed"
        elif isinstance(typed, TrainingVerified):
            run = self.node(f"training:{typed.training_id}", "training_run", "", event)
            run.attributes.setdefault("verifications", []).append(
                {"reproducible": typed.reproducible, "differences": typed.differences}
            )
        elif isinstance(typed, ModelCreated | ModelVersioned):
            model = self.model(typed.model_id, event)
            model.attributes.update(
                model_name=typed.model_name, training_id=typed.training_id,
                artifact_uri=typed.artifact.uri, artifact_sha256=typed.artifact.sha256,
                metrics=typed.metrics,
            )
            if isinstance(typed, ModelVersioned):
                model.attributes["version"] = typed.version
            run = self.node(f"training:{typed.training_id}", "training_run", "", None)
            if not run.label:
                run.label = f"training {typed.training_id}"
            self.edge(run.id, model.id, "produced", event)
        elif isinstance(typed, ModelDeployed):
            self._deployed(event, typed)
        elif isinstance(typed, ModelRetired):
            self._retired(event, typed)

    def _training_started(self, event: RecordedEvent, typed: TrainingStarted) -> None:
        run = self.node(
            f"training:{event.stream_id}", "training_run", f"training {event.stream_id}\nrunning",
            event,
        )
        run.attributes.update(
            training_id=event.stream_id, status=run.attributes.get("status", "running"),
            started_at=iso(typed.started_at or event.occurred_at), user_id=typed.user_id,
            dataset_id=typed.dataset_id, dataset_version=typed.dataset_version,
            dataset_uri=typed.dataset_uri, feature_version=typed.feature_version,
            hyperparameters=typed.hyperparameters, seed=typed.seed,
            code_version=typed.code_version.model_dump(mode="json") if typed.code_version else None,
            environment=typed.environment.model_dump(mode="json") if typed.environment else None,
            config=typed.config, model_name=typed.model_name,
        )
        data = self.dataset(typed.dataset_version, typed.dataset_id, None)
        if typed.dataset_uri:
            data.attributes.setdefault("uri", typed.dataset_uri)
        self.edge(data.id, run.id, "trained_on", event)
        if typed.feature_version:
            self._trainings_by_feature.append((run.id, typed.feature_version, event))

    def _deployed(self, event: RecordedEvent, typed: ModelDeployed) -> None:
        at = iso(typed.deployed_at or event.occurred_at)
        # The same name has one serving model per environment: a deployment replaces it.
        for node in self.graph.of_kind("deployment"):
            a = node.attributes
            if a["environment"] == typed.environment and a["retired_at"] is None and (
                a["model_name"] == typed.model_name or a["model_id"] == typed.replaces_model_id
            ):
                a.update(retired_at=at, replaced_by_model_id=typed.model_id)
                node.event_ids.append(event.id)
        deployment = self.node(
            f"deployment:{event.id}", "deployment",
            f"{typed.environment}: {typed.model_name} v{typed.version}\n{at}", event,
        )
        deployment.attributes.update(
            model_id=typed.model_id, model_name=typed.model_name, version=typed.version,
            environment=typed.environment, deployed_at=at, retired_at=None, reason=typed.reason,
        )
        model = self.model(typed.model_id, event)
        model.attributes.setdefault("model_name", typed.model_name)
        model.attributes.setdefault("version", typed.version)
        self.edge(model.id, deployment.id, "deployed", event)

    def _retired(self, event: RecordedEvent, typed: ModelRetired) -> None:
        for node in self.graph.of_kind("deployment"):
            a = node.attributes
            if (a["model_id"], a["environment"]) == (typed.model_id, typed.environment) and (
                a["retired_at"] is None
            ):
                a["retired_at"] = iso(typed.retired_at or event.occurred_at)
                node.event_ids.append(event.id)
                node.recorded_at = iso(event.created_at)

    def finish(self) -> LineageGraph:
        """Link runs to the feature versions they name, and features to the datasets they
        were materialized as; give nodes only referenced by others their referencing events."""
        features: dict[str, list[Node]] = {}
        for node in self.graph.of_kind("feature_version"):
            features.setdefault(node.attributes["feature_version"], []).append(node)
        for run_id, version, event in self._trainings_by_feature:
            matches = features.get(version) or [
                self.node(f"feature:{version}", "feature_version", f"features ?\n{version}", None)
            ]
            for feature in matches:
                feature.attributes.setdefault("feature_version", version)
                self.edge(feature.id, run_id, "features_used", event)
        for digest, feature_id in self._feature_artifacts.items():
            data = self.graph.nodes.get(f"dataset:{digest}")
            if data is not None:
                first = self.graph.nodes[feature_id].event_ids[0]
                edge = Edge(feature_id, data.id, "materialized", [first])
                edge.recorded_at = self.graph.nodes[feature_id].recorded_at
                self.graph.edges.append(edge)
        for edge in self.graph.edges:
            for end in (self.graph.nodes[edge.source], self.graph.nodes[edge.target]):
                if not end.event_ids:
                    end.event_ids.extend(edge.event_ids)
                    end.recorded_at = end.recorded_at or edge.recorded_at
        for node in self.graph.nodes.values():
            a = node.attributes
            if node.kind == "dataset_version":
                node.label = f"dataset {a.get('dataset_id', '?')}\n{_short(a['version'])}"
            elif node.kind == "model":
                version = f" v{a['version']}" if a.get("version") else ""
                node.label = f"model {a.get('model_name') or '?'}{version}\n{a['model_id']}"
        return self.graph


def _fold(events: Iterable[tuple[RecordedEvent, DomainEvent]]) -> LineageGraph:
    builder = _Builder()
    for event, typed in events:
        builder.add(event, typed)
    return builder.finish()


def build_graph(store: EventStore, until: datetime | None = None) -> LineageGraph:
    """The provenance graph of the whole log (optionally as of `until`), folded from every
    provenance event: lineage, impact and explain fold only the events they need."""
    registry = store.registry
    return _fold(
        (event, registry.parse(event))
        for event in store.read_all(event_types=PROVENANCE_EVENT_TYPES, until=until)
    )


def _subgraph(graph: LineageGraph, root: str, direction: str) -> LineageGraph:
    forward = direction == "downstream"
    neighbours: dict[str, list[str]] = {}
    for edge in graph.edges:
        a, b = (edge.source, edge.target) if forward else (edge.target, edge.source)
        neighbours.setdefault(a, []).append(b)
    seen, queue = {root}, deque([root])
    while queue:
        for nxt in neighbours.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    order = [node_id for node_id in graph.nodes if node_id in seen]
    return LineageGraph(
        root=root,
        direction=direction,
        nodes={node_id: graph.nodes[node_id] for node_id in order},
        edges=[e for e in graph.edges if e.source in seen and e.target in seen],
    )


def _resolve(candidates: Iterable[Node], wanted: str, what: str, hint: str) -> Node:
    found = list(candidates)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ProvenanceError(f"no {what} {wanted!r} in the log; {hint}")
    names = ", ".join(sorted(node.id for node in found)[:5])
    raise ProvenanceError(f"{what} {wanted!r} is ambiguous ({names}); give more of it")


def _model_node(graph: LineageGraph, model: str) -> Node:
    """A model by id; else `name@version`; else the latest version of a name."""
    exact = graph.nodes.get(f"model:{model}")
    if exact is not None:
        return exact
    models = graph.of_kind("model")
    name, _, version = model.rpartition("@")
    if name and version.isdigit():
        matches = [m for m in models if m.attributes.get("model_name") == name
                   and m.attributes.get("version") == int(version)]
    else:
        named = [m for m in models if m.attributes.get("model_name") == model]
        latest = max((m.attributes.get("version") or 0 for m in named), default=None)
        matches = [m for m in named if (m.attributes.get("version") or 0) == latest]
    return _resolve(
        matches, model, "model",
        "give a model id (training_completed.model_id), NAME@VERSION or a model name",
    )


def _find_model(store: EventStore, model: str) -> str:
    with store.transaction(read_only=True) as tx:
        if is_node(tx, f"model:{model}"):
            return f"model:{model}"
        name, _, version = model.rpartition("@")
        ids = event_ids(tx, models_named(tx, name if name and version.isdigit() else model))
    return _model_node(_fold(read_events(store, ids)), model).id


def _reached(store: EventStore, root: str, downstream: bool) -> list[str]:
    with store.transaction(read_only=True) as tx:
        return event_ids(tx, reachable(tx, [root], downstream))


def lineage(store: EventStore, model: str) -> LineageGraph:
    """Upstream of a model: training run, feature versions, dataset versions, ingestion
    batches. `model` is a model id, `name@version`, or a name (its latest version)."""
    catch_up(store)
    root = _find_model(store, model)
    graph = _fold(read_events(store, _reached(store, root, downstream=False)))
    return _subgraph(graph, root, "upstream")


def impact(store: EventStore, dataset_version: str) -> LineageGraph:
    """Downstream of a dataset version (full sha256 or a unique prefix of 6+ characters):
    derived datasets, feature versions, training runs, models and deployments."""
    catch_up(store)
    with store.transaction(read_only=True) as tx:
        root = f"dataset:{dataset_version}"
        if not is_node(tx, root):
            found = datasets_with_prefix(tx, root) if len(dataset_version) >= 6 else []
            root = _resolve(
                (Node(node, "dataset_version", "") for node in found),
                dataset_version, "dataset version",
                "give the dataset's content sha256 (data_ingested.dataset_version) or 6+ "
                "leading characters of it",
            ).id
    graph = _fold(read_events(store, _reached(store, root, downstream=True)))
    return _subgraph(graph, root, "downstream")


def _inference_events(store: EventStore, inference: str) -> list[RecordedEvent]:
    stream = inference
    try:
        event = store.get_event(str(uuid.UUID(inference)))
    except ValueError:
        event = None
    if event is not None and event.event_type.startswith("inference_"):
        stream = event.stream_id
    events = store.read_stream(stream)
    if not any(e.event_type == EventTypes.INFERENCE_COMPLETED for e in events):
        raise ProvenanceError(
            f"no prediction {inference!r} in the log: give the inference id log_prediction "
            "returned, or the id of one of its inference_* events"
        )
    return events


def explain(store: EventStore, inference: str) -> LineageGraph:
    """Which model version served a prediction (and the deployment it served through, if
    any), and that model's full lineage. `inference` is the inference id (its stream) or
    the id of one of its events.

    A prediction that recorded its environment is linked to the model's deployment there;
    one that did not is linked to every deployment of the model open at the time, and to
    the deployment itself only if there was exactly one."""
    events = _inference_events(store, inference)
    stream = events[0].stream_id
    node = Node(f"inference:{stream}", "inference", "")
    attributes: dict[str, Any] = {"inference_id": stream, "feedback": []}
    completed_at: datetime | None = None
    for event in events:
        typed = store.registry.parse(event)
        if isinstance(typed, InferenceRequested):
            attributes.update(
                inputs=typed.inputs,
                inputs_ref=typed.inputs_ref.model_dump(mode="json") if typed.inputs_ref else None,
                requested_at=iso(typed.requested_at or event.occurred_at),
                environment=typed.environment,
            )
        elif isinstance(typed, InferenceCompleted):
            attributes.update(
                model_id=typed.model_id, model_version=typed.model_version,
                prediction=typed.prediction, probabilities=typed.probabilities,
                latency_ms=typed.latency_ms, completed_at=iso(event.created_at),
            )
            completed_at = event.created_at
        elif isinstance(typed, InferenceFeedback):
            attributes["feedback"].append({"actual": typed.actual, "correct": typed.correct})
        else:
            continue
        node.event_ids.append(event.id)
        node.recorded_at = iso(event.created_at)
    node.attributes = attributes
    node.label = f"prediction {stream}\n= {attributes['prediction']}"

    # Only what was recorded by the time of the prediction can have served it: the model's
    # lineage and its deployments, as of then.
    model_id = str(attributes["model_id"])
    catch_up(store)
    with store.transaction(read_only=True) as tx:
        root = f"model:{model_id}"
        nodes = reachable(tx, [root], downstream=False) | set(neighbours(tx, root, "deployed"))
        ids = event_ids(tx, nodes)
    graph = _fold(read_events(store, ids, until=completed_at))
    model = graph.nodes.get(f"model:{model_id}")
    if model is None:
        raise ProvenanceError(
            f"prediction {stream!r} names model {model_id!r}, which the log does not record "
            "(no training_completed, model_created or deployment names it)"
        )
    version = model.attributes.get("version")
    if version is not None and version != attributes["model_version"]:
        attributes["version_mismatch"] = (
            f"the prediction says version {attributes['model_version']}, the catalog {version}"
        )
    result = _subgraph(graph, model.id, "upstream")
    result.root, result.direction = node.id, "explain"
    result.nodes[node.id] = node
    # The graph stops at the prediction, so a deployment of this model still open in it was
    # serving then. A prediction that names its environment picks that one; older ones (or
    # direct calls) name none: with several open, all are shown and none is picked.
    environment = attributes.get("environment")
    serving = [
        d for d in graph.of_kind("deployment")
        if d.attributes["model_id"] == model_id and d.attributes["retired_at"] is None
        and (environment is None or d.attributes["environment"] == environment)
    ]
    if environment is not None and not serving:
        attributes["environment_mismatch"] = (
            f"the prediction says it was served in {environment!r}, but the log shows no "
            f"deployment of model {model_id} open there at the time"
        )
    for deployment in serving:
        result.nodes[deployment.id] = deployment
        result.edges.append(
            Edge(model.id, deployment.id, "deployed", deployment.event_ids[:1],
                 deployment.attributes["deployed_at"])
        )
    attributes["serving_environments"] = sorted(d.attributes["environment"] for d in serving)
    served_from = serving[0].id if len(serving) == 1 else model.id
    result.edges.append(Edge(served_from, node.id, "served", node.event_ids[:2], iso(completed_at)))
    return result
