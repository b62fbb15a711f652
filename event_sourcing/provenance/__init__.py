"""Provenance: where a model came from (lineage), what a dataset fed (impact), and why a
prediction was made (explain), as graphs rendered to dicts, Mermaid and OpenLineage.
"""

from event_sourcing.provenance.graph import Edge, LineageGraph, Node
from event_sourcing.provenance.lineage import (
    PROVENANCE_EVENT_TYPES,
    ProvenanceError,
    build_graph,
    explain,
    impact,
    lineage,
)

__all__ = [
    "PROVENANCE_EVENT_TYPES",
    "Edge",
    "LineageGraph",
    "Node",
    "ProvenanceError",
    "build_graph",
    "explain",
    "impact",
    "lineage",
]
