"""The breast cancer model's sensors (built by the factory in definitions.py), by name.

Store sensors keep the last global position they read as their cursor; every run key is the
id of the event that caused the run (the landing sensor: a hash of the new files).
"""

import dagster as dg

from event_sourcing.dagster import QualityPolicy, quality_sensor
from pipelines.definitions import SENSOR_INTERVAL, breast_cancer, quality_policy_from_env

__all__ = [
    "build_quality_sensor",
    "landing_folder_sensor",
    "refresh_provenance",
    "retrain_on_new_data",
    "retrain_on_quality_drop",
]

_by_name = {sensor.name: sensor for sensor in breast_cancer.sensors}
retrain_on_new_data = _by_name["retrain_on_new_data"]
refresh_provenance = _by_name["refresh_provenance"]
retrain_on_quality_drop = _by_name["retrain_on_quality_drop"]
landing_folder_sensor = _by_name["landing_folder_sensor"]


def build_quality_sensor(
    policy: QualityPolicy | None = None, name: str = "retrain_on_quality_drop"
) -> dg.SensorDefinition:
    """The quality sensor on the breast cancer retrain job (default: the env's policy)."""
    return quality_sensor(
        breast_cancer.jobs["retrain"],
        policy or quality_policy_from_env(),
        name=name,
        model_names=[breast_cancer.spec.name],
        interval_seconds=SENSOR_INTERVAL,
    )
