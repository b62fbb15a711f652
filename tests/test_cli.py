"""The `mlevents` command line, run in-process through `main([...])` on both backends.

One test runs the installed console script in a subprocess to prove the entry point works.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _projection_worker import RAW, SteppingClock, build_ml_history
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import ModelDeployed, TrainingProgress, default_registry
from event_sourcing.cli import COMMAND_MODULES, build_parser, main, store_commands
from event_sourcing.cli.common import artifact_store
from event_sourcing.projections import ProjectionRunner, builtin_projections
from event_sourcing.training import TrainingService

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def stepping_clock(
    start: datetime = T0, step: timedelta = timedelta(hours=1)
) -> Callable[[], datetime]:
    """A clock that returns start, start+step, start+2*step... one tick per call."""
    ticks = iter(start + i * step for i in range(1_000_000))
    return lambda: next(ticks)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def populated(make_store: Callable[..., es.EventStore]) -> es.EventStore:
    """Three training_progress events at T0, T0+1h, T0+2h: run-a gets steps 1 and 3, run-b 2."""
    store = make_store(clock=stepping_clock())
    store.append("run-a", [TrainingProgress(step=1)])
    store.append("run-b", [TrainingProgress(step=2)])
    store.append("run-a", [TrainingProgress(step=3)])
    return store


def test_command_modules_are_registered_by_name() -> None:
    assert COMMAND_MODULES[0] == "event_sourcing.cli.store_commands"
    assert callable(store_commands.register)


def test_init_creates_an_empty_store_and_is_idempotent(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        code, out, err = run(capsys, "init", store_url)
        assert (code, err) == (0, "")
        assert "event store ready" in out and "head position 0" in out
    with es.connect(store_url) as store:
        assert store.head_position() == 0


def test_append_prints_the_recorded_event_and_read_returns_it(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "append",
        store_url,
        "run-1",
        "--type",
        "training_progress",
        "--payload",
        '{"step": 7, "loss": 0.25}',
        "--metadata",
        '{"user": "ada"}',
        "--correlation-id",
        "corr-1",
        "--expected-version",
        "0",
        "--stream-type",
        "training_run",
    )
    assert (code, err) == (0, "")
    [appended] = json_lines(out)
    assert appended["stream_id"] == "run-1"
    assert appended["stream_type"] == "training_run"
    assert appended["version"] == 1
    assert appended["payload"]["step"] == 7 and appended["payload"]["loss"] == 0.25
    assert appended["metadata"]["user"] == "ada"
    assert appended["correlation_id"] == "corr-1"

    code, out, _ = run(capsys, "read", "--url", store_url)
    assert code == 0
    assert json_lines(out) == [appended]
    with es.connect(store_url) as store:
        [stored] = list(store.read_all())
        assert stored.to_dict() == appended


def test_append_with_a_stale_expected_version_fails_and_writes_nothing(
    populated: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "append",
        store_url,
        "run-a",
        "-t",
        "training_progress",
        "-p",
        '{"step": 4}',
        "--expected-version",
        "1",
    )
    assert (code, out) == (2, "")
    assert err.startswith("mlevents: error: ") and "at version 2, expected 1" in err
    assert "Traceback" not in err
    assert populated.stream_version("run-a") == 2


def test_append_retry_with_the_same_event_id_writes_once(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    event_id = "5b0a3f3e-3c1d-4a52-9a0e-5d3f0c4b8a11"
    argv = ["append", store_url, "run-1", "-t", "training_progress", "-p", '{"step": 1}']
    outputs = [run(capsys, *argv, "--id", event_id) for _ in range(2)]
    assert [code for code, _, _ in outputs] == [0, 0]
    assert json_lines(outputs[0][1]) == json_lines(outputs[1][1])
    with es.connect(store_url) as store:
        assert store.head_position() == 1


def test_read_filters_by_type_after_until_stream_and_limit(
    populated: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fourth event, of another type, at T0+3h.
    populated.append("run-c", [es.NewEvent("training_failed", {"error": "OOM"})])

    def steps(*args: str) -> list[Any]:
        code, out, err = run(capsys, "read", store_url, *args)
        assert code == 0
        assert (err == "") == (out != "")  # an empty result says why, on stderr
        return [
            event["payload"]["step"] if event["event_type"] == "training_progress" else "failed"
            for event in json_lines(out)
        ]

    assert steps() == [1, 2, 3, "failed"]
    assert steps("--type", "training_failed") == ["failed"]
    assert steps("--type", "training_failed", "--type", "training_progress") == [
        1,
        2,
        3,
        "failed",
    ]
    assert steps("--after", "2") == [3, "failed"]
    assert steps("--until", "2024-05-01T13:00:00+00:00") == [1, 2]
    assert steps("--until", "2024-05-01T13:00:00Z") == [1, 2]
    assert steps("--until", "2024-05-01T15:00:00+02:00") == [1, 2]  # 13:00 UTC
    assert steps("--until", "2024-05-01T12:30:00Z") == [1]
    assert steps("--limit", "2") == [1, 2]
    assert steps("--stream", "run-a") == [1, 3]
    assert steps("--stream", "run-a", "--after", "1") == [3]
    assert steps("--stream", "run-a", "--until", "2024-05-01T13:00:00Z") == [1]
    assert steps("--stream", "run-a", "--limit", "1") == [1]
    assert steps("--stream", "run-a", "--type", "training_failed") == []
    assert steps("--stream", "no-such-stream") == []
    _, _, err = run(capsys, "read", store_url, "--stream", "no-such-stream")
    assert err == "mlevents: no stream 'no-such-stream' in the store (head position 4)\n"
    _, _, err = run(capsys, "read", store_url, "--after", "4", "--type", "training_failed")
    assert err == (
        "mlevents: no events match with --type training_failed --after 4 (head position 4)\n"
    )


def test_status_shows_head_counts_and_streams(
    populated: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    populated.append("run-c", [es.NewEvent("training_failed", {"error": "OOM"})])

    code, out, err = run(capsys, "status", store_url, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["backend"] == populated.dialect
    assert report["head_position"] == 4
    assert report["events"] == 4
    assert report["streams"] == 3
    assert report["counts_by_type"] == {"training_failed": 1, "training_progress": 3}

    code, out, _ = run(capsys, "status", store_url)
    assert code == 0
    lines = out.splitlines()
    assert "head position: 4" in lines
    assert "streams:       3" in lines
    assert any(line.split() == ["training_progress", "3"] for line in lines)
    assert any(line.split() == ["training_failed", "1"] for line in lines)


def test_status_of_an_empty_store_says_so(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "init", store_url)[0] == 0
    code, out, _ = run(capsys, "status", store_url)
    assert code == 0
    assert "head position: 0" in out and "no events yet" in out


def test_url_defaults_to_mlevents_url_then_a_local_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLEVENTS_URL", raising=False)
    code, _, _ = run(capsys, "append", "run-1", "-t", "training_progress", "-p", '{"step": 1}')
    assert code == 0
    assert (tmp_path / ".mlevents" / "events.db").exists()

    other = tmp_path / "other.db"
    monkeypatch.setenv("MLEVENTS_URL", f"sqlite:///{other}")
    code, out, err = run(capsys, "read", "--stream", "run-1")
    assert (code, out) == (2, "")  # $MLEVENTS_URL wins: a different store, which is missing
    assert f"no event store at sqlite:///{other}" in err
    assert not other.exists()


def test_schema_without_options_prints_every_registered_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schemas = json.loads(out)
    assert sorted(schemas) == default_registry.types()
    assert schemas["training_started"]["x-schema-version"] == 1
    assert "dataset_version" in schemas["training_started"]["required"]


def test_schema_writes_one_file_per_type_and_a_markdown_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_dir, markdown = tmp_path / "schemas", tmp_path / "docs" / "catalog.md"
    code, out, _ = run(capsys, "schema", "--json-dir", str(json_dir), "--markdown", str(markdown))
    assert code == 0
    types = default_registry.types()
    written = sorted(path.name for path in json_dir.iterdir())
    assert written == sorted(
        f"{name}.v{default_registry.current_version(name)}.json" for name in types
    )
    for name in types:
        schema = json.loads((json_dir / f"{name}.v1.json").read_text())
        assert schema["x-event-type"] == name
    catalog = markdown.read_text()
    assert all(f"## {name}\n" in catalog for name in types)
    assert f"wrote {len(types)} JSON Schema files" in out


def test_committed_docs_match_the_registry() -> None:
    """docs/ is generated by `make schema`; a new or changed event type must regenerate it."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    from event_sourcing.catalog import render_markdown_catalog

    assert (docs / "event-catalog.md").read_text() == render_markdown_catalog(default_registry)
    for name, schema in default_registry.json_schemas().items():
        committed = json.loads(
            (docs / "schemas" / f"{name}.v{schema['x-schema-version']}.json").read_text()
        )
        assert committed == schema, f"docs/schemas is stale for {name}: run `make schema`"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "nope://somewhere"], "unknown store URL scheme 'nope'"),
        (["status", "events.db"], "is not a URL"),
        (["status", "sqlite:///a.db", "--url", "sqlite:///b.db"], "two store URLs given"),
        (
            ["status", "postgresql://postgres:s3cret@127.0.0.1:1/test"],
            "postgresql://postgres:***@127.0.0.1:1/test",
        ),
    ],
)
def test_bad_urls_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("mlevents: error: ") and message in err
    assert "s3cret" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "training_progress", "-p", "{step: 1}"], "--payload is not valid JSON"),
        (["-t", "training_progress", "-p", "[1, 2]"], "--payload must be a JSON object"),
        (["-t", "training_progress", "-p", '{"step": 1}', "--metadata", "7"], "--metadata"),
        (["-t", "training_progress", "-p", '{"loss": 0.1}'], "step"),
        (["-t", "training_progress", "-p", '{"step": -1}'], "step"),
        (["-t", "no_such_type", "-p", "{}"], "--no-validate"),
    ],
)
def test_invalid_appends_exit_2_and_write_nothing(
    args: list[str], message: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "append", store_url, "run-1", *args)
    assert (code, out) == (2, "")
    assert err.startswith("mlevents: error: ") and message in err
    with es.connect(store_url) as store:
        assert store.head_position() == 0


