"""Publishing the event catalog: JSON Schema files and a Markdown reference of every type.

Both read only the registry, so they document exactly what the store validates against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from event_sourcing.catalog.registry import EventRegistry


def export_json_schemas(registry: EventRegistry, out_dir: str | Path) -> list[Path]:
    """Write `<type>.v<version>.json` for every registered type; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in registry.json_schemas().items():
        path = out / f"{name}.v{schema['x-schema-version']}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def render_markdown_catalog(registry: EventRegistry) -> str:
    """A readable catalog: per event type its version, description and field table."""
    schemas = registry.json_schemas()
    shared: dict[str, dict[str, Any]] = {}
    lines = [
        "# Event catalog",
        "",
        f"{len(schemas)} event types. Payloads are validated against these schemas on append;",
        "JSON Schema files come from `mlevents schema`.",
        "",
        "| Event type | Version | Summary |",
        "|---|---|---|",
    ]
    for name, schema in schemas.items():
        summary = _cell(schema.get("description", "").split("\n\n")[0])
        lines.append(f"| [`{name}`](#{name}) | {schema['x-schema-version']} | {summary} |")
    for name, schema in schemas.items():
        lines += ["", f"## {name}", "", f"Schema version {schema['x-schema-version']}."]
        lines += _section_body(schema)
        for def_name, definition in schema.get("$defs", {}).items():
            if "properties" in definition:
                shared.setdefault(def_name, definition)
    if shared:
        lines += ["", "## Shared types"]
        for def_name, definition in sorted(shared.items()):
            lines += ["", f"### {def_name}"]
            lines += _section_body(definition)
    return "\n".join(lines) + "\n"


def _section_body(schema: dict[str, Any]) -> list[str]:
    lines = [""]
    if description := schema.get("description"):
        lines += [description, ""]
    lines += ["| Field | Type | Required | Description |", "|---|---|---|---|"]
    required = set(schema.get("required", []))
    for field, prop in schema.get("properties", {}).items():
        req = "yes" if field in required else f"no (default `{json.dumps(prop.get('default'))}`)"
        lines.append(
            f"| `{field}` | {_cell(_type(prop))} | {req} | {_cell(prop.get('description', ''))} |"
        )
    return lines


def _type(schema: dict[str, Any]) -> str:
    """A short human reading of a JSON Schema fragment, e.g. `list of string`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return "any JSON" if name == "JsonValue" else name
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return "any JSON"
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {_type(schema['additionalProperties'])}"
    text = str(kind)
    if "format" in schema:
        text += f" ({schema['format']})"
    if "pattern" in schema:
        text += f" matching `{schema['pattern']}`"
    if schema.get("minLength") == 1:
        text = f"non-empty {text}"
    if "minimum" in schema:
        text += f" ≥ {schema['minimum']}"
    if "maximum" in schema:
        text += f" ≤ {schema['maximum']}"
    return text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
