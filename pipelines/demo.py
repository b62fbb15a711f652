"""`make run` and `make demo`: the real `dagster dev` (webserver + daemon), started and driven.

`DagsterDev` runs it in a process group of its own and talks GraphQL (end-to-end tests use it).
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from event_sourcing.errors import EventStoreError

__all__ = [
    "LOCATION",
    "PROJECT_ROOT",
    "DagsterDev",
    "DagsterDevError",
    "asset_graph_path",
    "check_port_free",
    "free_port",
    "main",
    "prepare_home",
    "process_group_alive",
    "run_demo",
    "serve",
    "wait_until",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "mlevents"
"""The code location name in workspace.yaml."""
REPOSITORY = "__repository__"
"""The repository name Dagster gives a `Definitions` object."""
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
T = TypeVar("T")


class DagsterDevError(EventStoreError):
    """`dagster dev` did not start, a GraphQL call failed, or a run did not succeed in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0
) -> T:
    """Call `check` until it returns something other than None; raise after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise DagsterDevError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def prepare_home(home: Path, instance_yaml: Path = PROJECT_ROOT / "dagster.sqlite.yaml") -> Path:
    """Create DAGSTER_HOME (absolute) with `instance_yaml` copied in as its dagster.yaml."""
    home = home.expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    if not instance_yaml.is_file():
        raise DagsterDevError(
            f"no Dagster instance config at {instance_yaml}; give the path of one (the "
            "repository ships dagster.sqlite.yaml and dagster.postgres.yaml)"
        )
    shutil.copyfile(instance_yaml, home / "dagster.yaml")
    return home


def _dagster_command() -> list[str]:
    script = Path(sys.executable).with_name("dagster")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dagster"]


def _default_signals() -> None:
    # A shell that starts a job in the background makes it ignore SIGINT, and `dagster dev`
    # copies that ignored handler onto SIGTERM: it would then die only to SIGKILL and leave
    # its webserver and daemon behind. Restore the defaults before exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class DagsterDev:
    """`dagster dev -w workspace.yaml` on 127.0.0.1:`port`, with its own DAGSTER_HOME.

    Use as a context manager: it starts on enter, waits for the code location to load, and on
    exit sends SIGTERM to the whole process group (webserver, daemon, code servers, runs),
    then SIGKILL to whatever is left. Output goes to `home/dagster-dev.log`.
    """

    def __init__(
        self,
        home: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        workspace: Path = PROJECT_ROOT / "workspace.yaml",
        load_timeout: float = 120.0,
    ) -> None:
        self.home = home.expanduser().absolute()
        self.env = dict(env or {})
        self.port = port or free_port()
        self.workspace = workspace
        self.load_timeout = load_timeout
        self.log_path = self.home / "dagster-dev.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        """Process group of the last start (the leader's pid): check it is gone after stop."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> "DagsterDev":
        """Start `dagster dev` and wait until the code location has loaded."""
        if not (self.home / "dagster.yaml").is_file():
            raise DagsterDevError(f"{self.home} has no dagster.yaml; call prepare_home first")
        env = {**os.environ, **self.env, "DAGSTER_HOME": str(self.home)}
        command = [
            *_dagster_command(),
            "dev",
            "-w",
            str(self.workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workspace.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_default_signals,
            )
        self.pgid = self.process.pid  # start_new_session: the leader's pid is the group id
        try:
            self.wait_loaded(self.load_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, wait up to `grace` s, then SIGKILL what is left."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        # Children (code servers, run workers) may outlive the leader: the group goes too.
        deadline = time.monotonic() + grace
        while process_group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(timeout=10)
        # SIGKILL is delivered asynchronously: give the kernel a bounded moment to finish.
        deadline = time.monotonic() + 10
        while process_group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> "DagsterDev":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The end of `dagster dev`'s output (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- GraphQL --------------------------------------------------------------------------

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST a query to /graphql; its `data`, or DagsterDevError with the server's errors."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise DagsterDevError(f"GraphQL request to {self.url} failed: {exc}") from exc
        if answer.get("errors"):
            raise DagsterDevError(f"GraphQL errors: {json.dumps(answer['errors'])[:2000]}")
        return dict(answer["data"])

    def wait_loaded(self, timeout: float) -> None:
        """Wait until the webserver answers and the code location is LOADED."""

        def loaded() -> bool | None:
            if self.process is not None and self.process.poll() is not None:
                raise DagsterDevError(
                    f"dagster dev exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                data = self.graphql(_WORKSPACE_QUERY)
            except DagsterDevError:
                return None  # not listening yet
            for entry in data["workspaceOrError"].get("locationEntries", []):
                if entry["name"] != LOCATION or entry["loadStatus"] != "LOADED":
                    continue
                location = entry["locationOrLoadError"] or {}
                if location.get("__typename") == "PythonError":
                    raise DagsterDevError(
                        f"code location {LOCATION} failed to load: {location.get('message')}"
                    )
                return True
            return None

        try:
            wait_until(loaded, timeout, f"code location {LOCATION!r} at {self.url}", 0.5)
        except DagsterDevError as exc:
            raise DagsterDevError(f"{exc}\n--- dagster dev output ---\n{self.log_tail()}") from exc

    def launch(
        self,
        job_name: str,
        run_config: Mapping[str, Any] | None = None,
        asset_keys: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch a run of a job (or of `__ASSET_JOB` with `asset_keys`); return its run id."""
        selector: dict[str, Any] = {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": job_name,
        }
        if asset_keys is not None:
            selector["assetSelection"] = [{"path": key.split("/")} for key in asset_keys]
        params = {
            "selector": selector,
            "runConfigData": dict(run_config or {}),
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
            },
        }
        result = self.graphql(_LAUNCH_MUTATION, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            detail = result.get("message") or json.dumps(result)
            raise DagsterDevError(f"launching {job_name} failed ({result['__typename']}): {detail}")
        return str(result["run"]["runId"])

    def runs(
        self, job_name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Runs (newest first) as dicts: runId, jobName, status, tags (a dict), times."""
        run_filter: dict[str, Any] = {}
        if job_name:
            run_filter["pipelineName"] = job_name
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        data = self.graphql(_RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        if "results" not in data:
            raise DagsterDevError(f"listing runs failed: {data.get('message')}")
        return [_flatten(run) for run in data["results"]]

    def run(self, run_id: str) -> dict[str, Any]:
        found = self.runs_by_id([run_id])
        if not found:
            raise DagsterDevError(f"no run {run_id} in this Dagster instance")
        return found[0]

    def runs_by_id(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        data = self.graphql(_RUNS_QUERY, {"filter": {"runIds": list(run_ids)}})["runsOrError"]
        return [_flatten(run) for run in data["results"]]

    def wait_for_run(self, run_id: str, timeout: float) -> dict[str, Any]:
        """Wait for a run to finish; return it, or DagsterDevError if it did not succeed."""

        def finished() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in FINISHED else None

        run = wait_until(finished, timeout, f"run {run_id} to finish")
        if run["status"] != "SUCCESS":
            raise DagsterDevError(
                f"run {run_id} ({run['jobName']}) ended {run['status']}; see "
                f"{self.url}/runs/{run_id}\n{self.run_errors(run_id)}"
            )
        return run

    def wait_for_sensor_run(
        self,
        sensor: str,
        timeout: float,
        created_after: float = 0.0,
        where: Callable[[dict[str, Any]], bool] = lambda run: True,
    ) -> dict[str, Any]:
        """Wait for a run that `sensor` requested (after `created_after`, matching `where`)
        to succeed; return it."""

        def found() -> dict[str, Any] | None:
            for run in reversed(self.runs(tags={"dagster/sensor_name": sensor})):
                if run["creationTime"] >= created_after and where(run):
                    return run
            return None

        run = wait_until(found, timeout, f"sensor {sensor} to request a run", 1.0)
        return self.wait_for_run(run["runId"], timeout)

    def run_errors(self, run_id: str) -> str:
        """The error messages of a run's failed steps (for error reports)."""
        try:
            data = self.graphql(_RUN_ERRORS_QUERY, {"runId": run_id})
        except DagsterDevError as exc:
            return str(exc)
        events = data["logsForRun"].get("events", [])
        errors = [e["error"]["message"] for e in events if (e.get("error") or {}).get("message")]
        return "\n".join(errors[:5])

    # -- sensors --------------------------------------------------------------------------

    def _sensor(self, name: str) -> dict[str, Any]:
        sensor = self.graphql(_SENSOR_QUERY, {"selector": _sensor_selector(name)})["sensorOrError"]
        if sensor["__typename"] != "Sensor":
            raise DagsterDevError(f"no sensor {name!r} in {LOCATION}: {sensor.get('message')}")
        return dict(sensor)

    def sensor_status(self, name: str) -> str:
        return str(self._sensor(name)["sensorState"]["status"])

    def stop_sensor(self, name: str, timeout: float = 60.0) -> None:
        """Stop a sensor and wait until no tick of it is still being evaluated."""
        sensor = self._sensor(name)
        result = self.graphql(_STOP_SENSOR, {"id": sensor["id"]})["stopSensor"]
        if result["__typename"] != "StopSensorMutationResult":
            raise DagsterDevError(f"stopping sensor {name} failed: {result.get('message')}")

        def idle() -> bool | None:
            state = self._sensor(name)["sensorState"]
            busy = any(tick["status"] == "STARTED" for tick in state["ticks"])
            return True if state["status"] == "STOPPED" and not busy else None

        wait_until(idle, timeout, f"sensor {name} to stop", 0.5)

    def start_sensor(self, name: str) -> None:
        result = self.graphql(_START_SENSOR, {"selector": _sensor_selector(name)})["startSensor"]
        if result["__typename"] != "Sensor":
            raise DagsterDevError(f"starting sensor {name} failed: {result.get('message')}")

    def latest_metadata(self, asset_key: str) -> dict[str, Any]:
        """Label -> value of the text/markdown/int/float metadata of an asset's latest
        materialization (empty if it has none)."""
        data = self.graphql(_ASSET_QUERY, {"key": {"path": asset_key.split("/")}})["assetOrError"]
        materializations = data.get("assetMaterializations") or []
        if not materializations:
            return {}
        values: dict[str, Any] = {}
        for entry in materializations[0]["metadataEntries"]:
            for field in ("text", "mdStr", "intValue", "floatValue", "boolValue"):
                if field in entry:
                    values[entry["label"]] = entry[field]
        return values


def _flatten(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}}


def _sensor_selector(name: str) -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}


def process_group_alive(pgid: int) -> bool:
    """True while any live process of the group `pgid` exists.

    Zombies do not count: a killed child whose parent died too is reparented to PID 1,
    which in a container may never reap it, and `killpg(pgid, 0)` would still succeed.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: fall back to killpg, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


_WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""
_LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
} }
"""
_RUNS_QUERY = """
query Runs($filter: RunsFilter) { runsOrError(filter: $filter, limit: 200) {
    __typename
    ... on Runs { results { runId jobName status creationTime startTime endTime
                            tags { key value } } }
    ... on Error { message }
} }
"""
_RUN_ERRORS_QUERY = """
query Errors($runId: ID!) { logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename
        ... on ExecutionStepFailureEvent { error { message } }
        ... on RunFailureEvent { error { message } } } }
} }
"""
_SENSOR_QUERY = """
query Sensor($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { id name sensorState { id status ticks(limit: 3) { status } } }
    ... on Error { message }
} }
"""
_STOP_SENSOR = """
mutation Stop($id: String) { stopSensor(id: $id) {
    __typename ... on Error { message }
} }
"""
_START_SENSOR = """
mutation Start($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
    __typename ... on Error { message }
} }
"""
_ASSET_QUERY = """
query Asset($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { label
        ... on TextMetadataEntry { text }
        ... on MarkdownMetadataEntry { mdStr }
        ... on IntMetadataEntry { intValue }
        ... on FloatMetadataEntry { floatValue }
        ... on BoolMetadataEntry { boolValue } } } }
} }
"""


# -- make run ------------------------------------------------------------------------------------


def check_postgres_url(instance_yaml: Path) -> None:
    """Fail early, and say how to fix it, when an instance config needs $DAGSTER_PG_URL."""
    if not instance_yaml.is_file() or "DAGSTER_PG_URL" not in instance_yaml.read_text():
        return
    url = os.environ.get("DAGSTER_PG_URL", "")
    example = "postgresql+psycopg2://postgres@127.0.0.1:5432/mlevents"
    if not url:
        raise DagsterDevError(
            f"{instance_yaml.name} keeps Dagster's storage on PostgreSQL: set DAGSTER_PG_URL, "
            f"e.g. DAGSTER_PG_URL={example}"
        )
    if not url.startswith("postgresql+psycopg2://"):
        raise DagsterDevError(
            f"DAGSTER_PG_URL must start with postgresql+psycopg2:// (dagster-postgres needs "
            f"psycopg2; SQLAlchemy maps a plain postgresql:// to psycopg 3), e.g. {example}"
        )


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Fail, saying what to do, when something already listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the webserver binds: a port left in TIME_WAIT by a stopped server is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DagsterDevError(
                f"port {port} on {host} is taken ({exc.strerror}): another `make run` or "
                f"`dagster dev` is probably running; stop it, or pick another port with "
                f"`make run PORT={port + 1}`"
            ) from None


def asset_graph_path() -> str:
    """The asset graph page with every group of the code location expanded, so the first view
    shows the pipeline rather than collapsed group boxes (the UI reads `?expanded=`)."""
    from pipelines.definitions import defs

    groups = sorted({spec.group_name for spec in defs.resolve_all_asset_specs() if spec.group_name})
    # Group ids are `global@global:NAME`, or `REPOSITORY@LOCATION:NAME` with the UI's
    # groups-per-code-location flag on; unknown ids are ignored, so give both.
    ids = [f"global@global:{g}" for g in groups] + [f"{REPOSITORY}@{LOCATION}:{g}" for g in groups]
    return "/asset-groups?expanded=" + urllib.parse.quote(",".join(ids), safe=",@:")


def use_project_store() -> None:
    """Point the pipeline at the store the `mlevents` CLI reads by default in the repository,
    `.mlevents/events.db` (and its artifacts beside it), unless $MLEVENTS_URL /
    $MLEVENTS_ARTIFACTS say otherwise."""
    from event_sourcing.artifacts import DEFAULT_ROOT
    from event_sourcing.stores import DEFAULT_SQLITE_PATH

    (PROJECT_ROOT / DEFAULT_SQLITE_PATH).parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLEVENTS_URL", f"sqlite:///{PROJECT_ROOT / DEFAULT_SQLITE_PATH}")
    os.environ.setdefault("MLEVENTS_ARTIFACTS", str(PROJECT_ROOT / DEFAULT_ROOT))


def serve(home: Path, port: int, instance_yaml: Path, batches: int = 3) -> None:
    """Prepare DAGSTER_HOME, seed the landing folder, then become `dagster dev` (foreground)."""
    check_port_free(port)
    check_postgres_url(instance_yaml)
    home = prepare_home(home, instance_yaml)
    os.environ["DAGSTER_HOME"] = str(home)
    use_project_store()
    # Imported late: the resources read DAGSTER_HOME to place the store and landing folder.
    from event_sourcing.dagster import default_landing_folder, default_store_url
    from pipelines.dataset import seed_landing

    landing = default_landing_folder()
    seeded = seed_landing(landing, batches=batches)
    # The second model's batches: its pipeline reads the landing folder's wine/ subfolder.
    seed_landing(landing / "wine", batches=batches, dataset_id="wine")
    url = f"http://127.0.0.1:{port}"
    print(
        f"""
mlevents on Dagster
  DAGSTER_HOME   {home}  (instance config: {instance_yaml.name})
  event store    {default_store_url()}  (`mlevents status` here reads it)
  landing folder {landing}  ({len(seeded)} seed batches written; wine/ for the wine model)

  Open {url}{asset_graph_path()}  (the asset graph)
  The sensors run by default: the seed batches are ingested, validated, trained on and
  deployed within a minute. Drop more CSVs into the landing folder to see a retrain, e.g.
  `make batch` (or `make batch DRIFTED=1`) in another terminal. Ctrl-C stops Dagster.
""",
        flush=True,
    )
    command = [
        *_dagster_command(),
        "dev",
        "-w",
        str(PROJECT_ROOT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    os.chdir(PROJECT_ROOT)
    _default_signals()
    os.execv(command[0], command)


def drop_batch(home: Path, drifted: bool = False) -> Path:
    """Write a new (or drifted) batch with a fresh name into the landing folder of `home`."""
    os.environ["DAGSTER_HOME"] = str(home.expanduser().absolute())  # as `make run` does
    from event_sourcing.dagster import default_landing_folder
    from pipelines.dataset import write_drifted_batch, write_new_batch

    landing = default_landing_folder()
    # Batches draw sample ids from their seed; a dataset version grows batch by batch and
    # validation rejects duplicate ids, so each batch gets a seed of its own.
    seed = 10 + sum(1 for _ in landing.glob("*.csv"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if drifted:
        return write_drifted_batch(landing, f"drifted_{stamp}", seed=seed)
    return write_new_batch(landing, f"batch_{stamp}", seed=seed)


# -- make demo -----------------------------------------------------------------------------------


class _Narrator:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str = "") -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {message}", flush=True)


def _describe(run: dict[str, Any]) -> str:
    tags = run["tags"]
    trigger = tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name") or "launched"
    took = (run["endTime"] or 0) - (run["startTime"] or 0)
    cause = tags.get("mlevents/cause_event_type")
    why = f", cause: {cause} @{tags.get('mlevents/cause_position')}" if cause else ""
    return f"{run['jobName']} {run['runId'][:8]} {run['status']} in {took:.0f}s [{trigger}{why}]"


def last_event_id(store_url: str, run_id: str, event_types: Sequence[str]) -> str | None:
    """The id of the last event of `event_types` that a Dagster run wrote (None if none)."""
    import event_sourcing as es

    with es.connect(store_url) as store:
        found = [e for e in store.read_correlated(run_id) if e.event_type in event_types]
    return found[-1].id if found else None


def wait_for_caused_run(
    dagster: DagsterDev, sensor: str, cause_event_id: str, timeout: float
) -> dict[str, Any]:
    """Wait for the run `sensor` requested for the event `cause_event_id` to succeed."""
    from event_sourcing.dagster import CAUSE_TAG

    tags = {"dagster/sensor_name": sensor, CAUSE_TAG: cause_event_id}
    run = wait_until(
        lambda: next(iter(dagster.runs(tags=tags)), None),
        timeout,
        f"sensor {sensor} to request a run for event {cause_event_id}",
    )
    return dagster.wait_for_run(run["runId"], timeout)


def wait_for_landing_run(dagster: DagsterDev, batch_name: str, timeout: float) -> dict[str, Any]:
    """Wait for the ingestion run the landing-folder sensor requested for `batch_name`."""

    def requested() -> dict[str, Any] | None:
        for run in dagster.runs(tags={"dagster/sensor_name": "landing_folder_sensor"}):
            if batch_name in run["tags"].get("mlevents/batch_files", "").split(","):
                return run
        return None

    run = wait_until(requested, timeout, f"landing_folder_sensor to pick up {batch_name}")
    return dagster.wait_for_run(run["runId"], timeout)


def follow_retrain(
    dagster: DagsterDev, store_url: str, retrain_run: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """After a retrain run: wait for the provenance refresh its last event caused."""
    from event_sourcing.dagster.ml import PROVENANCE_TRIGGERS

    cause = last_event_id(store_url, retrain_run["runId"], PROVENANCE_TRIGGERS)
    if cause is None:
        raise DagsterDevError(f"retrain run {retrain_run['runId']} wrote no training_completed")
    return wait_for_caused_run(dagster, "refresh_provenance", cause, timeout)


def follow_batch(
    dagster: DagsterDev, store_url: str, batch_name: str, timeout: float
) -> list[dict[str, Any]]:
    """Wait for the chain a new batch file sets off: ingestion (landing sensor), retrain
    (retrain_on_new_data, caused by its data_validated) and provenance (refresh_provenance,
    caused by the retrain's last event). Returns the three runs."""
    ingest = wait_for_landing_run(dagster, batch_name, timeout)
    validated = last_event_id(store_url, ingest["runId"], ["data_validated"])
    if validated is None:
        raise DagsterDevError(f"ingestion run {ingest['runId']} wrote no data_validated")
    retrain = wait_for_caused_run(dagster, "retrain_on_new_data", validated, timeout)
    provenance = follow_retrain(dagster, store_url, retrain, timeout)
    return [ingest, retrain, provenance]


def run_demo(home: Path, port: int | None = None, stage_timeout: float = 240.0) -> None:
    """The whole story headless, through a real `dagster dev` (webserver + daemon)."""
    say = _Narrator()
    home = prepare_home(home)
    landing = home / "landing"
    store_url = f"sqlite:///{home / 'mlevents' / 'events.db'}"
    env = {
        "MLEVENTS_URL": store_url,
        "MLEVENTS_LANDING": str(landing),
        "MLEVENTS_ARTIFACTS": str(home / "mlevents" / "artifacts"),
        "MLEVENTS_SENSOR_INTERVAL": "5",
    }
    os.environ.update(env)  # this process reads the same store and folder
    import event_sourcing as es
    from event_sourcing.catalog import EventTypes
    from event_sourcing.provenance import lineage
    from event_sourcing.serving import current_deployment
    from pipelines.dataset import seed_landing, write_drifted_batch, write_new_batch
    from pipelines.state import ENVIRONMENT, MODEL_NAME

    def serving() -> str:
        with es.connect(store_url) as store:
            deployment = current_deployment(store, ENVIRONMENT, MODEL_NAME)
        return f"{deployment.model_id} (v{deployment.version})" if deployment else "nothing"

    def counts() -> str:
        with es.connect(store_url) as store:
            found = store.counts_by_type()
        return ", ".join(f"{k} {v}" for k, v in sorted(found.items()))

    def evaluation() -> str:
        found = dagster.latest_metadata("model_evaluation")
        return f"promote={found.get('promote')}: {found.get('reason', '?')}"

    say(f"DAGSTER_HOME={home}; event store {store_url}")
    say("starting `dagster dev` (webserver + daemon): the sensors below fire through its daemon")
    with DagsterDev(home, env=env, port=port) as dagster:
        say(f"code location loaded; UI at {dagster.url}")

        say("1. materialize everything (landing_folder_sensor paused so our run ingests the seed)")
        dagster.stop_sensor("landing_folder_sensor")
        dagster.stop_sensor("wine_landing_folder_sensor")
        seed_landing(landing)
        seed_landing(landing / "wine", dataset_id="wine")
        run_id = dagster.launch("full_pipeline")
        say(f"   launched full_pipeline {run_id[:8]} through GraphQL on 3 seed batches")
        say(f"   {_describe(dagster.wait_for_run(run_id, stage_timeout))}")
        wine_run = dagster.launch("wine_full_pipeline")
        say(f"   the second model, from the same factory: wine_full_pipeline {wine_run[:8]}")
        say(f"   {_describe(dagster.wait_for_run(wine_run, stage_timeout))}")
        say(f"   deployed: {serving()}")
        say(f"   events: {counts()}")

        say("2. a new batch lands in the landing folder; the sensors take it from here")
        dagster.start_sensor("landing_folder_sensor")
        batch = write_new_batch(landing)
        for run in follow_batch(dagster, store_url, batch.name, stage_timeout):
            say(f"   {_describe(run)}")
        say(f"   evaluation: {evaluation()}")
        say(f"   deployed: {serving()}")

        say("3. a drifted batch is scored: predictions and labelled feedback go to the log")
        drifted = write_drifted_batch(home / "scoring")
        config = {"ops": {"score_batch_op": {"config": {"path": str(drifted)}}}}
        run_id = dagster.launch("inference_job", run_config=config)
        say(f"   {_describe(dagster.wait_for_run(run_id, stage_timeout))}")
        with es.connect(store_url) as store:
            feedback = [
                e
                for e in store.read_correlated(run_id)
                if e.event_type == EventTypes.INFERENCE_FEEDBACK
            ]
        right = sum(1 for e in feedback if e.payload.get("correct"))
        say(f"   accuracy of the deployed model on it: {right}/{len(feedback)}")
        quality_tag = {"dagster/sensor_name": "retrain_on_quality_drop"}
        requested = wait_until(
            lambda: next(iter(dagster.runs(tags=quality_tag)), None),
            stage_timeout,
            "retrain_on_quality_drop to request a retrain",
        )
        quality = dagster.wait_for_run(requested["runId"], stage_timeout)
        rolling = quality["tags"].get("mlevents/rolling_accuracy")
        say(f"   {_describe(quality)}, rolling accuracy {rolling}")
        say(f"   evaluation: {evaluation()}")
        say(f"   {_describe(follow_retrain(dagster, store_url, quality, stage_timeout))}")

        say("4. the drifted rows arrive as labelled training data in the landing folder")
        shutil.copyfile(drifted, landing / "drifted_batch.csv")
        for run in follow_batch(dagster, store_url, "drifted_batch.csv", stage_timeout):
            say(f"   {_describe(run)}")
        say(f"   evaluation: {evaluation()}")
        say(f"   deployed: {serving()}")

        say("5. both models in the catalog (what `mlevents models` lists)")
        from event_sourcing.projections import ProjectionRunner, builtin_projections, list_models

        with es.connect(store_url) as store:
            ProjectionRunner(store, builtin_projections()).run()
            for model in list_models(store):
                say(f"   {model['name']} v{model['version']}: {model['status']}")

        say("6. lineage of the deployed model, from the event log")
        with es.connect(store_url) as store:
            deployment = current_deployment(store, ENVIRONMENT, MODEL_NAME)
            if deployment is None:
                raise DagsterDevError("no model is deployed at the end of the demo")
            graph = lineage(store, deployment.model_id)
        for edge in graph.edges:
            source = graph.node(edge.source).label.replace("\n", " ")
            target = graph.node(edge.target).label.replace("\n", " ")
            print(f"    {source}  --{edge.relation}-->  {target}")
        published = dagster.latest_metadata("deployed_model_lineage")
        where = (
            "the same diagram is"
            if published.get("model_id") == deployment.model_id
            else ("the provenance refresh publishes it")
        )
        print(f"\n  As Mermaid ({where} in the deployed_model_lineage asset's metadata in the UI):")
        print("\n".join(f"    {line}" for line in graph.to_mermaid().splitlines()))
        say(f"   events: {counts()}")
        say("stopping dagster dev")
    say("done")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="seed the landing folder and run `dagster dev`")
    serve_cmd.add_argument("--home", default="dagster_home", help="default: %(default)s")
    serve_cmd.add_argument("--port", type=int, default=3000)
    serve_cmd.add_argument(
        "--instance",
        default=str(PROJECT_ROOT / "dagster.sqlite.yaml"),
        help="instance config to copy into DAGSTER_HOME (dagster.postgres.yaml "
        "puts Dagster's storage on PostgreSQL)",
    )
    demo_cmd = sub.add_parser("demo", help="the whole story headless, then stop")
    demo_cmd.add_argument(
        "--home", help="DAGSTER_HOME for the demo (default: a temporary folder, removed afterwards)"
    )
    demo_cmd.add_argument("--port", type=int, default=None, help="default: a free port")
    demo_cmd.add_argument(
        "--stage-timeout",
        type=float,
        default=240.0,
        help="seconds each step may take (default %(default)s)",
    )
    batch_cmd = sub.add_parser("batch", help="drop a new batch CSV into the landing folder")
    batch_cmd.add_argument("--home", default="dagster_home", help="default: %(default)s")
    batch_cmd.add_argument("--drifted", action="store_true", help="a batch with concept drift")
    args = parser.parse_args(argv)
    if args.command == "batch":
        print(drop_batch(Path(args.home), args.drifted))
        return 0
    if args.command == "serve":
        serve(Path(args.home), args.port, Path(args.instance))
        return 0  # not reached: serve execs dagster dev
    if args.home:
        run_demo(Path(args.home), args.port, args.stage_timeout)
        return 0
    with tempfile.TemporaryDirectory(prefix="mlevents-demo-") as tmp:
        run_demo(Path(tmp), args.port, args.stage_timeout)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DagsterDevError as exc:
        print(f"mlevents: {exc}", file=sys.stderr)
        sys.exit(1)
