"""Shared by the slow Dagster tests: a real `dagster dev` on a free port in a temporary home.

`running_dagster` starts it with its own store, landing folder and artifacts, and always kills it.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.demo import PROJECT_ROOT, DagsterDev, prepare_home, process_group_alive

TIMEOUT = 180.0
"""Seconds any one wait may take: the code location loading, a run, a sensor reacting."""


@dataclass
class Installation:
    """Where one test's pipeline keeps its things, and the environment that says so."""

    root: Path
    store_url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"


def installation(
    root: Path, store_url: str, extra_env: Mapping[str, str] | None = None
) -> Installation:
    env = {
        "MLEVENTS_URL": store_url,
        "MLEVENTS_LANDING": str(root / "landing"),
        "MLEVENTS_ARTIFACTS": str(root / "artifacts"),
        # Sensors every 5 s instead of 10: the daemon's loop makes it ~10 s between ticks.
        "MLEVENTS_SENSOR_INTERVAL": "5",
        **(extra_env or {}),
    }
    return Installation(root=root, store_url=store_url, env=env)


@contextmanager
def running_dagster(
    place: Installation, instance_yaml: Path = PROJECT_ROOT / "dagster.sqlite.yaml"
) -> Iterator[DagsterDev]:
    """`dagster dev` for `place`, its code location loaded; on exit its whole process group
    gets SIGTERM, then SIGKILL, and the exit fails if any process of it survives."""
    home = prepare_home(place.home, instance_yaml)
    dagster = DagsterDev(home, env=place.env, load_timeout=TIMEOUT)
    try:
        dagster.start()
        yield dagster
    finally:
        dagster.stop()
        if dagster.pgid is not None and process_group_alive(dagster.pgid):
            raise AssertionError(f"processes of dagster dev (group {dagster.pgid}) survived")
