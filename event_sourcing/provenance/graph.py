"""Provenance graphs as plain data: nodes and edges that carry the event ids proving them,
rendered as dicts, Mermaid flowcharts and OpenLineage run events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DATA_KINDS",
    "OPENLINEAGE_SCHEMA_URL",
    "RUN_KINDS",
    "Edge",
    "LineageGraph",
    "Node",
]

DATA_KINDS = frozenset({"dataset_version", "feature_version", "model"})
"""Node kinds that are data (OpenLineage datasets)."""
RUN_KINDS = frozenset({"ingestion_batch", "training_run", "deployment", "inference"})
"""Node kinds that are processes (OpenLineage runs)."""

OPENLINEAGE_SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
_FACET_URLS = {
    "version": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json"
    "#/$defs/DatasetVersionDatasetFacet",
    "schema": "https://openlineage.io/spec/facets/1-1-1/SchemaDatasetFacet.json"
    "#/$defs/SchemaDatasetFacet",
    "dataSource": "https://openlineage.io/spec/facets/1-0-1/DatasourceDatasetFacet.json"
    "#/$defs/DatasourceDatasetFacet",
}
_MLEVENTS_FACET_URL = "urn:mlevents:facets:provenance:1"
_MERMAID_SHAPES = {
    "dataset_version": ('[("', '")]'),
    "feature_version": ('[("', '")]'),
    "model": ('[["', '"]]'),
    "training_run": ('("', '")'),
    "ingestion_batch": ('>"', '"]'),
    "deployment": ('{{"', '"}}'),
    "inference": ('(["', '"])'),
}


@dataclass
class Node:
    """A dataset version, feature version, training run, model, ingestion batch, deployment or
    inference; `event_ids` are the events that record it."""

    id: str
    kind: str
    label: str
    attributes: dict[str, Any] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    recorded_at: str | None = None
    """Time of the latest event that records the node (ISO 8601 UTC)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Edge:
    """Data flowing from `source` to `target` (upstream to downstream)."""

    source: str
    target: str
    relation: str
    event_ids: list[str] = field(default_factory=list)
    recorded_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LineageGraph:
    """A provenance graph around `root`: `direction` is upstream (lineage), downstream
    (impact) or explain (a prediction and everything it came from)."""

    root: str
    direction: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def of_kind(self, kind: str) -> list[Node]:
        return [node for node in self.nodes.values() if node.kind == kind]

    def event_ids(self) -> set[str]:
        """Every event id that proves some node or edge of the graph."""
        ids = {event_id for node in self.nodes.values() for event_id in node.event_ids}
        return ids | {event_id for edge in self.edges for event_id in edge.event_ids}

    def predecessors(self, node_id: str) -> Iterator[Node]:
        for edge in self.edges:
            if edge.target == node_id:
                yield self.nodes[edge.source]

    def successors(self, node_id: str) -> Iterator[Node]:
        for edge in self.edges:
            if edge.source == node_id:
                yield self.nodes[edge.target]

    # -- renderings -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: root, direction, nodes and edges."""
        return {
            "root": self.root,
            "direction": self.direction,
            "nodes": [node.to_dict() for node in self.nodes.values()],
            "edges": [edge.to_dict() for edge in self.edges],
        }

    def to_mermaid(self) -> str:
        """A Mermaid flowchart (left to right, data flowing downstream)."""
        ids = {node_id: f"n{index}" for index, node_id in enumerate(self.nodes)}
        lines = ["flowchart LR"]
        for node_id, node in self.nodes.items():
            left, right = _MERMAID_SHAPES.get(node.kind, ('["', '"]'))
            text = _mermaid_text(node.label)
            lines.append(f"    {ids[node_id]}{left}{text}{right}")
        for edge in self.edges:
            relation = _mermaid_text(edge.relation)
            lines.append(f'    {ids[edge.source]} -->|"{relation}"| {ids[edge.target]}')
        lines.append(f"    style {ids[self.root]} stroke-width:3px")
        return "\n".join(lines) + "\n"

    def to_openlineage(
        self, namespace: str = "mlevents", producer: str = "urn:mlevents"
    ) -> list[dict[str, Any]]:
        """OpenLineage run events: one per process node (ingestion batch, training run,
        deployment, inference) and one per data-to-data step (preprocessing, feature
        computation), with their input and output datasets. Each carries an `mlevents`
        facet with the node's attributes and proving event ids."""
        def dataset(node: Node) -> dict[str, Any]:
            return _dataset(node, namespace, producer)

        events: list[dict[str, Any]] = []
        for node in self.nodes.values():
            if node.kind not in RUN_KINDS:
                continue
            # Data reaching this run through another run (a model served through a
            # deployment) is its input too.
            sources = [
                data
                for n in self.predecessors(node.id)
                for data in ([n] if n.kind in DATA_KINDS else self.predecessors(n.id))
                if data.kind in DATA_KINDS
            ]
            unique = {n.id: n for n in sources}
            inputs = [dataset(n) for n in unique.values()]
            if node.kind == "ingestion_batch" and node.attributes.get("source_uri"):
                inputs.insert(0, _source_dataset(node, namespace, producer))
            outputs = [dataset(n) for n in self.successors(node.id) if n.kind in DATA_KINDS]
            facet = _facet(producer, node.kind, node.attributes, node.event_ids)
            events.append(
                _run_event(
                    _event_type(node), node.recorded_at, _run_id(node.event_ids, node.id),
                    {"namespace": namespace, "name": _job_name(node)}, inputs, outputs,
                    producer, facet,
                )
            )
        for edge in self.edges:
            source, target = self.nodes[edge.source], self.nodes[edge.target]
            if source.kind not in DATA_KINDS or target.kind not in DATA_KINDS:
                continue
            subject = target.attributes.get("dataset_id") or target.attributes.get(
                "feature_set", target.id
            )
            facet = _facet(producer, edge.relation, {}, edge.event_ids)
            events.append(
                _run_event(
                    "COMPLETE", edge.recorded_at, _edge_run_id(edge),
                    {"namespace": namespace, "name": f"{edge.relation}/{subject}"},
                    [dataset(source)], [dataset(target)], producer, facet,
                )
            )
        return events


