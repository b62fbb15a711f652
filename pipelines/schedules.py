"""Schedules: a daily ingestion + validation and a weekly full retrain, running by default.

Cron expressions come from $MLEVENTS_INGEST_CRON / $MLEVENTS_RETRAIN_CRON (UTC) or arguments.
"""

import os

import dagster as dg

from pipelines.jobs import full_pipeline_job, ingestion_job

__all__ = [
    "DEFAULT_INGEST_CRON",
    "DEFAULT_RETRAIN_CRON",
    "build_schedules",
    "daily_ingestion",
    "schedules",
    "weekly_retrain",
]

DEFAULT_INGEST_CRON = "0 6 * * *"
"""06:00 UTC every day."""
DEFAULT_RETRAIN_CRON = "0 3 * * 0"
"""03:00 UTC every Sunday."""


def build_schedules(
    ingest_cron: str | None = None, retrain_cron: str | None = None
) -> tuple[dg.ScheduleDefinition, dg.ScheduleDefinition]:
    """(daily ingestion + validation, weekly full retrain) on the given or configured crons."""
    ingest = ingest_cron or os.environ.get("MLEVENTS_INGEST_CRON") or DEFAULT_INGEST_CRON
    retrain = retrain_cron or os.environ.get("MLEVENTS_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON
    daily = dg.ScheduleDefinition(
        name="daily_ingestion",
        job=ingestion_job,
        cron_schedule=ingest,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Ingest and validate whatever landed since the last run.",
    )
    weekly = dg.ScheduleDefinition(
        name="weekly_retrain",
        job=full_pipeline_job,
        cron_schedule=retrain,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The whole pipeline: ingest, validate, retrain, evaluate, deploy, lineage.",
    )
    return daily, weekly


daily_ingestion, weekly_retrain = build_schedules()
schedules = [daily_ingestion, weekly_retrain]
