"""Content-addressed artifact store: large things (datasets, models) on disk, named by sha256.

Events never carry bytes; they carry an `ArtifactRef` (URI + sha256) that resolves here.

URIs have the form ``artifact://sha256/<64 lowercase hex digits>`` (event_sourcing.artifact_refs
parses them). Files sit at ``<root>/sha256/<first two hex>/<hex>``; the root is the ``root``
argument, else ``$MLEVENTS_ARTIFACTS``, else ``./.mlevents/artifacts``. Every read re-hashes
the bytes and raises `ArtifactIntegrityError` if they no longer match their name.

Datasets are snapshotted as *canonical tables* (event_sourcing.canonical_tables): the same
table always gives the same bytes, and its dataset version is their sha256
(`dataset_version`). Models are stored as pickles: see `put_model`.

This module is the public face of all three: `__all__` names what it offers.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from event_sourcing.artifact_refs import (
    HEX_DIGEST,
    URI_PREFIX,
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactReferenceError,
    artifact_uri,
    parse_artifact_id,
    sha256_hex,
)
from event_sourcing.canonical_tables import (
    canonical_table_bytes,
    dataset_version,
    read_canonical_table,
)
from event_sourcing.catalog import ArtifactRef

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "MEDIA_TYPE_PICKLE",
    "MEDIA_TYPE_TABLE",
    "URI_PREFIX",
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFoundError",
    "ArtifactReferenceError",
    "ArtifactStore",
    "artifact_uri",
    "canonical_table_bytes",
    "dataset_version",
    "model_from_bytes",
    "model_to_bytes",
    "parse_artifact_id",
    "read_canonical_table",
    "sha256_hex",
]

ENV_VAR = "MLEVENTS_ARTIFACTS"
DEFAULT_ROOT = Path(".mlevents") / "artifacts"
MEDIA_TYPE_TABLE = "text/csv; profile=mlevents-table-1"
MEDIA_TYPE_PICKLE = "application/x-python-pickle"

_CHUNK = 1 << 20
# Pickle protocol 5 exists on every supported Python; pinning it keeps bytes stable across
# interpreters that would otherwise pick a different HIGHEST_PROTOCOL.
_PICKLE_PROTOCOL = 5


class ArtifactStore:
    """A content-addressed store of immutable blobs in a local folder.

    Writes go to a temporary file in the target folder and are renamed into place with
    `os.replace`, so readers never see a half-written artifact and concurrent writers of the
    same content are harmless. Stored files are made read-only to discourage edits.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    # -- addressing -----------------------------------------------------------------------

    def path_for(self, ref: ArtifactRef | str) -> Path:
        """Where the artifact named by `ref` lives (or would live) on disk."""
        digest = parse_artifact_id(ref)
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, ref: ArtifactRef | str) -> bool:
        """Whether the artifact is present (without re-hashing it; `verify` does that)."""
        return self.path_for(ref).is_file()

    def ref_for(self, ref: ArtifactRef | str, media_type: str | None = None) -> ArtifactRef:
        """An ArtifactRef for a stored artifact (size read from disk)."""
        path = self.path_for(ref)
        digest = parse_artifact_id(ref)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise self._not_found(digest) from None
        if media_type is None and isinstance(ref, ArtifactRef):
            media_type = ref.media_type
        return _make_ref(digest, size, media_type)

    # -- writing --------------------------------------------------------------------------

    def put_bytes(
        self, data: bytes | bytearray | memoryview, media_type: str | None = None
    ) -> ArtifactRef:
        """Store `data` and return its reference. Idempotent: the same bytes give the same ref.

        If a file already sits at the name but is corrupt, it is replaced (this repairs it).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ArtifactError(
                f"put_bytes takes bytes, not {type(data).__name__}; use put_file for paths, "
                "put_table for dataframes and put_model for estimators"
            )
        payload = bytes(data)
        digest = sha256_hex(payload)
        target = self.path_for(digest)
        if not self._intact(target, digest):
            self._write_atomically(target, iter((payload,)))
        return _make_ref(digest, len(payload), media_type)

    def put_file(self, path: str | os.PathLike[str], media_type: str | None = None) -> ArtifactRef:
        """Copy a file into the store (streamed, never fully in memory) and return its ref."""
        source = Path(path)
        if not source.is_file():
            raise ArtifactNotFoundError(f"cannot store {source}: it is not a readable file")
        hasher = hashlib.sha256()
        self.root.mkdir(parents=True, exist_ok=True)
        # Hash while copying to a temp file, then rename to the name the hash gives.
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    hasher.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            target = self.path_for(digest)
            if self._intact(target, digest):
                os.unlink(tmp_name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, target)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return _make_ref(digest, size, media_type)

    def put_table(self, table: pd.DataFrame | pd.Series | np.ndarray) -> ArtifactRef:
        """Snapshot a dataframe/series/array as a canonical table; its sha256 is its version."""
        return self.put_bytes(canonical_table_bytes(table), media_type=MEDIA_TYPE_TABLE)

    def put_model(self, model: Any) -> ArtifactRef:
        """Store a model as a pickle.

        Security: unpickling runs code chosen by whoever wrote the bytes. Only load models
        from stores you trust; the sha256 check proves the bytes are the ones referenced by
        the event, not that the writer was benign.
        """
        return self.put_bytes(model_to_bytes(model), media_type=MEDIA_TYPE_PICKLE)

    # -- reading --------------------------------------------------------------------------

    def get_bytes(self, ref: ArtifactRef | str) -> bytes:
        """The artifact's bytes, after checking they still hash to its sha256."""
        digest = parse_artifact_id(ref)
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._not_found(digest) from None
        actual = sha256_hex(data)
        if actual != digest:
            raise ArtifactIntegrityError(digest, actual, path)
        return data

    def open(self, ref: ArtifactRef | str) -> BinaryIO:
        """A binary stream over a verified artifact (verified in full before it is returned)."""
        return io.BytesIO(self.get_bytes(ref))

    def verify(self, ref: ArtifactRef | str) -> ArtifactRef:
        """Re-hash a stored artifact (streamed); return its ref or raise an ArtifactError."""
        digest = parse_artifact_id(ref)
        path = self.path_for(digest)
        try:
            actual, size = _hash_file(path)
        except FileNotFoundError:
            raise self._not_found(digest) from None
        if actual != digest:
            raise ArtifactIntegrityError(digest, actual, path)
        media_type = ref.media_type if isinstance(ref, ArtifactRef) else None
        return _make_ref(digest, size, media_type)

    def get_table(self, ref: ArtifactRef | str) -> pd.DataFrame | pd.Series | np.ndarray:
        """Load a canonical table stored by `put_table` (hash-checked)."""
        return read_canonical_table(self.get_bytes(ref))

    def get_model(self, ref: ArtifactRef | str) -> Any:
        """Load a pickled model stored by `put_model` (hash-checked).

        Security: this unpickles, which can run arbitrary code. Only use it on artifact
        stores whose writers you trust.
        """
        return model_from_bytes(self.get_bytes(ref))

    def delete(self, ref: ArtifactRef | str) -> int:
        """Delete a stored artifact; return the bytes freed (0: it was not there).

        Artifacts are never edited; they are deleted only when they must not be kept (a
        dataset snapshot holding an erased subject's rows) or nothing refers to them any
        more (`mlevents artifacts gc`): see docs/privacy.md.
        """
        path = self.path_for(ref)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def iter_digests(self) -> Iterator[str]:
        """The sha256 of every stored artifact (by file name; not re-hashed)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.is_dir():
                for item in sorted(sub.iterdir()):
                    if HEX_DIGEST.match(item.name):
                        yield item.name

    # -- internals ------------------------------------------------------------------------

    def _not_found(self, digest: str) -> ArtifactNotFoundError:
        return ArtifactNotFoundError(
            f"no artifact {URI_PREFIX}{digest} under {self.root}; put it again, or point "
            f"ArtifactStore(root=...) / ${ENV_VAR} at the folder that holds it"
        )

    @staticmethod
    def _intact(path: Path, digest: str) -> bool:
        try:
            return _hash_file(path)[0] == digest
        except FileNotFoundError:
            return False

    def _write_atomically(self, target: Path, chunks: Iterator[bytes]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, target)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise


def _hash_file(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def _make_ref(digest: str, size: int, media_type: str | None) -> ArtifactRef:
    return ArtifactRef(
        uri=URI_PREFIX + digest,
        sha256=digest,
        size_bytes=size,
        media_type=media_type or "application/octet-stream",
    )


# -- models -----------------------------------------------------------------------------------


def model_to_bytes(model: Any) -> bytes:
    """Pickle a model. Pickle bytes are not a reproducibility measure; use model_fingerprint."""
    try:
        return pickle.dumps(model, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:
        raise ArtifactError(
            f"cannot pickle {type(model).__name__}: {exc}. Store the model's own saved file "
            "with put_file instead"
        ) from exc


def model_from_bytes(data: bytes) -> Any:
    """Unpickle a model. Security: this runs code chosen by the writer; trust the source."""
    try:
        return pickle.loads(data)  # documented: trusted stores only
    except Exception as exc:
        raise ArtifactError(
            f"cannot unpickle the artifact ({exc}); it is not a pickle, or it needs a library "
            "(or version) that is not installed here"
        ) from exc