def test_no_validate_accepts_an_unknown_type(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "append",
        store_url,
        "run-1",
        "-t",
        "my_team_event",
        "-p",
        '{"x": 1}',
        "--no-validate",
    )
    assert (code, err) == (0, "")
    assert json_lines(out)[0]["event_type"] == "my_team_event"


@pytest.mark.parametrize(
    ("until", "message"),
    [
        ("2024-05-01T13:00:00", "add +00:00 or Z"),
        ("yesterday", "not an ISO 8601 time"),
    ],
)
def test_read_rejects_an_until_without_timezone_or_not_iso(
    until: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "read", f"sqlite:///{tmp_path / 'e.db'}", "--until", until)
    assert (code, out) == (2, "")
    assert message in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["read", "--after", "-1"]) == 2
    assert main(["append", "run-1"]) == 2  # --type is required
    _, err = capsys.readouterr()
    assert "--after" in err and "--type" in err


def test_tail_prints_events_from_before_it_started_then_exits_at_max_events(
    populated: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "tail", store_url, "--after", "0", "--max-events", "2", "--interval", "0.01"
    )
    assert (code, err) == (0, "")
    assert [event["position"] for event in json_lines(out)] == [1, 2]

    code, out, _ = run(
        capsys,
        "tail",
        store_url,
        "--after",
        "1",
        "--type",
        "training_progress",
        "--max-events",
        "1",
    )
    assert [event["payload"]["step"] for event in json_lines(out)] == [2]


