"""The event registry: typed event models by name, their schema versions and upcasters.

Validates payloads on append (encode), lifts old ones (upcast), types recorded ones (parse).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticSerializationError

from event_sourcing.errors import EventValidationError, SchemaVersionError, UnknownEventTypeError
from event_sourcing.events import RecordedEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
E = TypeVar("E", bound="DomainEvent")

_MAX_REASONS = 20  # a payload with thousands of bad items should not yield a megabyte message


class DomainEvent(BaseModel):
    """Base class of typed event payloads: set `event_type`, bump `schema_version` on change."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    subject_path: ClassVar[str | None] = None
    """Dotted path of the payload field naming the data subject (a Personal() field);
    without one, the subject is metadata["subject_id"] (see docs/privacy.md)."""
    # NaN/inf are rejected because JSON cannot carry them: pydantic would store them as null,
    # and the event would then fail to parse back. Field docstrings become descriptions.
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )


def describe_errors(exc: ValidationError) -> str:
    """`a.b: reason; c: reason` for every failing field of a pydantic ValidationError."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    reasons = []
    for err in errors[:_MAX_REASONS]:
        path = ".".join(str(part) for part in err["loc"]) or "payload"
        msg = err["msg"].removeprefix("Value error, ")
        if msg[1:2].islower():
            msg = msg[0].lower() + msg[1:]
        reasons.append(f"{path}: {msg}")
    if len(errors) > _MAX_REASONS:
        reasons.append(f"... and {len(errors) - _MAX_REASONS} more")
    text = "; ".join(reasons)
    if any(err["type"] == "invalid-json-value" for err in errors):
        text += " (use plain JSON values: str, int, float, bool, None, list, dict)"
    return text


def _serialize(event_type: str, event: DomainEvent) -> dict[str, Any]:
    """A validated event as a JSON-mode dict (the store encodes it to text itself)."""
    try:
        payload: dict[str, Any] = event.__pydantic_serializer__.to_python(event, mode="json")
    except (PydanticSerializationError, ValueError) as exc:  # ValueError: nested too deep
        raise EventValidationError(
            f"{event_type} payload cannot be encoded as JSON: {exc}"
        ) from exc
    return payload


class EventRegistry:
    """Maps event type names to DomainEvent models, and (type, from_version) to upcasters."""

    def __init__(self) -> None:
        self._models: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    # -- registration ------------------------------------------------------------------------

    def register(self, model: type[E]) -> type[E]:
        """Register a DomainEvent subclass under its `event_type`; usable as a decorator.

        Registering another class under a taken name replaces the old one only if its
        schema_version is not lower: versions never go backwards.
        """
        if not (isinstance(model, type) and issubclass(model, DomainEvent)):
            raise EventValidationError(f"{model!r} is not a DomainEvent subclass")
        name = getattr(model, "event_type", None)
        if not isinstance(name, str) or not name:
            raise EventValidationError(
                f"{model.__name__} has no event_type; set event_type = 'something_happened'"
            )
        version = model.schema_version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EventValidationError(
                f"{model.__name__}.schema_version must be an int >= 1, got {version!r}"
            )
        old = self._models.get(name)
        if old is not None and old is not model and version < old.schema_version:
            raise SchemaVersionError(
                f"cannot register {model.__name__} as {name!r} v{version}: "
                f"{old.__name__} v{old.schema_version} is registered and versions only go up"
            )
        self._models[name] = model
        return model

    def register_upcaster(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        """Register `fn`, which lifts an `event_type` payload from `from_version` to the next."""
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise EventValidationError(f"from_version must be an int >= 1, got {from_version!r}")
        if not callable(fn):
            raise EventValidationError(f"upcaster for {event_type!r} must be callable")
        self._upcasters[(event_type, from_version)] = fn

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator form of register_upcaster."""

        def decorate(fn: Upcaster) -> Upcaster:
            self.register_upcaster(event_type, from_version, fn)
            return fn

        return decorate

    def copy(self) -> EventRegistry:
        """An independent copy: extend it without changing this registry."""
        new = EventRegistry()
        new._models = dict(self._models)
        new._upcasters = dict(self._upcasters)
        return new

    # -- lookup ------------------------------------------------------------------------------

    def is_registered(self, event_type: str) -> bool:
        return event_type in self._models

    def types(self) -> list[str]:
        """Registered event type names, sorted."""
        return sorted(self._models)

    def model_for(self, event_type: str) -> type[DomainEvent]:
        model = self._models.get(event_type)
        if model is None:
            raise self.unknown_type_error(event_type)
        return model

    def current_version(self, event_type: str) -> int:
        return self.model_for(event_type).schema_version

    def unknown_type_error(self, event_type: str) -> UnknownEventTypeError:
        """The error for a type name no model is registered for, with the closest name."""
        close = difflib.get_close_matches(event_type, self._models, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UnknownEventTypeError(
            f"unknown event type {event_type!r}{hint}: register it with registry.register "
            "(a DomainEvent subclass), or open the store with validate=False to store "
            "untyped events"
        )

    # -- write path --------------------------------------------------------------------------

    def encode(self, event_type: str, payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Validate `payload`; return (schema_version, normalized JSON-ready payload)."""
        model = self._models.get(event_type)
        if model is None:
            raise self.unknown_type_error(event_type)
        try:
            # model_validate without its wrapper: this runs once per appended event
            instance = model.__pydantic_validator__.validate_python(payload)
        except ValidationError as exc:
            raise EventValidationError(
                f"{event_type} payload invalid: {describe_errors(exc)}"
            ) from exc
        return model.schema_version, _serialize(event_type, instance)

    def encode_model(self, event: DomainEvent) -> tuple[str, int, dict[str, Any]]:
        """(event_type, schema_version, JSON payload) of a typed event of a registered class."""
        cls = type(event)
        name = getattr(cls, "event_type", None)
        if not isinstance(name, str) or self._models.get(name) is not cls:
            raise UnknownEventTypeError(
                f"{cls.__name__} (event type {name!r}) is not registered in this registry; "
                "register it with registry.register, or append a plain payload with "
                "validate=False"
            )
        return name, cls.schema_version, _serialize(name, event)

    # -- read path ---------------------------------------------------------------------------

    def upcast(
        self, event_type: str, schema_version: int, payload: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Lift a stored payload to the current schema version by chaining upcasters."""
        model = self._models.get(event_type)
        if model is None:
            return schema_version, payload
        current = model.schema_version
        if schema_version == current:
            return schema_version, payload
        if schema_version > current:
            raise SchemaVersionError(
                f"stored event {event_type!r} has schema version {schema_version} but this "
                f"code knows only up to {current}; upgrade the code that defines it"
            )
        payload = dict(payload)  # upcasters may edit their argument; never the caller's dict
        for version in range(schema_version, current):
            fn = self._upcasters.get((event_type, version))
            if fn is None:
                raise SchemaVersionError(
                    f"no upcaster for {event_type!r} from schema version {version} to "
                    f"{version + 1} (stored v{schema_version}, current v{current}); register "
                    f"one with registry.register_upcaster({event_type!r}, {version}, fn)"
                )
            payload = fn(payload)
            if not isinstance(payload, dict):
                raise SchemaVersionError(
                    f"upcaster for {event_type!r} from v{version} returned "
                    f"{type(payload).__name__}, not a dict"
                )
        return current, payload

    def parse(self, event: RecordedEvent) -> DomainEvent:
        """A recorded event as a typed instance of its registered model (upcast if needed)."""
        model = self.model_for(event.event_type)
        payload = event.payload
        if event.schema_version != model.schema_version:
            _, payload = self.upcast(event.event_type, event.schema_version, payload)
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise EventValidationError(
                f"stored event {event.id} (position {event.position}) does not match "
                f"{event.event_type} v{model.schema_version}: {describe_errors(exc)}; "
                "fix or add the upcaster for this change"
            ) from exc

    # -- documentation -----------------------------------------------------------------------

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """Event type -> JSON Schema of its payload, with x-event-type and x-schema-version."""
        return {
            name: {
                **model.model_json_schema(),
                "x-event-type": name,
                "x-schema-version": model.schema_version,
            }
            for name, model in sorted(self._models.items())
        }


default_registry = EventRegistry()
"""Holds every built-in AI/ML event (registered by catalog.ml_events, which the package imports)."""
