"""How one model's Dagster objects are named: asset keys, groups and jobs under a prefix.

No prefix keeps the plain names (`raw_data`, `retrain`); a prefix `wine` gives `wine/raw_data`.
"""

from dataclasses import dataclass

import dagster as dg

from event_sourcing.ml.spec import ModelSpec

__all__ = ["Names"]


@dataclass(frozen=True)
class Names:
    """Names of a model's assets, groups, jobs and sensors."""

    spec: ModelSpec
    prefix: str | None = None
    landing_subfolder: str | None = None

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.prefix, name]) if self.prefix else dg.AssetKey(name)

    def group(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def job(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    @property
    def key_prefix(self) -> list[str] | None:
        return [self.prefix] if self.prefix else None