def test_tail_starts_at_the_head_by_default(
    populated: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "tail", store_url, "--timeout", "0.05", "--interval", "0.01")
    assert (code, out, err) == (0, "", "")


def test_tail_exits_cleanly_on_ctrl_c(
    populated: es.EventStore,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_commands, "_idle_sleep", interrupted)
    code, out, err = run(capsys, "tail", store_url, "--after", "0")
    assert (code, err) == (0, "")
    assert len(json_lines(out)) == 3  # printed what there was, then stopped at the first wait


def test_follow_yields_events_appended_while_it_waits(populated: es.EventStore) -> None:
    waits: list[float] = []
    followed: Iterator[es.RecordedEvent] = store_commands.follow(
        populated, 1, interval=0.5, sleep=waits.append
    )
    assert [next(followed).position, next(followed).position] == [2, 3]
    populated.append("run-b", [TrainingProgress(step=4)])
    populated.append("run-a", [TrainingProgress(step=5)])
    assert [next(followed).payload["step"], next(followed).payload["step"]] == [4, 5]
    assert waits == [0.5]  # one idle poll between the two batches


def test_follow_stops_at_its_timeout(populated: es.EventStore) -> None:
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    followed = store_commands.follow(
        populated, 3, interval=1.0, timeout=2.5, sleep=sleep, monotonic=lambda: now[0]
    )
    assert list(followed) == []
    assert now[0] == 102.5


