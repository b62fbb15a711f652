"""Artifact store: content addressing, atomic idempotent writes, tamper detection, tables.

Canonical tables must give the same bytes for the same data and read back exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from event_sourcing.artifacts import (
    URI_PREFIX,
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactReferenceError,
    ArtifactStore,
    canonical_table_bytes,
    dataset_version,
    read_canonical_table,
    sha256_hex,
)
from event_sourcing.catalog import ArtifactRef
from event_sourcing.errors import EventStoreError


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _tamper(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)  # stored files are read-only; an attacker (or accident) ignores that
    path.write_bytes(data)


def test_put_get_round_trip_is_content_addressed(artifacts: ArtifactStore) -> None:
    ref = artifacts.put_bytes(b"hello", media_type="text/plain")
    digest = sha256_hex(b"hello")
    assert ref == ArtifactRef(
        uri=URI_PREFIX + digest, sha256=digest, size_bytes=5, media_type="text/plain"
    )
    assert artifacts.path_for(ref) == artifacts.root / "sha256" / digest[:2] / digest
    # Every way of naming the artifact resolves to the same bytes.
    for name in (ref, ref.uri, digest, f"sha256:{digest}", digest.upper()):
        assert artifacts.get_bytes(name) == b"hello"
        assert artifacts.exists(name)
    assert list(artifacts.iter_digests()) == [digest]


def test_put_is_idempotent_and_leaves_no_temp_files(artifacts: ArtifactStore) -> None:
    first = artifacts.put_bytes(b"same bytes")
    second = artifacts.put_bytes(bytearray(b"same bytes"))
    assert first == second
    files = [p for p in artifacts.root.rglob("*") if p.is_file()]
    assert files == [artifacts.path_for(first)]


def test_put_file_streams_to_the_same_address(artifacts: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    ref = artifacts.put_file(source, media_type="application/octet-stream")
    assert ref == artifacts.put_bytes(data, media_type="application/octet-stream")
    assert artifacts.get_bytes(ref) == data
    assert artifacts.verify(ref).size_bytes == len(data)
    assert not [p for p in artifacts.root.iterdir() if p.name.startswith(".incoming")]


def test_tampered_bytes_raise_integrity_error(artifacts: ArtifactStore) -> None:
    ref = artifacts.put_bytes(b"original model bytes")
    _tamper(artifacts.path_for(ref), b"evil model bytes")
    with pytest.raises(ArtifactIntegrityError) as caught:
        artifacts.get_bytes(ref)
    assert isinstance(caught.value, EventStoreError)
    assert caught.value.expected == ref.sha256
    assert caught.value.actual == sha256_hex(b"evil model bytes")
    assert "corrupt" in str(caught.value) and "restore" in str(caught.value)
    with pytest.raises(ArtifactIntegrityError):
        artifacts.verify(ref.uri)
    # Putting the original content again repairs the file.
    assert artifacts.put_bytes(b"original model bytes") == ref
    assert artifacts.get_bytes(ref) == b"original model bytes"


def test_missing_artifact_and_bad_references(artifacts: ArtifactStore) -> None:
    missing = sha256_hex(b"never stored")
    with pytest.raises(ArtifactNotFoundError, match="put it again"):
        artifacts.get_bytes(missing)
    assert not artifacts.exists(missing)
    for bad in ("s3://bucket/key", "artifact://sha256/xyz", "1234", ""):
        with pytest.raises(ArtifactReferenceError):
            artifacts.get_bytes(bad)
    with pytest.raises(ArtifactError, match="takes bytes"):
        artifacts.put_bytes("text")  # type: ignore[arg-type]


def test_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLEVENTS_ARTIFACTS", str(tmp_path / "from-env"))
    assert ArtifactStore().root == tmp_path / "from-env"
    monkeypatch.delenv("MLEVENTS_ARTIFACTS")
    monkeypatch.chdir(tmp_path)
    assert ArtifactStore().root == tmp_path / ".mlevents" / "artifacts"


def test_canonical_table_round_trips_a_real_dataset_exactly(artifacts: ArtifactStore) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    data = canonical_table_bytes(frame)
    back = read_canonical_table(data)
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert canonical_table_bytes(back) == data  # canonicalization is a fixed point
    ref = artifacts.put_table(frame)
    assert ref.sha256 == dataset_version(frame) == sha256_hex(data)
    pd.testing.assert_frame_equal(artifacts.get_table(ref), frame, check_exact=True)


def test_dataset_version_depends_on_data_order_and_dtypes_not_the_index() -> None:
    frame = load_wine(as_frame=True).frame
    version = dataset_version(frame)
    assert dataset_version(frame.copy()) == version
    assert dataset_version(frame.set_axis(range(100, 100 + len(frame)))) == version
    assert dataset_version(frame[list(reversed(frame.columns))]) != version
    assert dataset_version(frame.astype({"target": "float64"})) != version
    assert dataset_version(frame.iloc[::-1]) != version
    changed = frame.copy()
    changed.iloc[0, 0] = np.nextafter(changed.iloc[0, 0], np.inf)  # one ulp is a new version
    assert dataset_version(changed) != version


def test_canonical_table_handles_mixed_dtypes_series_and_arrays() -> None:
    frame = pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [0.1, np.nan, -0.0],
            "f32": np.array([0.1, 1e30, 3.5], dtype="float32"),
            "b": [True, False, True],
            "n": pd.array([1, None, 3], dtype="Int64"),
            "s": ["a", None, 'with,comma "quoted"\nnewline'],
            "o": pd.Series(["x", "y", "z"], dtype=object),
            "c": pd.Categorical(["lo", None, "hi"], categories=["lo", "hi"], ordered=True),
            "t": pd.to_datetime(
                ["2024-01-01T00:00:00", None, "2024-03-31T01:30:00.25"], format="ISO8601"
            ).tz_localize("Europe/Paris"),
        }
    )
    back = read_canonical_table(canonical_table_bytes(frame))
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame, check_exact=True)

    series = pd.Series([1.5, 2.5], name="y")
    back_series = read_canonical_table(canonical_table_bytes(series))
    assert isinstance(back_series, pd.Series)
    pd.testing.assert_series_equal(back_series, series)

    array = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    back_array = read_canonical_table(canonical_table_bytes(array))
    assert isinstance(back_array, np.ndarray)
    np.testing.assert_array_equal(back_array, array)
    vector = np.array([3, 1, 2], dtype=np.int32)
    back_vector = read_canonical_table(canonical_table_bytes(vector))
    assert isinstance(back_vector, np.ndarray) and back_vector.dtype == np.int32
    np.testing.assert_array_equal(back_vector, vector)


def test_float_text_reads_back_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.random(2000), rng.normal(size=2000) * 1e-300, rng.normal(size=2000) * 1e300]
    )
    frame = pd.DataFrame({"x": values, "x32": np.clip(values, -1e30, 1e30).astype(np.float32)})
    back = read_canonical_table(canonical_table_bytes(frame))
    assert isinstance(back, pd.DataFrame)
    assert back["x"].to_numpy().tobytes() == frame["x"].to_numpy().tobytes()
    assert back["x32"].to_numpy().tobytes() == frame["x32"].to_numpy().tobytes()


def test_unsupported_tables_get_clear_errors() -> None:
    with pytest.raises(ArtifactError, match="do not support"):
        canonical_table_bytes(pd.DataFrame({"d": pd.to_timedelta([1, 2], unit="s")}))
    with pytest.raises(ArtifactError, match="must be strings"):
        canonical_table_bytes(pd.DataFrame({0: [1]}))
    with pytest.raises(ArtifactError, match="1-D and 2-D"):
        canonical_table_bytes(np.zeros((2, 2, 2)))
    with pytest.raises(ArtifactError, match="not an mlevents canonical table"):
        read_canonical_table(b"a,b\n1,2\n")
    with pytest.raises(ArtifactError, match="not an mlevents canonical table"):
        read_canonical_table(b"\xff\xfe not UTF-8")
    for header in (b"{", b"[]", b'{"rows": 1}'):
        with pytest.raises(ArtifactError, match="header is damaged"):
            read_canonical_table(b"mlevents-table/1 " + header + b"\n")


def test_models_round_trip_through_pickle(artifacts: ArtifactStore) -> None:
    data = load_wine()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(data.data, data.target)
    ref = artifacts.put_model(model)
    assert ref.media_type == "application/x-python-pickle"
    loaded = artifacts.get_model(ref)
    np.testing.assert_array_equal(loaded.predict(data.data), model.predict(data.data))
    _tamper(artifacts.path_for(ref), b"not a pickle")
    with pytest.raises(ArtifactIntegrityError):  # never unpickles bytes that do not match
        artifacts.get_model(ref)
