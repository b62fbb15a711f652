"""The breast cancer model's schedules: a daily ingestion + validation and a weekly full
retrain (crons from $MLEVENTS_INGEST_CRON / $MLEVENTS_RETRAIN_CRON, UTC, or arguments).
"""

import dagster as dg

from pipelines.definitions import (
    DEFAULT_INGEST_CRON,
    DEFAULT_RETRAIN_CRON,
    breast_cancer,
    build_pipelines,
)

__all__ = [
    "DEFAULT_INGEST_CRON",
    "DEFAULT_RETRAIN_CRON",
    "build_schedules",
    "daily_ingestion",
    "weekly_retrain",
]


def build_schedules(
    ingest_cron: str | None = None, retrain_cron: str | None = None
) -> tuple[dg.ScheduleDefinition, dg.ScheduleDefinition]:
    """(daily ingestion + validation, weekly full retrain) on the given or configured crons."""
    daily, weekly = build_pipelines(ingest_cron, retrain_cron)[0].schedules
    return daily, weekly


daily_ingestion, weekly_retrain = breast_cancer.schedules
