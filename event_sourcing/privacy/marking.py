"""Marking personal data: the `Personal()` field annotation and each event type's subject.

A model's marks are read once (PersonalSpec) and tell the store what to encrypt and for whom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from event_sourcing.errors import ConfigurationError

ERASED_TEXT = "[erased]"
"""What an erased personal field reads as, when its type accepts a string."""
ERASED_OBJECT: dict[str, Any] = {"$erased": True}
"""What an erased personal field reads as, when its type is an object but not a string."""
SUBJECT_METADATA_KEY = "subject_id"
"""The metadata key naming the data subject of an event (when its type names none)."""

_UNSET: Any = object()


@dataclass(frozen=True)
class Personal:
    """Marks a payload field as personal data: `name: Annotated[str, Personal()]`.

    Stored encrypted under the key of the event's data subject; after `store.forget` it
    reads as `erased` (default: "[erased]" if the field's type takes a string, else
    {"$erased": true}, else None).
    """

    erased: Any = _UNSET


@dataclass(frozen=True)
class PersonalSpec:
    """The personal fields of one event type (name -> erased marker) and its subject path."""

    fields: dict[str, Any]
    subject_path: tuple[str, ...] | None


def is_erased(value: Any) -> bool:
    """Whether `value` is the marker an erased personal field reads as."""
    return value == ERASED_TEXT or (
        isinstance(value, dict) and value.keys() == {"$erased"} and value["$erased"] is True
    )


def _marker(annotation: Any, mark: Personal, where: str) -> Any:
    from event_sourcing.stores.values import same  # the stores import the catalog

    if mark.erased is not _UNSET:
        return mark.erased
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    for candidate in (ERASED_TEXT, ERASED_OBJECT, None):
        try:
            if same(adapter.validate_python(candidate), candidate):
                return candidate
        except ValidationError:
            continue
    raise ConfigurationError(
        f"{where} is marked Personal() but its type accepts neither {ERASED_TEXT!r}, "
        f"{ERASED_OBJECT} nor None; say what it reads as once erased: Personal(erased=...)"
    )


_SPECS: dict[type, PersonalSpec | None] = {}


def personal_spec(model: type[Any]) -> PersonalSpec | None:
    """The marks of a DomainEvent class; None if it holds no personal data (cached)."""
    try:
        return _SPECS[model]
    except KeyError:
        pass
    fields = {}
    for name, info in model.model_fields.items():
        marks = [item for item in info.metadata if isinstance(item, Personal)]
        if marks:
            fields[name] = _marker(info.annotation, marks[0], f"{model.__name__}.{name}")
    path_text = getattr(model, "subject_path", None)
    path = tuple(path_text.split(".")) if path_text else None
    if path is not None and path[0] not in fields:
        raise ConfigurationError(
            f"{model.__name__}.subject_path is {path_text!r}, but field {path[0]!r} is not "
            "marked Personal(): a subject id is personal data itself; annotate it "
            "Annotated[..., Personal()]"
        )
    spec = PersonalSpec(fields, path) if fields else None
    _SPECS[model] = spec
    return spec


def subject_of(
    spec: PersonalSpec | None, payload: dict[str, Any], metadata: dict[str, Any]
) -> Any:
    """The subject id of an event: its type's subject path in the payload, else
    metadata["subject_id"]; None if it names none."""
    if spec is not None and spec.subject_path is not None:
        value: Any = payload
        for part in spec.subject_path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return metadata.get(SUBJECT_METADATA_KEY)
