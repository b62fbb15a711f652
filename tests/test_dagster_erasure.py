"""Erasure reaching datasets, artifacts and models, end to end through Dagster: batches with
several subjects are ingested, a model trained and deployed; one subject is forgotten; the
pipeline's erasure sensor redacts the dataset versions, retrains, retires the flagged model;
the report lists it all; no artifact file holds the subject's values; the log verifies.
"""

import base64
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

import event_sourcing as es
from event_sourcing.artifact_gc import collect_garbage
from event_sourcing.artifacts import ArtifactStore, read_canonical_table
from event_sourcing.catalog import DatasetRedacted
from event_sourcing.cli import main
from event_sourcing.dagster import mlevents_definitions, model_pipeline
from event_sourcing.ml import PromotionPolicy
from event_sourcing.ml.history import dataset_history
from event_sourcing.projections import ProjectionRunner, builtin_projections, get_model
from event_sourcing.serving import current_deployment
from event_sourcing.training import TrainingService
from pipelines.dataset import seed_landing
from pipelines.definitions import make_resources
from pipelines.models import WINE_MODEL

ALICE = "alice@example.com"
CUSTOMERS = [ALICE, "bob@example.com", "carol@example.com", "dave@example.com"]
# A policy no retrained model passes (a gain of 50 points): the erasure overrides it.
SPEC = replace(
    WINE_MODEL, dataset=replace(WINE_MODEL.dataset, subject_column="customer_id"),
    promotion=PromotionPolicy(metric="accuracy", min_gain=0.5),
)
PIPELINE = model_pipeline(SPEC, prefix="wine", landing_subfolder="wine")
# Alice's rows get values no other row has, so a file holding them can be found by its bytes.
MARKER = 13.1234567


def _landing(folder: Path) -> dict[str, Any]:
    """Two wine batches whose rows belong to four customers; Alice has rows in the first."""
    alice: dict[str, Any] = {"ids": [], "markers": []}
    for path in seed_landing(folder / "wine", batches=2, dataset_id="wine"):
        frame = pd.read_csv(path)
        frame.insert(1, "customer_id", [CUSTOMERS[i % 4] for i in range(len(frame))])
        if path.name == "batch_000.csv":
            theirs = frame["customer_id"] == ALICE
            markers = [round(MARKER + n * 1e-5, 7) for n in range(int(theirs.sum()))]
            frame.loc[theirs, "alcohol"] = markers
            alice["ids"] += frame.loc[theirs, "sample_id"].tolist()
            alice["markers"] += markers
        else:
            frame.loc[frame["customer_id"] == ALICE, "customer_id"] = "erin@example.com"
        frame.to_csv(path, index=False, lineterminator="\n")
    return alice


def _files(root: Path) -> list[Path]:
    return [p for p in (root / "sha256").rglob("*") if p.is_file()]


def _holding(root: Path, alice: dict[str, Any]) -> list[str]:
    """Artifact files holding Alice's id, one of her values, or a row with her sample id."""
    found = []
    for path in _files(root):
        data = path.read_bytes()
        if ALICE.encode() in data or any(repr(m).encode() in data for m in alice["markers"]):
            found.append(path.name)
            continue
        if not data.startswith(b"mlevents-table/1 "):
            continue  # a model pickle
        table = read_canonical_table(data)
        if isinstance(table, pd.DataFrame) and "sample_id" in table.columns and table[
            "sample_id"
        ].isin(alice["ids"]).any():
            found.append(path.name)
    return found


