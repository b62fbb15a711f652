"""The demo's data: two sets scikit-learn ships (breast cancer, wine), their schemas, and
batch files. `seed_landing` and the `write_*_batch` helpers create landing-folder CSVs (never
downloads).
"""

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_wine

from event_sourcing.ml import TabularDataset

__all__ = [
    "BREAST_CANCER",
    "DATASET_ID",
    "FEATURE_COLUMNS",
    "ID_COLUMN",
    "TARGET_COLUMN",
    "WINE",
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


_LOADERS = {"breast_cancer": load_breast_cancer, "wine": load_wine}


def bundled_dataset(dataset_id: str = DATASET_ID) -> pd.DataFrame:
    """The rows scikit-learn ships (569 for breast_cancer, 178 for wine): sample_id, the
    numeric features, target."""
    raw = _LOADERS[dataset_id](as_frame=True).frame
    frame = raw.rename(columns=_column_name)
    frame.insert(0, ID_COLUMN, np.arange(len(frame), dtype="int64"))
    frame[TARGET_COLUMN] = frame[TARGET_COLUMN].astype("int64")
    return frame.reset_index(drop=True)


def _feature_columns(dataset_id: str) -> tuple[str, ...]:
    return tuple(_column_name(name) for name in _LOADERS[dataset_id]().feature_names)


FEATURE_COLUMNS: tuple[str, ...] = _feature_columns(DATASET_ID)

BREAST_CANCER = TabularDataset(
    dataset_id=DATASET_ID,
    feature_columns=FEATURE_COLUMNS,
    target_column=TARGET_COLUMN,
    id_column=ID_COLUMN,
    labels=(0, 1),
    holdout_buckets=HOLDOUT_BUCKETS,
    reference=lambda: bundled_dataset(DATASET_ID),
)
WINE = TabularDataset(
    dataset_id="wine",
    feature_columns=_feature_columns("wine"),
    target_column=TARGET_COLUMN,
    id_column=ID_COLUMN,
    labels=(0, 1, 2),
    holdout_buckets=HOLDOUT_BUCKETS,
    reference=lambda: bundled_dataset("wine"),
)
_DATASETS = {d.dataset_id: d for d in (BREAST_CANCER, WINE)}


def expected_columns() -> list[str]:
    """The columns every breast_cancer batch must have, in order."""
    return BREAST_CANCER.expected_columns()


def reference_maxima() -> dict[str, float]:
    """Largest value of each breast_cancer feature in the bundled data."""
    return BREAST_CANCER.reference_maxima()


def is_holdout(sample_ids: pd.Series) -> pd.Series:
    """True for rows held out of training, decided by a hash of the sample id."""
    return BREAST_CANCER.is_holdout(sample_ids)


def split_holdout(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) of a dataset table."""
    return BREAST_CANCER.split_holdout(frame)


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


def seed_landing(
    folder: str | Path, batches: int = 3, seed: int = 0, dataset_id: str = DATASET_ID
) -> list[Path]:
    """Split the bundled dataset (shuffled by `seed`) into `batches` CSV files in `folder`.

    Files are named batch_000.csv, batch_001.csv...; the same arguments write the same bytes,
    so seeding twice changes nothing.
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    frame = bundled_dataset(dataset_id)
    order = np.random.default_rng(seed).permutation(len(frame))
    shuffled = frame.iloc[order].reset_index(drop=True)
    paths = []
    for index, part in enumerate(np.array_split(np.arange(len(shuffled)), batches)):
        paths.append(_write(shuffled.iloc[part], Path(folder) / f"batch_{index:03d}.csv"))
    return paths


def _resample(rows: int, seed: int, id_base: int, dataset_id: str = DATASET_ID) -> pd.DataFrame:
    frame = bundled_dataset(dataset_id)
    rng = np.random.default_rng(seed)
    sample = frame.iloc[rng.integers(0, len(frame), size=rows)].reset_index(drop=True)
    features = list(_DATASETS[dataset_id].feature_columns)
    # 2% multiplicative noise: new measurements of the same population, not copies.
    noise = rng.normal(1.0, 0.02, size=(rows, len(features))).clip(0.9, 1.1)
    sample[features] = (sample[features].to_numpy() * noise).round(6)
    sample[ID_COLUMN] = np.arange(id_base + seed * 10_000, id_base + seed * 10_000 + rows)
    return sample


def write_new_batch(
    folder: str | Path,
    name: str = "new_batch",
    rows: int = 120,
    seed: int = 1,
    dataset_id: str = DATASET_ID,
) -> Path:
    """A fresh batch from the same population (resampled rows, small noise, new ids)."""
    frame = _resample(rows, seed, _NEW_ID_BASE, dataset_id)
    return _write(frame, Path(folder) / f"{name}.csv")


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
