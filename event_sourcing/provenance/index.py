"""The provenance index: a projection keeping the graph's edges and, per node, the events that
record it, so lineage, impact and explain read a few indexed rows instead of the whole log.

A query walks the edges from its root, then folds only the events of the nodes it reached
(with the same fold as the whole-log graph), so its answer is the whole-log answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from event_sourcing.catalog import (
    DomainEvent,
    FeatureComputed,
    FeatureVersioned,
    ModelDeployed,
    ModelRetired,
    TrainingStarted,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.projection import insert_rows
from event_sourcing.projections.runner import Projection
from event_sourcing.projections.runner import catch_up as catch_up_projection
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = ["PROVENANCE_INDEX", "provenance_index_projection"]

PROVENANCE_INDEX = "provenance_index"
_CHUNK = 500  # ids per IN list

_DDL = (
    # Every node an event records, references or changes (the fold reads these events).
    """CREATE TABLE IF NOT EXISTS provenance_node_events (
        node     TEXT NOT NULL,
        position BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (node, position)
    )""",
    """CREATE TABLE IF NOT EXISTS provenance_edges (
        source   TEXT NOT NULL,
        target   TEXT NOT NULL,
        relation TEXT NOT NULL,
        PRIMARY KEY (source, target, relation)
    )""",
    "CREATE INDEX IF NOT EXISTS provenance_edges_target ON provenance_edges (target)",
    # Lookups: model nodes by any name an event gave them, dataset nodes by digest prefix.
    """CREATE TABLE IF NOT EXISTS provenance_names (
        name TEXT NOT NULL,
        node TEXT NOT NULL,
        PRIMARY KEY (name, node)
    )""",
    """CREATE TABLE IF NOT EXISTS provenance_datasets (node TEXT PRIMARY KEY)""",
    # Feature versions <-> runs naming them, linked whichever is recorded first.
    """CREATE TABLE IF NOT EXISTS provenance_features (
        feature_version TEXT NOT NULL,
        node            TEXT NOT NULL,
        is_run          INTEGER NOT NULL,
        PRIMARY KEY (feature_version, is_run, node)
    )""",
    # Deployments still open: a later deployment or retirement changes them.
    """CREATE TABLE IF NOT EXISTS provenance_open_deployments (
        node        TEXT PRIMARY KEY,
        model_id    TEXT NOT NULL,
        model_name  TEXT NOT NULL,
        environment TEXT NOT NULL
    )""",
)
_TABLES = (
    "provenance_node_events", "provenance_edges", "provenance_names", "provenance_datasets",
    "provenance_features", "provenance_open_deployments",
)


class _Page:
    """What a page of events adds to the index. The open deployments and the feature links
    are read by later events of the page, so they are written as each event is indexed;
    everything else only accumulates, and is written once at the end of the page."""

    def __init__(self, tx: SqlTransaction) -> None:
        self.tx = tx
        self.node_events: dict[tuple[str, int], str] = {}
        self.edges: dict[tuple[str, str, str], None] = {}
        self.names: dict[tuple[str, str], None] = {}
        self.datasets: dict[str, None] = {}

    def closed_deployments(self, typed: DomainEvent) -> list[str]:
        """Open deployments this event closes (as the fold does), removed from the open set."""
        tx = self.tx
        if isinstance(typed, ModelDeployed):
            rows = tx.execute(
                "SELECT node FROM provenance_open_deployments WHERE environment = ? "
                "AND (model_name = ? OR model_id = ?)",
                (typed.environment, typed.model_name, typed.replaces_model_id or ""),
            ).fetchall()
        elif isinstance(typed, ModelRetired):
            rows = tx.execute(
                "SELECT node FROM provenance_open_deployments WHERE model_id = ? "
                "AND environment = ?",
                (typed.model_id, typed.environment),
            ).fetchall()
        else:
            return []
        nodes = [row[0] for row in rows]
        for node in nodes:
            tx.execute("DELETE FROM provenance_open_deployments WHERE node = ?", (node,))
        return nodes

    def link_features(self, event: RecordedEvent, typed: DomainEvent) -> None:
        """Edges feature version -> run naming it, whichever of the two is recorded first (the
        fold links them once it has seen everything)."""
        if isinstance(typed, TrainingStarted) and typed.feature_version:
            node, version, is_run = f"training:{event.stream_id}", typed.feature_version, 1
        elif isinstance(typed, FeatureComputed | FeatureVersioned):
            node = f"feature:{typed.feature_set}@{typed.feature_version}"
            version, is_run = typed.feature_version, 0
        else:
            return
        self.tx.execute(
            "INSERT INTO provenance_features (feature_version, node, is_run) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (version, node, is_run),
        )
        for (other,) in self.tx.execute(
            "SELECT node FROM provenance_features WHERE feature_version = ? AND is_run = ?",
            (version, 1 - is_run),
        ).fetchall():
            feature, run = (other, node) if is_run else (node, other)
            self.edges[(feature, run, "features_used")] = None

    def add(self, event: RecordedEvent, typed: DomainEvent) -> None:
        from event_sourcing.provenance.lineage import _Builder

        builder = _Builder()
        builder.add(event, typed)  # the same fold, on this one event: what it touches
        graph = builder.graph
        for touched in [*graph.nodes, *self.closed_deployments(typed)]:
            self.node_events[(touched, event.position)] = event.id
        for edge in graph.edges:
            self.edges[(edge.source, edge.target, edge.relation)] = None
        for digest, feature in builder._feature_artifacts.items():
            self.edges[(feature, f"dataset:{digest}", "materialized")] = None
        self.link_features(event, typed)
        for node in graph.nodes.values():
            name = node.attributes.get("model_name") if node.kind == "model" else None
            if isinstance(name, str):
                self.names[(name, node.id)] = None
            elif node.kind == "dataset_version":
                self.datasets[node.id] = None
            elif node.kind == "deployment" and isinstance(typed, ModelDeployed):
                self.tx.execute(
                    "INSERT INTO provenance_open_deployments (node, model_id, model_name, "
                    "environment) VALUES (?, ?, ?, ?)",
                    (node.id, typed.model_id, typed.model_name, typed.environment),
                )

    def write(self) -> None:
        tx, skip = self.tx, "ON CONFLICT DO NOTHING"
        insert_rows(
            tx, "provenance_node_events (node, position, event_id)",
            [(node, position, event_id) for (node, position), event_id in self.node_events.items()],
            skip,
        )
        insert_rows(tx, "provenance_edges (source, target, relation)", list(self.edges), skip)
        insert_rows(tx, "provenance_names (name, node)", list(self.names), skip)
        insert_rows(tx, "provenance_datasets (node)", [(n,) for n in self.datasets], skip)


def _index_page(
    tx: SqlTransaction, pairs: Sequence[tuple[RecordedEvent, DomainEvent | None]]
) -> None:
    page = _Page(tx)
    for event, typed in pairs:
        if typed is not None:
            page.add(event, typed)
    page.write()


def provenance_index_projection() -> Projection:
    """provenance_index: the provenance graph's edges and each node's events, indexed."""
    from event_sourcing.provenance.lineage import PROVENANCE_EVENT_TYPES

    return Projection(
        name=PROVENANCE_INDEX,
        version=1,
        ddl=_DDL,
        tables=_TABLES,
        handlers=dict.fromkeys(PROVENANCE_EVENT_TYPES, lambda tx, e, t: _index_page(tx, [(e, t)])),
        batch=_index_page,
        description="provenance graph: edges and the events recording each node",
    )


def catch_up(store: EventStore) -> None:
    """Bring the store's provenance index up to the head of its log."""
    catch_up_projection(store, provenance_index_projection())


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(items: Sequence[str]) -> str:
    return ",".join("?" * len(items))


