"""Naming artifacts: ``artifact://sha256/<hex>`` URIs, sha256 digests, and the errors of
the artifact store (event_sourcing.artifacts).

A URI's hex digest is the sha256 of the artifact's bytes, so a URI names exactly one
content, wherever the store lives. `parse_artifact_id` accepts an ArtifactRef, a URI, a
``sha256:<hex>`` string or a bare digest, and gives the lowercase digest.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from event_sourcing.catalog import ArtifactRef
from event_sourcing.errors import EventStoreError

URI_PREFIX = "artifact://sha256/"
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")  # a stored artifact's file name


class ArtifactError(EventStoreError):
    """An artifact could not be stored, found, read or decoded."""


class ArtifactNotFoundError(ArtifactError, LookupError):
    """No artifact with that sha256 exists under the store's root."""


class ArtifactIntegrityError(ArtifactError):
    """An artifact's bytes no longer hash to the sha256 they are stored (and referenced) under."""

    def __init__(self, expected: str, actual: str, path: Path) -> None:
        self.expected = expected
        self.actual = actual
        self.path = path
        super().__init__(
            f"artifact {URI_PREFIX}{expected} at {path} is corrupt: its bytes hash to "
            f"sha256 {actual}. Something modified the file after it was stored; restore it "
            "from a backup or put the original content again (put_bytes repairs it)."
        )


class ArtifactReferenceError(ArtifactError, ValueError):
    """A value is not an ArtifactRef, an artifact:// URI or a sha256 hex digest."""


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def artifact_uri(sha256: str) -> str:
    """The ``artifact://sha256/<hex>`` URI of a digest."""
    return URI_PREFIX + _check_hex(sha256)


def parse_artifact_id(ref: ArtifactRef | str) -> str:
    """The sha256 hex digest named by an ArtifactRef, an ``artifact://sha256/`` URI or a digest."""
    if isinstance(ref, ArtifactRef):
        return _check_hex(ref.sha256)
    if not isinstance(ref, str):
        raise ArtifactReferenceError(
            f"cannot address an artifact by {type(ref).__name__}; pass an ArtifactRef, an "
            f"'{URI_PREFIX}<hex>' URI or a 64-digit sha256 hex string"
        )
    text = ref.strip()
    if text.startswith(URI_PREFIX):
        text = text[len(URI_PREFIX) :]
    elif text.startswith("sha256:"):
        text = text[len("sha256:") :]
    elif "://" in text:
        raise ArtifactReferenceError(
            f"{ref!r} is not an artifact URI; this store resolves only '{URI_PREFIX}<hex>'"
        )
    return _check_hex(text)


def _check_hex(value: str) -> str:
    lowered = value.lower()
    if not HEX_DIGEST.match(lowered):
        raise ArtifactReferenceError(
            f"{value!r} is not a sha256 hex digest (64 hex digits); pass the sha256 of the "
            f"artifact's bytes or its '{URI_PREFIX}<hex>' URI"
        )
    return lowered
