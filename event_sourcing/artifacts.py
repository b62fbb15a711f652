"""Content-addressed artifact store: large things (datasets, models) on disk, named by sha256.

Events never carry bytes; they carry an `ArtifactRef` (URI + sha256) that resolves here.

URIs have the form ``artifact://sha256/<64 lowercase hex digits>``. The hex digest is the
sha256 of the artifact's bytes, so a URI names exactly one content, wherever the store lives.
Files sit at ``<root>/sha256/<first two hex>/<hex>``; the root is the ``root`` argument, else
``$MLEVENTS_ARTIFACTS``, else ``./.mlevents/artifacts``. Every read re-hashes the bytes and
raises `ArtifactIntegrityError` if they no longer match their name.

Datasets are snapshotted as *canonical tables*: a one-line JSON header (kind, column names,
dtypes) followed by CSV written with fixed rules (shortest round-trip float text, ``\\n`` line
ends, no index), so the same table always gives the same bytes and its dataset version is
the sha256 of those bytes (`dataset_version`). Models are stored as pickles: see `put_model`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from event_sourcing.catalog import ArtifactRef
from event_sourcing.errors import EventStoreError

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

URI_PREFIX = "artifact://sha256/"
ENV_VAR = "MLEVENTS_ARTIFACTS"
DEFAULT_ROOT = Path(".mlevents") / "artifacts"
MEDIA_TYPE_TABLE = "text/csv; profile=mlevents-table-1"
MEDIA_TYPE_PICKLE = "application/x-python-pickle"

_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_TABLE_MAGIC = "mlevents-table/1 "
# Pickle protocol 5 exists on every supported Python; pinning it keeps bytes stable across
# interpreters that would otherwise pick a different HIGHEST_PROTOCOL.
_PICKLE_PROTOCOL = 5
_PANDAS_MAJOR = int(pd.__version__.split(".")[0])


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
    if not _HEX.match(lowered):
        raise ArtifactReferenceError(
            f"{value!r} is not a sha256 hex digest (64 hex digits); pass the sha256 of the "
            f"artifact's bytes or its '{URI_PREFIX}<hex>' URI"
        )
    return lowered


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
                    if _HEX.match(item.name):
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


# -- canonical tables -------------------------------------------------------------------------


def _float_text(value: float) -> str:
    # repr of a Python float is the shortest text that reads back to the same double, and is
    # the same on every platform: exact and deterministic without a fixed digit count.
    return repr(float(value))


def canonical_table_bytes(table: pd.DataFrame | pd.Series | np.ndarray) -> bytes:
    """Deterministic bytes of a table: same data, column order and dtypes -> same bytes.

    Row order is kept (it matters to training); the index is not part of the data (call
    ``reset_index()`` first if it carries information). Column names must be unique strings.
    Supported dtypes: bool, integer, float (NumPy and nullable), text/object, datetime64
    (naive or tz-aware) and category (stored as codes, categories in the header). In text
    columns a missing value and an empty string are both written as an empty cell and read
    back as missing.
    """
    kind, frame, extra = _as_frame(table)
    columns: list[dict[str, Any]] = []
    out: dict[str, pd.Series] = {}
    for index, name in enumerate(frame.columns):
        series = frame.iloc[:, index]
        spec, column = _encode_column(str(name), series)
        columns.append(spec)
        out[f"c{index}"] = column
    header = {"kind": kind, "rows": len(frame), "columns": columns, **extra}
    body = pd.DataFrame(out, index=pd.RangeIndex(len(frame)))
    buffer = io.StringIO()
    buffer.write(_TABLE_MAGIC)
    buffer.write(json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    buffer.write("\n")
    body.to_csv(
        buffer,
        index=False,
        header=[spec["name"] for spec in columns],
        lineterminator="\n",
        float_format=_float_text,
        na_rep="",
        quoting=csv.QUOTE_MINIMAL,
        date_format=None,
    )
    return buffer.getvalue().encode("utf-8")


def dataset_version(table: pd.DataFrame | pd.Series | np.ndarray) -> str:
    """The dataset version of a table: sha256 of its canonical bytes."""
    return sha256_hex(canonical_table_bytes(table))


def read_canonical_table(data: bytes) -> pd.DataFrame | pd.Series | np.ndarray:
    """Rebuild the table written by `canonical_table_bytes` (same kind, columns and dtypes)."""
    not_a_table = ArtifactError(
        "these bytes are not an mlevents canonical table (missing header); load them with "
        "get_bytes and parse them yourself"
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise not_a_table from None
    first, _, rest = text.partition("\n")
    if not first.startswith(_TABLE_MAGIC):
        raise not_a_table
    try:
        header = json.loads(first[len(_TABLE_MAGIC) :])
    except ValueError:
        header = None
    if not isinstance(header, dict) or not {"columns", "rows", "kind"} <= header.keys():
        raise ArtifactError("the canonical table's header is damaged (not the JSON it wrote)")
    specs: list[dict[str, Any]] = header["columns"]
    names = [f"c{i}" for i in range(len(specs))]
    read_dtypes: dict[str, Any] = {}
    for key, spec in zip(names, specs, strict=True):
        role = spec["role"]
        if role == "number":
            read_dtypes[key] = pd.api.types.pandas_dtype(spec["dtype"])
        elif role == "category":
            read_dtypes[key] = "Int64"
        else:
            read_dtypes[key] = object
    if specs:
        # pandas < 3 parses floats with a fast, not always exact, routine unless asked;
        # pandas 3 is exact by default and deprecates the argument.
        precision = {"float_precision": "round_trip"} if _PANDAS_MAJOR < 3 else {}
        raw = pd.read_csv(
            io.StringIO(rest),
            header=None,
            skiprows=1,
            names=names,
            dtype=read_dtypes,
            keep_default_na=False,
            na_values=[""],
            **precision,
            lineterminator="\n",
        )
    else:
        raw = pd.DataFrame(index=pd.RangeIndex(header["rows"]))
    decoded = {
        spec["name"]: _decode_column(raw[key], spec) for key, spec in zip(names, specs, strict=True)
    }
    frame = pd.DataFrame(decoded, index=pd.RangeIndex(header["rows"]))
    if len(frame) != header["rows"]:
        raise ArtifactError(
            f"canonical table declares {header['rows']} rows but holds {len(frame)}; it is "
            "truncated"
        )
    kind = header["kind"]
    if kind == "series":
        series = frame.iloc[:, 0]
        series.name = header.get("series_name")
        return series
    if kind == "ndarray":
        array = frame.to_numpy(dtype=np.dtype(header["array_dtype"]))
        return array.reshape(-1) if header["ndim"] == 1 else array
    return frame


def _as_frame(table: Any) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    if isinstance(table, pd.DataFrame):
        names = list(table.columns)
        bad = [name for name in names if not isinstance(name, str)]
        if bad:
            raise ArtifactError(
                f"column names must be strings for a canonical table, got {bad[:3]!r}; rename "
                "them (df.columns = df.columns.map(str))"
            )
        if len(set(names)) != len(names):
            raise ArtifactError("column names must be unique for a canonical table; rename them")
        return "dataframe", table, {}
    if isinstance(table, pd.Series):
        name = table.name
        if name is not None and not isinstance(name, str | int):
            raise ArtifactError("a series name must be a string, an int or None")
        frame = table.to_frame(name="value")
        return "series", frame, {"series_name": name}
    if isinstance(table, np.ndarray):
        if table.ndim not in (1, 2):
            raise ArtifactError(
                f"only 1-D and 2-D arrays can be canonical tables, got {table.ndim}-D; reshape it"
            )
        two_d = table.reshape(-1, 1) if table.ndim == 1 else table
        frame = pd.DataFrame(two_d, columns=[str(i) for i in range(two_d.shape[1])])
        return "ndarray", frame, {"ndim": table.ndim, "array_dtype": table.dtype.str}
    raise ArtifactError(
        f"cannot make a canonical table of {type(table).__name__}; pass a pandas DataFrame, "
        "Series or a NumPy array"
    )


def _encode_column(name: str, series: pd.Series) -> tuple[dict[str, Any], pd.Series]:
    dtype = series.dtype
    spec: dict[str, Any] = {"name": name, "dtype": str(dtype)}
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories.tolist()
        try:
            json.dumps(categories, allow_nan=False)
        except (TypeError, ValueError):
            raise ArtifactError(
                f"column {name!r}: categories must be strings or finite numbers to snapshot "
                "them; convert the column with .astype(str) first"
            ) from None
        spec.update(role="category", categories=categories, ordered=bool(dtype.ordered))
        codes = pd.Series(series.cat.codes.to_numpy(), dtype="Int64")
        return spec, codes.mask(codes < 0)
    if pd.api.types.is_bool_dtype(dtype) or (
        (pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype))
        and not pd.api.types.is_complex_dtype(dtype)
    ):
        spec["role"] = "number"
        return spec, series.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        spec["role"] = "datetime"
        # Timestamp.isoformat is a pure function of the value (offset included when tz-aware,
        # nanoseconds only when present), so equal columns give equal text.
        text = series.map(lambda t: t.isoformat(), na_action="ignore").astype(object)
        return spec, text.reset_index(drop=True)
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        spec["role"] = "text"
        values = series.reset_index(drop=True)
        as_text = values.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
        return spec, as_text.astype(object)
    raise ArtifactError(
        f"column {name!r} has dtype {dtype}, which canonical tables do not support; convert it "
        "(to float, int, str or datetime64) before snapshotting"
    )


def _decode_column(raw: pd.Series, spec: dict[str, Any]) -> pd.Series:
    role = spec["role"]
    dtype_name = spec["dtype"]
    if role == "number":
        return raw
    if role == "category":
        codes = raw.fillna(-1).astype("int64").to_numpy()
        cat_dtype = pd.CategoricalDtype(spec["categories"], ordered=spec["ordered"])
        return pd.Series(pd.Categorical.from_codes(codes, dtype=cat_dtype))
    if role == "datetime":
        target = pd.api.types.pandas_dtype(dtype_name)
        tz = getattr(target, "tz", None)
        parsed = pd.to_datetime(raw, format="ISO8601", utc=tz is not None)
        if tz is not None:
            parsed = parsed.dt.tz_convert(tz)
        return parsed.astype(target)
    values = raw.astype(object).where(raw.notna(), None)
    if dtype_name == "object":
        return values.astype(object)
    return values.astype(pd.api.types.pandas_dtype(dtype_name))