@pytest.fixture
def kek(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLEVENTS_KEK", base64.b64encode(os.urandom(32)).decode())


def test_forgetting_a_subject_redacts_retrains_retires_and_reports(
    tmp_path: Path, kek: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, root = f"sqlite:///{tmp_path / 'events.db'}", tmp_path / "artifacts"
    alice = _landing(tmp_path / "landing")
    resources = make_resources(url, str(root), str(tmp_path / "landing"))
    defs = mlevents_definitions([PIPELINE], resources=resources)
    sensor = next(s for s in PIPELINE.sensors if s.name == "wine_retrain_on_erasure")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    with dg.instance_for_test() as instance:
        trained = dg.materialize(
            PIPELINE.assets, resources=resources, instance=instance,
            selection=[*PIPELINE.ingestion_assets, *PIPELINE.retrain_assets],
        )
        assert trained.success
        with es.connect(url) as store:
            old = current_deployment(store, "production", SPEC.name)
            assert old is not None
            versions = [v.version for v in dataset_history(store, SPEC.dataset.stream).versions]
            assert len(versions) == 2
            assert _holding(root, alice)  # the snapshots (and more) hold Alice's rows
            erasure = store.forget(ALICE, reason="GDPR art. 17, ticket 4711")
        assert erasure.payload["dataset_versions"] == versions
        assert erasure.payload["dataset_ids"] == ["wine"]
        assert erasure.payload["model_ids"] == [old.model_id]

        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            fired = sensor(context)
        (request,) = fired.run_requests or []
        assert request.run_key == erasure.id
        job = defs.resolve_job_def(request.job_name)
        run = job.execute_in_process(instance=instance, tags=request.tags)
        assert run.success
        # Nothing left to do: a second tick launches nothing.
        with dg.build_sensor_context(
            instance=instance, resources=resources, cursor=fired.cursor
        ) as context:
            assert not sensor(context).run_requests

    with es.connect(url) as store:
        history = dataset_history(store, SPEC.dataset.stream)
        assert set(history.redacted) == set(versions)
        redacted = [v.version for v in history.versions]
        assert [v.redacted_from for v in history.versions] == versions
        assert all(v.status == "passed" for v in history.versions)
        # The old snapshots' bytes are gone; the redacted ones hold the other subjects.
        assert not any(ArtifactStore(root).exists(v) for v in versions)
        latest = ArtifactStore(root).get_table(redacted[-1])
        assert isinstance(latest, pd.DataFrame)
        assert ALICE not in set(latest["customer_id"])
        assert {"bob@example.com", "erin@example.com"} <= set(latest["customer_id"])

        new = current_deployment(store, "production", SPEC.name)
        assert new is not None and new.model_id != old.model_id
        retired = [e for e in store.read_all(event_types=["model_retired"])]
        assert [e.payload["model_id"] for e in retired] == [old.model_id]
        assert erasure.id in retired[0].payload["reason"]
        verdict = list(store.read_all(event_types=["model_evaluated"]))[-1].payload
        assert verdict["promoted"] and "erasure overrides the promotion policy" in verdict[
            "reason"]
        assert not SPEC.promotion.decide(
            {"model_id": new.model_id, "metrics": verdict["metrics"]},
            {"model_id": old.model_id, "metrics": verdict["champion_metrics"]},
        ).promote
        ProjectionRunner(store, builtin_projections()).run()
        assert get_model(store, old.model_id)["erased_by"] == erasure.id  # type: ignore[index]
        assert get_model(store, old.model_id)["status"] == "retired"  # type: ignore[index]
        # The new model's lineage shows the redacted dataset version.
        from event_sourcing.provenance import lineage

        graph = lineage(store, new.model_id)
        assert f"dataset:{redacted[-1]}" in graph.nodes
        assert not any(f"dataset:{v}" in graph.nodes for v in versions)

        # Re-running the flagged model's training answers with the erasure.
        record = get_model(store, old.model_id)
        assert record is not None
        service = TrainingService(store, ArtifactStore(root))
        verified = service.verify_reproducibility(record["training_id"])
        assert not verified.reproducible
        assert verified.differences[0].startswith(f"dataset erased by {erasure.id}")

    # No artifact file holds Alice's values (snapshots, feature tables, evaluation sets).
    assert _holding(root, alice) == []
    with es.connect(url) as store:
        garbage = collect_garbage(store, ArtifactStore(root))
    assert garbage.files == []  # the redaction deleted what it had to; nothing else is dead

    assert main(["erasure-report", ALICE, "--url", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["erasures"]
    assert entry["event_id"] == erasure.id and entry["reason"] == "GDPR art. 17, ticket 4711"
    assert [(r["old_version"], r["new_version"]) for r in entry["redactions"]] == list(
        zip(versions, redacted, strict=True)
    )
    assert entry["flagged_models"] == [old.model_id]
    assert [m["model_id"] for m in entry["retrained_models"]] == [new.model_id]
    assert [m["model_id"] for m in entry["retired_models"]] == [old.model_id]
    assert entry["retired_models"][0]["replaced_by_model_id"] == new.model_id
    assert [m["model_id"] for m in entry["deployed_models"]] == [new.model_id]
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["erasure-report", ALICE, "--url", url]) == 0
    text = capsys.readouterr().out
    for needle in (erasure.id, versions[0], redacted[0], "retired from production",
                   old.model_id, new.model_id, "deployed to production"):
        assert needle in text, needle

    # The whole flow keeps the log's integrity.
    assert main(["verify", "--url", url]) == 0


def test_gc_deletes_unreferenced_artifacts_only_when_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root = f"sqlite:///{tmp_path / 'events.db'}", tmp_path / "artifacts"
    artifacts = ArtifactStore(root)
    with es.connect(url, validate=False) as store:
        kept = artifacts.put_bytes(b"referenced")
        store.append("s", [es.NewEvent("note", {"artifact": kept.uri})])
    orphan = artifacts.put_bytes(b"nobody refers to me")
    args = ["artifacts", "gc", "--url", url, "--artifacts", str(root)]
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main([*args, "--min-age-hours", "0"]) == 0
    dry = capsys.readouterr().out
    assert f"would delete {orphan.sha256} ({orphan.size_bytes} bytes)" in dry
    assert kept.sha256 not in dry and artifacts.exists(orphan)
    # Young files are kept by default: a run may not have recorded its event yet.
    assert main([*args, "--apply", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["garbage_files"] == 0
    assert main([*args, "--apply", "--min-age-hours", "0"]) == 0
    assert f"deleted 1 file(s), {orphan.size_bytes} bytes" in capsys.readouterr().out
    assert not artifacts.exists(orphan) and artifacts.exists(kept)


def test_gc_deletes_what_a_redaction_erased_whatever_its_age_unless_referenced_again(
    tmp_path: Path,
) -> None:
    """A crash between dataset_redacted and its deletes leaves bytes: gc deletes them at
    once; bytes an event refers to again after the redaction stay."""
    url, artifacts = f"sqlite:///{tmp_path / 'events.db'}", ArtifactStore(tmp_path / "a")
    left, reused, new = (artifacts.put_bytes(text) for text in (b"left", b"reused", b"new"))
    with es.connect(url, validate=False) as store:
        redacted = DatasetRedacted(
            dataset_id="d", old_version=left.sha256, new_version=new.sha256, artifact=new,
            erasure_event_id="e", subject_column="customer_id", rows_removed=1, rows_out=1,
            deleted_artifacts=[left.sha256, reused.sha256],
        )
        [event] = store.append("dataset:d", [redacted])
        store.append("s", [es.NewEvent("note", {"table": reused.sha256})])
        garbage = collect_garbage(store, artifacts, apply=True)
    assert garbage.files == [(left.sha256, 4, f"erased (dataset_redacted {event.id})")]
    assert not artifacts.exists(left)
    assert artifacts.exists(reused) and artifacts.exists(new)