def _dataset(node: Node, namespace: str, producer: str) -> dict[str, Any]:
    attributes = node.attributes
    facets: dict[str, Any] = {
        "mlevents": _facet(producer, node.kind, attributes, node.event_ids)
    }
    version = (
        attributes.get("version")
        or attributes.get("feature_version")
        or attributes.get("artifact_sha256")
    )
    if version is not None:
        facets["version"] = {**_base(producer, "version"), "datasetVersion": str(version)}
    columns = attributes.get("columns") or attributes.get("features")
    if columns:
        facets["schema"] = {
            **_base(producer, "schema"), "fields": [{"name": str(c)} for c in columns]
        }
    uri = attributes.get("artifact_uri") or attributes.get("uri")
    if uri:
        facets["dataSource"] = {**_base(producer, "dataSource"), "name": uri, "uri": uri}
    return {"namespace": namespace, "name": node.id, "facets": facets}


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", "<br/>")


def _base(producer: str, facet: str) -> dict[str, str]:
    return {"_producer": producer, "_schemaURL": _FACET_URLS[facet]}


def _facet(
    producer: str, kind: str, attributes: dict[str, Any], event_ids: list[str]
) -> dict[str, Any]:
    return {
        "_producer": producer,
        "_schemaURL": _MLEVENTS_FACET_URL,
        "kind": kind,
        "attributes": attributes,
        "eventIds": list(event_ids),
    }


def _run_id(event_ids: list[str], fallback: str) -> str:
    # Event ids are UUIDs; the first one names the run stably across renderings.
    return event_ids[0] if event_ids else str(uuid.uuid5(uuid.NAMESPACE_URL, fallback))


def _edge_run_id(edge: Edge) -> str:
    # One event can prove several steps (feature_computed: computed and materialized), so
    # a step's run id is derived from its first event and its relation, stably.
    first = edge.event_ids[0] if edge.event_ids else f"{edge.source}>{edge.target}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:mlevents:{first}/{edge.relation}"))


def _event_type(node: Node) -> str:
    status = node.attributes.get("status")
    return {"failed": "FAIL", "running": "RUNNING"}.get(str(status), "COMPLETE")


def _job_name(node: Node) -> str:
    a = node.attributes
    if node.kind == "training_run":
        return f"train/{a.get('model_name') or a.get('dataset_id') or node.id}"
    if node.kind == "ingestion_batch":
        return f"ingest/{a.get('dataset_id')}"
    if node.kind == "deployment":
        return f"deploy/{a.get('model_name')}/{a.get('environment')}"
    return f"predict/{a.get('model_id')}"


def _source_dataset(node: Node, namespace: str, producer: str) -> dict[str, Any]:
    uri = str(node.attributes["source_uri"])
    # OpenLineage naming: namespace scheme://authority (s3://bucket), name the path.
    parts = urlsplit(uri)
    if parts.scheme and parts.netloc:
        source_namespace, name = f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    else:
        source_namespace, name = parts.scheme or "file", parts.path or uri
    facets = {"dataSource": {**_base(producer, "dataSource"), "name": uri, "uri": uri}}
    digest = node.attributes.get("content_sha256")
    if digest:
        facets["version"] = {**_base(producer, "version"), "datasetVersion": str(digest)}
    return {"namespace": source_namespace, "name": name, "facets": facets}


def _run_event(
    event_type: str,
    event_time: str | None,
    run_id: str,
    job: dict[str, str],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    producer: str,
    facet: dict[str, Any],
) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "eventTime": event_time,
        "producer": producer,
        "schemaURL": OPENLINEAGE_SCHEMA_URL,
        "run": {"runId": run_id, "facets": {"mlevents": facet}},
        "job": job,
        "inputs": inputs,
        "outputs": outputs,
    }
