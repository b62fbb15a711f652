"""How `mlevents` shows results to a person: rich tables for read models and dead letters,
text trees for provenance graphs. Machine output (JSON) is printed by the commands themselves.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from event_sourcing.provenance import LineageGraph

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "DEPLOYMENT_COLUMNS",
    "MODEL_COLUMNS",
    "PROJECTION_COLUMNS",
    "TRAINING_COLUMNS",
    "graph_text",
    "graph_tree",
    "print_table",
]

Column = tuple[str, Callable[[dict[str, Any]], Any]]
"""A table column: its header and how to get its cell from a row."""


def when(value: Any) -> str:
    """ISO 8601 UTC text as `2026-11-24 14:02:00` (seconds are enough on a screen)."""
    if not value:
        return ""
    return str(value).replace("T", " ")[:19]


def metrics(value: Any, limit: int = 3) -> str:
    """`{"accuracy": 0.971, ...}` as `accuracy 0.9710, f1 0.9600` (the first `limit`)."""
    if not isinstance(value, dict) or not value:
        return ""
    parts = [
        f"{name} {number:.4f}" if isinstance(number, float) else f"{name} {number}"
        for name, number in list(value.items())[:limit]
    ]
    return ", ".join(parts) + (", ..." if len(value) > limit else "")


def short(value: Any, width: int = 12) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


MODEL_COLUMNS: list[Column] = [
    ("name", lambda r: r.get("name")),
    ("version", lambda r: r.get("version")),
    ("status", lambda r: r.get("status")),
    ("serving in", lambda r: ", ".join(r.get("environments") or [])),
    ("metrics", lambda r: metrics(r.get("metrics"))),
    ("model id", lambda r: r.get("model_id")),
    ("created", lambda r: when(r.get("created_at"))),
]
TRAINING_COLUMNS: list[Column] = [
    ("training id", lambda r: r.get("training_id")),
    ("status", lambda r: r.get("status")),
    ("model", lambda r: r.get("model_name")),
    ("dataset", lambda r: r.get("dataset_id")),
    ("started", lambda r: when(r.get("started_at"))),
    ("seconds", lambda r: "" if r.get("duration_seconds") is None
     else f"{r['duration_seconds']:.1f}"),
    ("metrics", lambda r: metrics(r.get("final_metrics") or r.get("latest_metrics"))),
    ("error", lambda r: short(r.get("error"), 40)),
]
DEPLOYMENT_COLUMNS: list[Column] = [
    ("model", lambda r: r.get("model_name")),
    ("version", lambda r: r.get("version")),
    ("environment", lambda r: r.get("environment")),
    ("deployed", lambda r: when(r.get("deployed_at"))),
    ("retired", lambda r: when(r.get("retired_at")) or "serving"),
    ("why", lambda r: r.get("retired_reason") or r.get("reason") or ""),
    ("model id", lambda r: r.get("model_id")),
]
PROJECTION_COLUMNS: list[Column] = [
    ("projection", lambda r: r["projection"]),
    ("read", lambda r: r.get("read", "")),
    ("applied", lambda r: r.get("applied", "")),
    ("parked", lambda r: r.get("parked", "")),
    ("checkpoint", lambda r: r["checkpoint"]),
    ("lag", lambda r: r["lag"]),
    ("dead letters", lambda r: r["dead_letters"]),
]
DEAD_LETTER_COLUMNS: list[Column] = [
    ("projection", lambda r: r["projection"]),
    ("position", lambda r: r["position"]),
    ("event type", lambda r: r["event_type"]),
    ("event id", lambda r: r["event_id"]),
    ("attempts", lambda r: r["attempts"]),
    ("error", lambda r: short(r["error"], 60)),
    ("parked", lambda r: when(r["parked_at"])),
]


def print_table(
    console: Console, rows: Iterable[dict[str, Any]], columns: Sequence[Column], title: str = ""
) -> None:
    table = Table(*(header for header, _ in columns), title=title or None)
    for row in rows:
        table.add_row(*(escape("" if (v := get(row)) is None else str(v)) for _, get in columns))
    console.print(table)


_ISO_UTC = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?\+00:00")


def _line(graph: LineageGraph, node_id: str) -> str:
    node = graph.nodes[node_id]
    label = _ISO_UTC.sub(r"\1 \2", " · ".join(p for p in node.label.splitlines() if p))
    text = escape(label) or node.id
    kind = node.kind.replace("_", " ")
    # The kind in bold, unless the label starts with it ("model iris v2", not "model model ...").
    text = f"[bold]{text}[/]" if kind[:5] == label[:5] else f"[bold]{kind}[/] {text}"
    if node.kind == "inference":
        attrs = node.attributes
        feedback = attrs.get("feedback") or []
        if feedback:
            verdict = "correct" if feedback[-1].get("correct") else "wrong"
            text += f" · feedback: {escape(str(feedback[-1].get('actual')))} ({verdict})"
        for warning in ("version_mismatch", "environment_mismatch"):
            if attrs.get(warning):
                text += f" · [red]{escape(str(attrs[warning]))}[/]"
    if node.kind == "deployment" and node.attributes.get("retired_at"):
        text += f" · retired {when(node.attributes['retired_at'])}"
    return text


def graph_tree(graph: LineageGraph) -> Tree:
    """The graph as a tree from its root: upstream (lineage, explain) or downstream (impact).

    A node reached twice is drawn once; later mentions say "(shown above)".
    """
    downstream = graph.direction == "downstream"
    shown: set[str] = set()

    def grow(branch: Tree, node_id: str) -> None:
        shown.add(node_id)
        for edge in graph.edges:
            if (edge.source if downstream else edge.target) != node_id:
                continue
            other = edge.target if downstream else edge.source
            relation = f" [dim]({escape(edge.relation)})[/]"
            if other in shown:
                branch.add(_line(graph, other) + relation + " [dim](shown above)[/]")
                continue
            grow(branch.add(_line(graph, other) + relation), other)

    tree = Tree(_line(graph, graph.root))
    grow(tree, graph.root)
    return tree


def graph_text(graph: LineageGraph) -> str:
    """`graph_tree` as plain text, no colors, lines never wrapped (for files, pipes and
    Markdown code blocks)."""
    buffer = io.StringIO()
    Console(file=buffer, color_system=None, width=1000, soft_wrap=True).print(graph_tree(graph))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
