"""docs/adopt.md works as written: its two files, copied into a throwaway project, load in a
fresh interpreter (only the documented imports; this repository's `pipelines` is not on the
path), materialize the iris pipeline on a landed batch and drive their sensors.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_DRIVER = r"""
import json, sys
import dagster as dg
from sklearn.datasets import load_iris

import event_sourcing as es
from event_sourcing.serving import current_deployment
import my_project.definitions as project

out = {"pipelines_importable": True}
try:
    import pipelines  # noqa: F401
except ImportError:
    out["pipelines_importable"] = False
defs = project.defs
dg.Definitions.validate_loadable(defs)
repo = defs.get_repository_def()
resources = defs.resources

frame = load_iris(as_frame=True).frame
frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
frame.insert(0, "sample_id", range(len(frame)))
landing = sys.argv[1]
import pathlib
(pathlib.Path(landing) / "iris").mkdir(parents=True, exist_ok=True)
frame.to_csv(pathlib.Path(landing) / "iris" / "batch_000.csv", index=False)

def tick(name, instance, cursor=None):
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        return repo.get_sensor_def(name)(ctx)

with dg.instance_for_test() as instance:
    landed = tick("iris_landing_folder_sensor", instance)
    out["landing_jobs"] = [r.job_name for r in landed.run_requests]
    result = defs.get_job_def("iris_full_pipeline").execute_in_process(instance=instance)
    out["success"] = result.success
    out["materialized"] = sorted(
        e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
    )
    # The full run retrained itself: the new-data sensor has nothing to add.
    out["retrain_requests"] = len(tick("iris_retrain_on_new_data", instance).run_requests or [])
    deployed = tick("release_notes_on_deploy", instance)
    out["release_notes_requests"] = [
        [k.to_user_string() for k in r.asset_selection] for r in deployed.run_requests
    ]
    with es.connect(__import__("os").environ["MLEVENTS_URL"]) as store:
        serving = current_deployment(store, "production", "iris_classifier")
        out["deployed"] = serving is not None
        out["deployed_event_ids"] = [
            e.id for e in store.read_all(event_types=["model_deployed"])
        ]
    out["release_notes_run_keys"] = [r.run_key for r in deployed.run_requests]
print(json.dumps(out))
"""


def _documented_files() -> dict[str, str]:
    text = (ROOT / "docs" / "adopt.md").read_text()
    files = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# (my_project/\w+\.py)", first)
        if match:
            files[match.group(1)] = block
    return files


def test_the_adoption_guide_runs_as_written(tmp_path: Path) -> None:
    files = _documented_files()
    assert set(files) == {"my_project/models.py", "my_project/definitions.py"}
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "MLEVENTS_URL": f"sqlite:///{tmp_path / 'store' / 'events.db'}",
        "MLEVENTS_ARTIFACTS": str(tmp_path / "artifacts"),
        "MLEVENTS_LANDING": str(tmp_path / "landing"),
    }
    (tmp_path / "store").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(tmp_path / "landing")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["pipelines_importable"] is False
    assert out["landing_jobs"] == ["iris_ingest_and_validate"]
    assert out["success"]
    assert {"iris/raw_data", "iris/deployed_model", "read_models",
            "iris/deployed_model_lineage"} <= set(out["materialized"])
    assert out["deployed"]
    assert out["retrain_requests"] == 0
    assert out["release_notes_requests"] == [["release_notes"]]
    assert out["release_notes_run_keys"] == out["deployed_event_ids"]