def test_python_dash_m_runs_the_same_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["mlevents", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("event_sourcing.cli", run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlevents {es.__version__}"


def test_console_script_entry_point(tmp_path: Path) -> None:
    script = shutil.which("mlevents", path=str(Path(sys.executable).parent))
    assert script is not None, "the mlevents console script is not installed: pip install -e ."
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with es.connect(url) as store:
        store.append("run-1", [TrainingProgress(step=1)])
    result = subprocess.run(
        [script, "status", url, "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout)["counts_by_type"] == {"training_progress": 1}


READ_ONLY_COMMANDS = [
    ["status"],
    ["read"],
    ["read", "--stream", "run-1"],
    ["tail", "--timeout", "0.01"],
    ["project"],
    ["models"],
    ["trainings"],
    ["deployments"],
    ["models", "--as-of", "1"],
    ["lineage", "some-model"],
    ["impact", "some-dataset"],
    ["explain", "some-inference"],
    ["grant", "someone", "--reader"],
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_read_only_commands_on_a_missing_store_fail_and_create_nothing(
    command: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'nonexistent' / 'dir' / 'e.db'}"
    pg_url = str(request.getfixturevalue("pg_schema_url"))  # its schema does not exist yet
    for url in (sqlite_url, pg_url):
        argv = [*command[:2], url, *command[2:]] if command[0] in {
            "lineage", "impact", "explain", "grant"} else [command[0], url, *command[1:]]
        code, out, err = run(capsys, *argv)
        assert code == 2, (url, out, err)
        assert f"no event store at {url} (create it with `mlevents init {url}`)" in err
    assert not (tmp_path / "nonexistent").exists()
    schema = pg_url.partition("?schema=")[2]
    with psycopg.connect(pg_url.partition("?")[0]) as connection:
        found = connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_predict_on_a_missing_store_fails_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "batch.csv"
    batch.write_text("a,b\n1,2\n")
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    code, _, err = run(capsys, "predict", "--csv", str(batch), "--url", url)
    assert code == 2 and "no event store at" in err
    assert not (tmp_path / "missing.db").exists()


def test_init_and_append_create_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'e.db'}"
    assert run(capsys, "append", url, "run-1", "-t", "training_progress", "-p",
               '{"step": 1}')[0] == 0
    assert run(capsys, "status", url)[0] == 0
    other = f"sqlite:///{tmp_path / 'b' / 'e.db'}"
    assert run(capsys, "init", other)[0] == 0
    assert run(capsys, "read", other)[0:2] == (0, "")


def test_init_output_hides_every_credential(
    pg_schema_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host = pg_schema_url.removeprefix("postgresql://").partition("@")[2]
    user = pg_schema_url.removeprefix("postgresql://").partition("@")[0]
    url = f"postgresql://{user}:hunter2@{host}&password=s3cret&sslpassword=k3y"
    code, out, err = run(capsys, "init", url)
    assert code == 0 and "event store ready" in out
    for secret in ("hunter2", "s3cret", "k3y"):
        assert secret not in out + err


# -- one URL convention -----------------------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every command, a group's (`mlevents artifacts gc`) by its full name."""

    def commands(parser: argparse.ArgumentParser, prefix: str) -> dict[str, Any]:
        found: dict[str, argparse.ArgumentParser] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = commands(sub, f"{prefix}{name} ")
                    found.update(nested or {f"{prefix}{name}": sub})
        return found

    return commands(build_parser(), "")


def test_every_command_that_opens_a_store_takes_url() -> None:
    for name, sub in _subcommands().items():
        if name == "schema":  # the only command that needs no store
            continue
        options = {option for action in sub._actions for option in action.option_strings}
        assert "--url" in options, f"`mlevents {name}` has no --url"


def test_make_run_and_the_cli_default_to_the_same_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import demo

    for name in ("MLEVENTS_URL", "MLEVENTS_ARTIFACTS"):
        monkeypatch.setenv(name, "")  # so that monkeypatch puts back what was there before
        monkeypatch.delenv(name)
    demo.use_project_store()  # what `make run` does before starting Dagster
    served = os.environ.pop("MLEVENTS_URL")
    served_artifacts = os.environ.pop("MLEVENTS_ARTIFACTS")
    monkeypatch.chdir(demo.PROJECT_ROOT)  # the README runs `mlevents` in the repository
    cli_path = Path(es.default_url().removeprefix("sqlite:///")).absolute()
    assert Path(served.removeprefix("sqlite:///")) == cli_path
    defaults = argparse.Namespace(url=None, artifacts=None)  # a command given neither
    assert artifact_store(defaults).root == Path(served_artifacts)


def test_the_command_line_starts_without_pandas_numpy_or_pyarrow(tmp_path: Path) -> None:
    # (in a process of its own: this one has them) Only `predict`, `artifacts` and a store
    # with an archive load them, when they run.
    script = f"""
import sys
from event_sourcing.cli import main
assert main(["status", "--url", "sqlite:///{tmp_path / 'events.db'}"]) == 2  # (no store)
main(["--version"])
"""
    shown = subprocess.run(
        [sys.executable, "-c", script + "print(sorted(set(sys.modules) & "
         "{'pandas', 'numpy', 'pyarrow', 'sklearn'}))"],
        capture_output=True, text=True, timeout=120,
    )
    assert shown.stdout.splitlines()[-1] == "[]", shown.stdout + shown.stderr


def test_an_empty_store_names_itself(
    store: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "models", "--url", store_url)
    assert (code, out) == (0, "")
    assert "has no events yet; is it the one you meant?" in err and "--url" in err


# -- did-you-mean and empty-result hints ------------------------------------------------------


@pytest.fixture
def ml_history(make_store: Callable[..., es.EventStore]) -> dict[str, es.RecordedEvent]:
    """Two wine-clf models, three runs (one failed), deployments and two predictions."""
    return build_ml_history(make_store(clock=SteppingClock()))


def test_read_and_tail_refuse_an_unknown_type_with_a_did_you_mean(
    populated: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("read", "tail"):
        code, out, err = run(capsys, command, "--url", store_url, "--type", "model_deployd")
        assert (code, out) == (2, "")
        assert "unknown event type 'model_deployd'; did you mean 'model_deployed'?" in err
    # A type the registry does not know but the log holds (appended with --no-validate) is fine.
    code, _, _ = run(capsys, "append", "--url", store_url, "s", "-t", "custom_thing",
                     "--no-validate")
    assert code == 0
    code, out, _ = run(capsys, "read", "--url", store_url, "--type", "custom_thing")
    assert code == 0 and [e["event_type"] for e in json_lines(out)] == ["custom_thing"]


def test_models_and_deployments_hint_at_known_names(
    ml_history: dict[str, es.RecordedEvent], store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "models", "--url", store_url, "--name", "nope")
    assert (code, out) == (2, "")
    assert "no model named 'nope' (known: wine-clf)" in err
    code, _, err = run(capsys, "models", "--url", store_url, "--name", "wine-clff")
    assert code == 2 and "no model named 'wine-clff'; did you mean 'wine-clf'?" in err
    code, _, err = run(capsys, "deployments", "--url", store_url, "--environment", "prod")
    assert code == 2
    assert "no environment 'prod'; did you mean 'production'? (known: production, staging)" in err
    code, _, err = run(capsys, "deployments", "--url", store_url, "--name", "wine")
    assert code == 2 and "no deployed model named 'wine'; did you mean 'wine-clf'?" in err
    # A known name that matches nothing at an earlier position says so, naming the moment.
    first = ml_history["m2_deployed"].position - 1
    code, _, err = run(capsys, "models", "--url", store_url, "--as-of", "1", "--name", "x")
    assert code == 2 and "no model named 'x' as of position 1 (there are none yet)" in err
    # A valid filter that matches nothing is not an error, but says why the output is empty.
    code, out, err = run(capsys, "models", "--url", store_url, "--status", "ready")
    assert (code, out) == (0, "")
    assert err == "mlevents: no models match these filters (2 without them)\n"
    code, out, err = run(capsys, "deployments", "--url", store_url, "--as-of", str(first),
                         "--environment", "staging", "--active")
    assert code == 0 and [row["model_id"] for row in json_lines(out)] == ["m1"] and err == ""


def test_as_of_names_both_accepted_forms(
    ml_history: dict[str, es.RecordedEvent], store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "trainings", "--url", store_url, "--as-of", "-5")
    assert (code, out) == (2, "")
    assert "--as-of '-5' is neither a global position (an integer >= 0, e.g. 120) nor an " \
        "ISO 8601 time with a timezone (e.g. 2026-11-24T14:02:00Z)" in err
    code, _, err = run(capsys, "trainings", "--url", store_url, "--as-of", "2025-01-01T00:00")
    assert code == 2 and "has no timezone" in err
    code, out, _ = run(capsys, "trainings", "--url", store_url, "--as-of", "2099-01-01T00:00Z")
    assert code == 0 and len(json_lines(out)) == 3


def test_lineage_of_an_unknown_model_names_the_known_ones(
    ml_history: dict[str, es.RecordedEvent], store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "lineage", "wine-clg", "--url", store_url)
    assert (code, out) == (2, "")
    assert "no model 'wine-clg' in the log" in err
    assert "did you mean 'wine-clf'? (model names: wine-clf)" in err


# -- humane output on a terminal, JSON otherwise ----------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make (captured) stdout look like a 160-column terminal, as in a shell."""

    def pretend() -> None:
        monkeypatch.setenv("COLUMNS", "160")
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    return pretend


def test_models_trainings_deployments_are_tables_on_a_terminal(
    ml_history: dict[str, es.RecordedEvent], store_url: str,
    capsys: pytest.CaptureFixture[str], terminal: Callable[[], None],
) -> None:
    terminal()
    code, out, _ = run(capsys, "models", "--url", store_url)
    text = ANSI.sub("", out)
    assert code == 0 and "┃ name" in text and "model id" in text
    rows = [line for line in text.splitlines() if "wine-clf" in line]
    assert len(rows) == 2 and "deployed" in rows[1] and "production" in rows[1]
    code, out, _ = run(capsys, "trainings", "--url", store_url)
    assert code == 0 and "training id" in out and "failed" in out and "run-2" in out
    code, out, _ = run(capsys, "deployments", "--url", store_url)
    assert code == 0 and "environment" in out and "serving" in out
    code, out, _ = run(capsys, "status", "--url", store_url)
    text = ANSI.sub("", out)
    assert code == 0 and "┃ event type" in text and "│ training_progress   │    15 │" in text
    # --json is the machine format on a terminal too.
    code, out, _ = run(capsys, "models", "--url", store_url, "--json")
    assert [row["model_id"] for row in json_lines(out)] == ["m1", "m2"]


def test_explain_is_a_short_tree_on_a_terminal(
    ml_history: dict[str, es.RecordedEvent], store_url: str,
    capsys: pytest.CaptureFixture[str], terminal: Callable[[], None],
) -> None:
    terminal()
    code, tree, _ = run(capsys, "explain", "inf-2", "--url", store_url)
    assert code == 0
    tree = ANSI.sub("", tree)
    lines = tree.splitlines()
    assert lines[0].startswith("inference prediction inf-2 · = b · feedback: a (wrong)")
    assert any("deployment" in line and "(served)" in line for line in lines)
    assert any("model wine-clf v2 · m2 (deployed)" in line for line in lines)
    assert any("training run-3 · completed (produced)" in line for line in lines)
    assert any("ingest b1 · s3://lake/b1.csv (ingested)" in line for line in lines)
    code, document, _ = run(capsys, "explain", "inf-2", "--url", store_url, "--json")
    assert json.loads(document)["root"] == "inference:inf-2"
    assert len(lines) * 5 < len(document.splitlines())


def test_lineage_and_impact_trees_and_the_machine_formats_when_piped(
    ml_history: dict[str, es.RecordedEvent], store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "lineage", "wine-clf", "--url", store_url, "--format", "tree")
    assert code == 0 and out.startswith("model wine-clf v2 · m2\n")
    assert "└── training run-3 · completed (produced)\n" in out
    code, out, _ = run(capsys, "impact", RAW[:8], "--url", store_url, "--format", "tree")
    assert code == 0 and out.startswith(f"dataset wine · {RAW[:12]}\n")
    assert out.count("model wine-clf v2") == 1 and "(shown above)" in out
    # Piped (not a terminal): the JSON document, as before.
    code, out, _ = run(capsys, "lineage", "wine-clf", "--url", store_url)
    assert code == 0 and json.loads(out)["root"] == "model:m2"
    code, _, err = run(capsys, "lineage", "wine-clf", "--url", store_url, "--json",
                       "--format", "mermaid")
    assert code == 2 and "--json and --format mermaid disagree" in err


def in_terminal(*args: str) -> str:
    """Run the installed `mlevents ARGS` with stdout and stderr on a pseudo-terminal; return
    what the terminal received, without ANSI codes."""
    script = shutil.which("mlevents", path=str(Path(sys.executable).parent))
    assert script is not None
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen(
        [script, *args], stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert process.wait(timeout=60) == 0
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode())


def test_a_real_terminal_gets_a_table_and_a_pipe_json(
    ml_history: dict[str, es.RecordedEvent], store_url: str
) -> None:
    screen = in_terminal("models", "--url", store_url)
    assert "┃ name" in screen and screen.count("wine-clf") == 2
    script = shutil.which("mlevents", path=str(Path(sys.executable).parent))
    assert script is not None
    piped = subprocess.run([script, "models", "--url", store_url], capture_output=True,
                           text=True, timeout=60, check=True)
    assert [row["name"] for row in json_lines(piped.stdout)] == ["wine-clf", "wine-clf"]


def test_rebuild_shows_a_progress_bar_on_a_terminal(
    ml_history: dict[str, es.RecordedEvent], store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with es.connect(store_url) as store:
        head = store.head_position()
    screen = in_terminal("project", "--url", store_url, "--rebuild", "training_summaries")
    assert "rebuilding training_summaries" in screen and f"/{head} positions" in screen
    # Not on a terminal: no bar, nothing but the JSON lines.
    code, out, err = run(capsys, "project", "--url", store_url, "--rebuild", "deployments")
    assert (code, err) == (0, "") and len(json_lines(out)) == 5


# -- dead letters -----------------------------------------------------------------------------


def test_dead_letters_are_listed_and_retried(
    store: es.EventStore, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "dead-letters", "--url", store_url)
    assert (code, out) == (0, "") and "no dead letters: every event was applied" in err
    # Progress for runs nobody started: training_summaries parks them.
    [early] = store.append("run-x", [TrainingProgress(step=1)])
    [other] = store.append("run-y", [TrainingProgress(step=1)])
    code, _, err = run(capsys, "project", "--url", store_url)
    assert code == 0 and "2 event(s) are parked" in err and "mlevents dead-letters" in err
    code, out, _ = run(capsys, "dead-letters", "--url", store_url)
    letters = json_lines(out)
    assert code == 0 and [x["event_id"] for x in letters] == [early.id, other.id]
    assert letters[0]["projection"] == "training_summaries" and letters[0]["traceback"]

    code, _, err = run(capsys, "dead-letters", "--url", store_url, "--projection", "deployment")
    assert code == 2 and "no projection named 'deployment'; did you mean 'deployments'?" in err
    code, _, err = run(capsys, "project", "--url", store_url, "--rebuild", "model_catlog")
    assert code == 2 and "--rebuild: no projection named 'model_catlog'; did you mean " \
        "'model_catalog'? (known: deployments, inference_quality, model_catalog" in err
    code, _, err = run(capsys, "dead-letters", "--url", store_url, "--retry", "nope")
    assert code == 2 and f"no dead letter for event 'nope'; parked event ids: {early.id}" in err
    # The cause fixed (run-x now has a start), retry one by a prefix of its id.
    store.append("run-x", [es.NewEvent("training_started", {
        "config": {}, "dataset_id": "d", "dataset_version": "a" * 64})])
    code, _, err = run(capsys, "dead-letters", "--url", store_url, "--retry", early.id[:8])
    assert code == 2 and f"event id prefix {early.id[:8]!r} is ambiguous" in err  # UUIDv7s
    code, out, err = run(capsys, "dead-letters", "--url", store_url, "--retry", early.id[:-4])
    assert (code, err) == (0, "")
    [stats] = json_lines(out)
    assert (stats["projection"], stats["retried"], stats["applied"], stats["failed"]) == (
        "training_summaries", 1, 1, 0)
    code, out, _ = run(capsys, "dead-letters", "--url", store_url)
    assert [x["event_id"] for x in json_lines(out)] == [other.id]
    # run-y still has no start: retrying everything leaves it parked and exits 1.
    code, out, _ = run(capsys, "dead-letters", "--url", store_url, "--all")
    assert code == 1 and json_lines(out)[0]["failed"] == 1


def test_rebuild_reports_progress_batch_by_batch(store: es.EventStore) -> None:
    for step in range(5):
        store.append("run-a", [TrainingProgress(step=step)])
    runner = ProjectionRunner(store, builtin_projections())
    seen: list[int] = []
    runner.rebuild("training_summaries", batch_size=2, progress=lambda s: seen.append(s.checkpoint))
    assert seen == [2, 4, 5]


# -- predict ----------------------------------------------------------------------------------


def test_predict_finds_the_artifacts_beside_the_store_and_prints_inference_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLEVENTS_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)  # not beside the store: the default ./.mlevents would be wrong
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'events.db'}"
    iris = load_iris(as_frame=True).frame

    def fit(dataset: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
        return DecisionTreeClassifier(random_state=seed, **hyperparameters).fit(
            dataset.drop(columns="target"), dataset["target"]
        )

    with es.connect(url) as store:
        outcome = TrainingService(store, ArtifactStore(home / "artifacts")).train(
            fit, iris, hyperparameters={"max_depth": 2}, seed=1, model_name="iris-tree"
        )
        store.append("deployments:iris-tree", [ModelDeployed(
            model_id=outcome.model_id, model_name="iris-tree", version=1)])
    iris.head(3).to_csv(tmp_path / "batch.csv", index=False)
    batch = str(tmp_path / "batch.csv")
    code, _, err = run(capsys, "predict", "--url", url, "--csv", batch, "--environment", "prod")
    assert code == 2 and "no model is deployed in 'prod'; did you mean 'production'? " \
        "(serving now: iris-tree v1 in production)" in err
    code, _, err = run(capsys, "predict", "--url", url, "--csv", batch, "--model-name", "iris")
    assert code == 2 and "model 'iris' is not deployed in 'production'; did you mean " \
        "'iris-tree'?" in err

    code, out, err = run(capsys, "predict", "--url", url, "--csv", str(tmp_path / "batch.csv"))
    assert (code, err) == (0, "")
    assert "model iris-tree v1" in out and "accuracy on labelled rows: 1.0000" in out
    ids = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert len(ids) == 3
    code, out, _ = run(capsys, "explain", ids[0], "--url", url)
    assert code == 0 and json.loads(out)["root"] == f"inference:{ids[0]}"
    assert not (tmp_path / ".mlevents").exists()
