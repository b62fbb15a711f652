"""Encrypting personal values on append and opening them on read (the store's privacy path).

Values of Personal() fields, and metadata["subject_id"], are stored as {"$enc": ...} envelopes.
"""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from event_sourcing.errors import EventValidationError
from event_sourcing.events import RecordedEvent
from event_sourcing.privacy.crypto import KeyProvider, open_sealed, seal
from event_sourcing.privacy.keys import SubjectKeys
from event_sourcing.privacy.marking import (
    ERASED_TEXT,
    SUBJECT_METADATA_KEY,
    PersonalSpec,
    personal_spec,
    subject_of,
)
from event_sourcing.stores.values import decode, encode

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

ENVELOPE = "$enc"
_META = f"metadata.{SUBJECT_METADATA_KEY}"
_TYPE, _METADATA = itemgetter(5), itemgetter(8)  # a RecordedEvent's event_type and metadata


def _envelope(value: Any) -> str | None:
    """The sealed text of an envelope value, else None."""
    if type(value) is dict and len(value) == 1:
        sealed = value.get(ENVELOPE)
        if type(sealed) is str:
            return sealed
    return None


def _text(value: Any) -> bytes:
    """The JSON text of an already checked value (see stores.values.encode)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an int beyond 64 bits
        return encode(value, "a personal value")[0].encode()


def _json(value: dict[str, Any], what: str) -> tuple[str, int]:
    """The stored text of a payload or metadata whose values were checked already (their
    plaintext went through stores.values.encode) and its size in UTF-8 bytes."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = ""
    if not text or "e+" in text or "-0.0" in text:  # numbers the canonical form rewrites
        text, size, _ = encode(value, what)
        return text, size
    return text, len(text) if text.isascii() else len(text.encode())


class Vault:
    """Seals personal values on append and opens them on read, for one store."""

    def __init__(self, store: EventStore, provider: KeyProvider | None) -> None:
        self.store = store
        self.keys = SubjectKeys(store, provider)
        self._specs: dict[str, tuple[type, PersonalSpec | None]] = {}

    def spec(self, event_type: str) -> PersonalSpec | None:
        """The personal fields of a registered type (None: none, or not registered)."""
        cached = self._specs.get(event_type)
        registry = self.store.registry
        if not registry.is_registered(event_type):
            return None
        model = registry.model_for(event_type)
        if cached is None or cached[0] is not model:
            cached = self._specs[event_type] = (model, personal_spec(model))
        return cached[1]

    # -- append ------------------------------------------------------------------------
    def seal(
        self,
        event_id: str,
        spec: PersonalSpec | None,
        payload: dict[str, Any],
        metadata: dict[str, Any],
        what: str,
        batch_keys: dict[str, tuple[str, Any]],
    ) -> tuple[str, str, int] | None:
        """(payload JSON, metadata JSON, their size) with personal values sealed; None if
        the event names no subject (its values are then not tied to a person).
        `batch_keys` holds the keys already looked up for this append (one read each)."""
        subject = subject_of(spec, payload, metadata)
        if subject is None:
            if spec is not None and any(_envelope(payload.get(f)) for f in spec.fields):
                raise EventValidationError(
                    f"{what} holds a {{{ENVELOPE!r}: ...}} object in a personal field; "
                    "that shape is reserved for encrypted values"
                )
            return None
        if not isinstance(subject, str) or not subject:
            raise EventValidationError(
                f"{what}: the subject id must be a non-empty string, got {subject!r}"
            )
        found = batch_keys.get(subject)
        if found is None:
            found = batch_keys[subject] = self.keys.key_for(subject)
        key_id, aes = found
        sealed = dict(payload)
        for name in spec.fields if spec is not None else ():
            value = payload.get(name)
            if value is not None:
                sealed[name] = {
                    ENVELOPE: f"{key_id}.{seal(aes, _text(value), f'{event_id}/{name}'.encode())}"
                }
        payload_json, size = _json(sealed, what)
        if SUBJECT_METADATA_KEY in metadata:
            text = _text(metadata[SUBJECT_METADATA_KEY])
            metadata = {
                **metadata,
                SUBJECT_METADATA_KEY: {
                    ENVELOPE: f"{key_id}.{seal(aes, text, f'{event_id}/{_META}'.encode())}"
                },
            }
        metadata_json, metadata_size = _json(metadata, f"metadata of {what}")
        return payload_json, metadata_json, size + metadata_size

    # -- read --------------------------------------------------------------------------
    def open(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        """`events` with personal values decrypted, or erased markers where the subject's
        key is gone (in place; the list is returned)."""
        found: list[tuple[int, PersonalSpec | None]] = []
        key_ids: set[str] = set()
        specs = {name: self.spec(name) for name in set(map(_TYPE, events))}
        if all(spec is None for spec in specs.values()) and not any(
            map(dict.__contains__, map(_METADATA, events), repeat(SUBJECT_METADATA_KEY))
        ):
            return events  # the usual page: nothing personal (checked without a loop per event)
        for index, event in enumerate(events):
            spec = specs[event.event_type]
            metadata = event.metadata
            sealed_meta = (
                _envelope(metadata[SUBJECT_METADATA_KEY])
                if SUBJECT_METADATA_KEY in metadata else None
            )
            if spec is None and sealed_meta is None:
                continue
            envelopes = [sealed_meta] if sealed_meta else []
            if spec is not None:
                payload = event.payload
                envelopes += [s for f in spec.fields if (s := _envelope(payload.get(f)))]
            if envelopes:
                found.append((index, spec))
                key_ids.update(text.partition(".")[0] for text in envelopes)
        if not found:
            return events
        keys = self.keys.keys(key_ids)
        for index, spec in found:
            event = events[index]
            payload, metadata = event.payload, event.metadata
            if spec is not None:
                payload = dict(payload)
                for name, marker in spec.fields.items():
                    sealed = _envelope(payload.get(name))
                    if sealed is not None:
                        payload[name] = self._value(sealed, keys, event, name, marker)
            sealed = _envelope(metadata.get(SUBJECT_METADATA_KEY))
            if sealed is not None:
                metadata = {
                    **metadata,
                    SUBJECT_METADATA_KEY: self._value(sealed, keys, event, _META, ERASED_TEXT),
                }
            events[index] = event._replace(payload=payload, metadata=metadata)
        return events

    @staticmethod
    def _value(
        sealed: str, keys: dict[str, Any], event: RecordedEvent, name: str, marker: Any
    ) -> Any:
        key_id, _, text = sealed.partition(".")
        aes = keys.get(key_id)
        if aes is None:
            return dict(marker) if isinstance(marker, dict) else marker
        what = f"{name} of event {event.id}"
        return decode(open_sealed(aes, text, f"{event.id}/{name}".encode(), what).decode())
