"""Schedules evaluated with dg.build_schedule_context: the right job, cron and default status.

Crons come from arguments or environment variables, so deployments can move them.
"""

from datetime import UTC, datetime

import dagster as dg
import pytest

from pipelines.schedules import (
    DEFAULT_INGEST_CRON,
    DEFAULT_RETRAIN_CRON,
    build_schedules,
    daily_ingestion,
    weekly_retrain,
)


def evaluate(schedule: dg.ScheduleDefinition, at: datetime) -> list[dg.RunRequest]:
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=at)
        data = schedule.evaluate_tick(context)
    assert data.skip_message is None
    return list(data.run_requests or [])


def test_daily_ingestion_runs_ingest_and_validate() -> None:
    assert daily_ingestion.cron_schedule == DEFAULT_INGEST_CRON
    assert daily_ingestion.execution_timezone == "UTC"
    assert daily_ingestion.default_status == dg.DefaultScheduleStatus.RUNNING
    (request,) = evaluate(daily_ingestion, datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    assert daily_ingestion.job_name == "ingest_and_validate"
    assert request.run_config == {}


def test_weekly_retrain_runs_the_whole_pipeline() -> None:
    assert weekly_retrain.cron_schedule == DEFAULT_RETRAIN_CRON
    assert weekly_retrain.default_status == dg.DefaultScheduleStatus.RUNNING
    assert weekly_retrain.job_name == "full_pipeline"
    assert len(evaluate(weekly_retrain, datetime(2026, 3, 1, 3, 0, tzinfo=UTC))) == 1


def test_crons_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    daily, weekly = build_schedules("*/15 * * * *", "0 1 1 * *")
    assert (daily.cron_schedule, weekly.cron_schedule) == ("*/15 * * * *", "0 1 1 * *")
    monkeypatch.setenv("MLEVENTS_INGEST_CRON", "30 4 * * *")
    monkeypatch.setenv("MLEVENTS_RETRAIN_CRON", "0 2 * * 6")
    daily, weekly = build_schedules()
    assert (daily.cron_schedule, weekly.cron_schedule) == ("30 4 * * *", "0 2 * * 6")
    assert len(evaluate(daily, datetime(2026, 3, 2, 4, 30, tzinfo=UTC))) == 1
