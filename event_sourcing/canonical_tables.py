"""Canonical tables: the deterministic bytes a dataset snapshot is stored as.

A one-line JSON header (kind, column names, dtypes) followed by CSV written with fixed
rules (shortest round-trip float text, ``\\n`` line ends, no index), so the same table always
gives the same bytes and its dataset version is the sha256 of those bytes
(`dataset_version`). `ArtifactStore.put_table` and `get_table` store and load them.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pandas as pd

from event_sourcing.artifact_refs import ArtifactError, sha256_hex

_TABLE_MAGIC = "mlevents-table/1 "
_PANDAS_MAJOR = int(pd.__version__.split(".")[0])


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
