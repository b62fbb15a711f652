"""The pipeline's data: scikit-learn's bundled breast cancer set, its schema, and batch files.

`seed_landing` and the `write_*_batch` helpers create landing-folder CSVs (never downloads).
"""

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

__all__ = [
    "DATASET_ID",
    "FEATURE_COLUMNS",
    "ID_COLUMN",
    "TARGET_COLUMN",
    "bundled_dataset",
    "expected_columns",
    "is_holdout",
    "read_batch",
    "reference_maxima",
    "seed_landing",
    "split_holdout",
    "write_drifted_batch",
    "write_invalid_batch",
    "write_new_batch",
]

DATASET_ID = "breast_cancer"
ID_COLUMN = "sample_id"
TARGET_COLUMN = "target"
"""1 = benign, 0 = malignant (scikit-learn's coding)."""
HOLDOUT_BUCKETS = 5
"""One row in HOLDOUT_BUCKETS (by a hash of its sample id) is held out for evaluation."""
_NEW_ID_BASE = 1_000_000
_DRIFT_ID_BASE = 2_000_000


def _column_name(name: str) -> str:
    return name.replace(" ", "_")


def bundled_dataset() -> pd.DataFrame:
    """The 569 rows scikit-learn ships: sample_id, 30 numeric features, target."""
    raw = load_breast_cancer(as_frame=True).frame
    frame = raw.rename(columns=_column_name)
    frame.insert(0, ID_COLUMN, np.arange(len(frame), dtype="int64"))
    frame[TARGET_COLUMN] = frame[TARGET_COLUMN].astype("int64")
    return frame.reset_index(drop=True)


FEATURE_COLUMNS: tuple[str, ...] = tuple(
    _column_name(name) for name in load_breast_cancer().feature_names
)


def expected_columns() -> list[str]:
    """The columns every batch must have, in order."""
    return [ID_COLUMN, *FEATURE_COLUMNS, TARGET_COLUMN]


def reference_maxima() -> dict[str, float]:
    """Largest value of each feature in the bundled data (the range check allows 5x this)."""
    frame = bundled_dataset()
    return {name: float(frame[name].max()) for name in FEATURE_COLUMNS}


def is_holdout(sample_ids: pd.Series) -> pd.Series:
    """True for rows held out of training, decided by a hash of the sample id.

    The same sample is held out in every dataset version, so a champion and a candidate
    trained on different versions never saw the held-out rows.
    """

    def bucket(value: Any) -> int:
        digest = hashlib.sha256(str(int(value)).encode()).digest()
        return digest[0] % HOLDOUT_BUCKETS

    return sample_ids.map(bucket).eq(0)


def split_holdout(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) of a dataset table."""
    mask = is_holdout(frame[ID_COLUMN])
    return frame.loc[~mask].reset_index(drop=True), frame.loc[mask].reset_index(drop=True)


def read_batch(path: str | Path) -> pd.DataFrame:
    """A batch CSV as a table (no type coercion: validation decides whether it is usable)."""
    return pd.read_csv(path)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a hidden temporary name first: the landing sensor ignores dot-files, so it
    # never sees a half-written batch.
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return path


def seed_landing(folder: str | Path, batches: int = 3, seed: int = 0) -> list[Path]:
    """Split the bundled dataset (shuffled by `seed`) into `batches` CSV files in `folder`.

    Files are named batch_000.csv, batch_001.csv...; the same arguments write the same bytes,
    so seeding twice changes nothing.
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    frame = bundled_dataset()
    order = np.random.default_rng(seed).permutation(len(frame))
    shuffled = frame.iloc[order].reset_index(drop=True)
    paths = []
    for index, part in enumerate(np.array_split(np.arange(len(shuffled)), batches)):
        paths.append(_write(shuffled.iloc[part], Path(folder) / f"batch_{index:03d}.csv"))
    return paths


def _resample(rows: int, seed: int, id_base: int) -> pd.DataFrame:
    frame = bundled_dataset()
    rng = np.random.default_rng(seed)
    sample = frame.iloc[rng.integers(0, len(frame), size=rows)].reset_index(drop=True)
    features = list(FEATURE_COLUMNS)
    # 2% multiplicative noise: new measurements of the same population, not copies.
    noise = rng.normal(1.0, 0.02, size=(rows, len(features))).clip(0.9, 1.1)
    sample[features] = (sample[features].to_numpy() * noise).round(6)
    sample[ID_COLUMN] = np.arange(id_base + seed * 10_000, id_base + seed * 10_000 + rows)
    return sample


def write_new_batch(
    folder: str | Path, name: str = "new_batch", rows: int = 120, seed: int = 1
) -> Path:
    """A fresh batch from the same population (resampled rows, small noise, new ids)."""
    return _write(_resample(rows, seed, _NEW_ID_BASE), Path(folder) / f"{name}.csv")


def write_drifted_batch(
    folder: str | Path,
    name: str = "drifted_batch",
    rows: int = 150,
    seed: int = 2,
    shift: float = 1.8,
) -> Path:
    """A batch with concept drift: benign samples whose size features grew by `shift`.

    The values stay in valid ranges (validation passes), but a model trained on the bundled
    data calls many of these benign rows malignant, so feedback accuracy drops.
    """
    sample = _resample(rows, seed, _DRIFT_ID_BASE)
    size_columns = [c for c in FEATURE_COLUMNS if c.split("_", 1)[1] in _SIZE_FEATURES]
    benign = sample[TARGET_COLUMN] == 1
    sample.loc[benign, size_columns] = (sample.loc[benign, size_columns] * shift).round(6)
    concave = [c for c in FEATURE_COLUMNS if "concav" in c]
    sample.loc[benign, concave] = (sample.loc[benign, concave] * shift * 1.5).round(6)
    return _write(sample, Path(folder) / f"{name}.csv")


_SIZE_FEATURES = {"radius", "perimeter", "area", "texture"}


def write_invalid_batch(folder: str | Path, name: str = "invalid_batch", seed: int = 3) -> Path:
    """A batch that fails validation: missing values, a negative area and a bad label."""
    sample = _resample(40, seed, _NEW_ID_BASE + 500_000)
    sample.loc[0, "mean_radius"] = np.nan
    sample.loc[1, "mean_area"] = -10.0
    sample.loc[2, TARGET_COLUMN] = 7
    return _write(sample, Path(folder) / f"{name}.csv")