def reachable(tx: SqlTransaction, roots: Iterable[str], downstream: bool) -> set[str]:
    """Every node reached from `roots` along the edges (downstream, or upstream)."""
    near, far = ("source", "target") if downstream else ("target", "source")
    seen = set(roots)
    frontier = sorted(seen)
    while frontier:
        found: set[str] = set()
        for chunk in _chunks(frontier):
            rows = tx.execute(
                f"SELECT {far} FROM provenance_edges WHERE {near} IN ({_marks(chunk)})", chunk
            ).fetchall()
            found.update(row[0] for row in rows)
        frontier = sorted(found - seen)
        seen |= found
    return seen


def neighbours(tx: SqlTransaction, node: str, relation: str) -> list[str]:
    """The targets of `node`'s edges of one relation."""
    rows = tx.execute(
        "SELECT target FROM provenance_edges WHERE source = ? AND relation = ?", (node, relation)
    ).fetchall()
    return [row[0] for row in rows]


def event_ids(tx: SqlTransaction, nodes: Iterable[str]) -> list[str]:
    """The ids of the events recording any of `nodes`, in position order."""
    wanted = sorted(set(nodes))
    ids: dict[int, str] = {}
    for chunk in _chunks(wanted):
        for position, event_id in tx.execute(
            "SELECT position, event_id FROM provenance_node_events "
            f"WHERE node IN ({_marks(chunk)})",
            chunk,
        ).fetchall():
            ids[int(position)] = event_id
    return [ids[position] for position in sorted(ids)]


def read_events(
    store: EventStore, ids: Sequence[str], until: datetime | None = None
) -> list[tuple[RecordedEvent, DomainEvent]]:
    """The events of `ids` in position order, parsed (created at or before `until`, if
    given). Read outside the index's transaction: a store may have a single connection."""
    events: list[RecordedEvent] = []
    for chunk in _chunks(ids):
        events.extend(store.privacy.open(store.recorder.read_ids(chunk)))  # decrypted
    events.sort(key=lambda event: event.position)
    registry = store.registry
    return [
        (event, registry.parse(event))
        for event in events
        if until is None or event.created_at <= until
    ]


def models_named(tx: SqlTransaction, name: str) -> list[str]:
    rows = tx.execute("SELECT node FROM provenance_names WHERE name = ?", (name,)).fetchall()
    return [row[0] for row in rows]


def datasets_with_prefix(tx: SqlTransaction, prefix: str) -> list[str]:
    rows = tx.execute(
        "SELECT node FROM provenance_datasets WHERE substr(node, 1, ?) = ?",
        (len(prefix), prefix),
    ).fetchall()
    return [row[0] for row in rows]


def is_node(tx: SqlTransaction, node: str) -> bool:
    return tx.execute(
        "SELECT 1 FROM provenance_node_events WHERE node = ? LIMIT 1", (node,)
    ).fetchone() is not None
