"""Two models from one factory (breast cancer and wine) in one store: both trained, deployed
and listed by `mlevents models`; the read models asset reports the log's health and refreshes
when inference feedback arrives.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.cli import main
from event_sourcing.dagster import read_models_asset
from event_sourcing.serving import current_deployment, score_batch
from pipelines.dataset import seed_landing, write_new_batch
from pipelines.definitions import breast_cancer, defs, make_resources, wine


def _read_models() -> dg.AssetsDefinition:
    return read_models_asset(deps=[p.names.key("deployed_model") for p in (breast_cancer, wine)])


def test_two_models_from_one_factory_are_trained_deployed_and_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    landing = tmp_path / "landing"
    seed_landing(landing, batches=2)
    seed_landing(landing / "wine", batches=2, dataset_id="wine")
    resources = make_resources(url, str(tmp_path / "artifacts"), str(landing))
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [_read_models(), *breast_cancer.assets, *wine.assets],
            resources=resources,
            instance=instance,
        )
    assert result.success
    with es.connect(url) as store:
        served = {
            name: current_deployment(store, "production", name)
            for name in ("breast_cancer_classifier", "wine_classifier")
        }
        datasets = {e.payload["dataset_id"] for e in store.read_all(event_types=["data_ingested"])}
    assert all(served.values()), served
    assert datasets == {"breast_cancer", "wine"}
    # The wine model is a three-class model, scored on its own held-out rows.
    wine_eval = next(
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["wine", "model_evaluation"])
    )
    assert wine_eval.metadata["candidate_accuracy"].value > 0.8

    assert main(["models", "--url", url, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    rows = listed[0] if len(listed) == 1 and isinstance(listed[0], list) else listed
    assert {row["name"] for row in rows} == {"breast_cancer_classifier", "wine_classifier"}
    assert all(row["status"] == "deployed" for row in rows)


def test_both_models_show_in_the_code_location() -> None:
    repository = defs.get_repository_def()
    keys = {k.to_user_string() for k in repository.asset_graph.get_all_asset_keys()}
    assert {"deployed_model", "wine/deployed_model", "read_models"} <= keys
    sensors = {s.name for s in repository.sensor_defs}
    assert {"retrain_on_new_data", "wine_retrain_on_new_data", "wine_landing_folder_sensor",
            "refresh_read_models_on_feedback"} <= sensors


def test_read_models_report_health_and_refresh_when_feedback_arrives(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    landing = tmp_path / "landing"
    seed_landing(landing / "wine", batches=1, dataset_id="wine")
    resources = make_resources(url, str(tmp_path / "artifacts"), str(landing))
    read_models = _read_models()
    feedback_sensor = next(
        s for s in defs.get_repository_def().sensor_defs
        if s.name == "refresh_read_models_on_feedback"
    )
    with dg.instance_for_test() as instance:
        trained = dg.materialize([read_models, *wine.assets], resources=resources,
                                 instance=instance)
        assert trained.success
        mats = {
            e.asset_key.to_user_string(): e.materialization
            for e in trained.get_asset_materialization_events()
        }
        metadata: Any = mats["read_models"].metadata
        # Numbers, so Dagster plots them over time.
        for name in ("head_position", "events_applied", "max_lag", "dead_letters"):
            assert isinstance(metadata[name], dg.IntMetadataValue), name
        assert isinstance(metadata["events_per_second"], dg.FloatMetadataValue)
        assert metadata["max_lag"].value == 0 and metadata["dead_letters"].value == 0
        checks = {c.check_name: c for c in trained.get_asset_check_evaluations()
                  if c.asset_key == dg.AssetKey("read_models")}
        assert checks["projection_lag"].passed and checks["no_dead_letters"].passed

        # The sensor's first tick starts at the head: nothing to refresh.
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            first = feedback_sensor(context)
        assert not first.run_requests

        # Feedback is logged (as `mlevents predict` does); the read models are behind...
        rows = write_new_batch(tmp_path / "scoring", rows=20, dataset_id="wine")
        with es.connect(url) as store:
            scored = score_batch(
                store, ArtifactStore(tmp_path / "artifacts"), pd.read_csv(rows),
                model_name="wine_classifier", label_column="target", id_column="sample_id",
            )
            assert scored.feedback == 20
            assert _quality_rows(store) == 0
        # ... until the sensor asks for read_models, and that run catches them up.
        with dg.build_sensor_context(
            instance=instance, resources=resources, cursor=first.cursor
        ) as context:
            fired = feedback_sensor(context)
        (request,) = fired.run_requests or []
        assert list(request.asset_selection or []) == [dg.AssetKey("read_models")]
        refreshed = dg.materialize([read_models, *wine.assets], selection=[read_models.key],
                                   resources=resources, instance=instance)
        assert refreshed.success
    with es.connect(url) as store:
        assert _quality_rows(store) == 1


def _quality_rows(store: es.EventStore) -> int:
    with store.transaction(read_only=True) as tx:
        if not tx.table_exists("inference_quality"):
            return 0
        return int(tx.execute("SELECT count(*) FROM inference_quality").fetchone()[0])


def _retrain_twice(pipeline: Any, tmp_path: Path) -> list[Any]:
    """The wine pipeline on one batch, then retrained with another C: the candidate's held-out
    accuracy ties the champion's (0.9750 each) with a different model."""
    landing = tmp_path / "landing"
    seed_landing(landing / "wine", batches=1, dataset_id="wine")
    resources = make_resources(
        f"sqlite:///{tmp_path / 'events.db'}", str(tmp_path / "artifacts"), str(landing)
    )
    with dg.instance_for_test() as instance:
        first = dg.materialize(pipeline.assets, resources=resources, instance=instance,
                               selection=[*pipeline.ingestion_assets, *pipeline.retrain_assets])
        second = dg.materialize(
            pipeline.assets, resources=resources, instance=instance,
            selection=pipeline.retrain_assets,
            run_config={"ops": {"wine__trained_model": {"config": {"C": 0.5}}}},
        )
    assert first.success and second.success
    with es.connect(f"sqlite:///{tmp_path / 'events.db'}") as store:
        return list(store.read_all(event_types=["model_evaluated", "model_deployed"]))


def test_a_tie_keeps_the_champion_instead_of_redeploying(tmp_path: Path) -> None:
    events = _retrain_twice(wine, tmp_path)
    verdicts = [e for e in events if e.event_type == "model_evaluated"]
    assert [e.event_type for e in events].count("model_deployed") == 1
    tie = verdicts[-1].payload
    assert tie["metrics"]["accuracy"] == tie["champion_metrics"]["accuracy"]
    assert tie["model_id"] != tie["champion_model_id"]
    assert tie["promoted"] is False and "ties the champion's" in tie["reason"]


def test_a_policy_that_accepts_ties_redeploys(tmp_path: Path) -> None:
    from dataclasses import replace

    from event_sourcing.dagster import PromotionPolicy, model_pipeline
    from pipelines.models import WINE_MODEL

    lenient = model_pipeline(
        replace(WINE_MODEL, promotion=PromotionPolicy(strictly_better=False)),
        prefix="wine", landing_subfolder="wine",
    )
    events = _retrain_twice(lenient, tmp_path)
    assert [e.event_type for e in events].count("model_deployed") == 2
    assert events[-2].payload["promoted"] is True
