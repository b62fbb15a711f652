"""The `mlevents` command line, run in-process through `main([...])` on both backends.

One test runs the installed console script in a subprocess to prove the entry point works.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import event_sourcing as es
from event_sourcing.catalog import TrainingProgress, default_registry
from event_sourcing.cli import COMMAND_MODULES, main, store_commands

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
    code, out, _ = run(capsys, "read", "--stream", "run-1")
    assert (code, out) == (0, "")  # $MLEVENTS_URL wins: a different, empty store
    assert other.exists()


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
