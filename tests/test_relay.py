"""The relay to NATS JetStream, on both backends, against the real broker on 127.0.0.1.

Each test publishes to a stream and subjects of its own and deletes the stream afterwards. In CI
(CI=true) an unreachable NATS fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest

import event_sourcing as es
from event_sourcing.cli import main as cli_main
from event_sourcing.relay import Relay, RelayError, read_checkpoint, relay_lag, set_checkpoint
from event_sourcing.relay.nats import JetStreamSink, subject_token

NATS_URL = os.environ.get("MLEVENTS_TEST_NATS_URL", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parent.parent


def require_nats() -> None:
    parts = urlsplit(NATS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 3).close()
    except OSError as exc:
        message = f"NATS at {NATS_URL} is unreachable: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: NATS tests must run, not skip)")
        pytest.skip(message)


@dataclass(frozen=True)
class Destination:
    prefix: str
    stream: str

    def sink(self, **options: Any) -> JetStreamSink:
        return JetStreamSink(NATS_URL, prefix=self.prefix, stream=self.stream, **options)


async def _delete_stream(name: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def destination() -> Iterator[Destination]:
    """A prefix and stream no other test (or helper) uses; the stream is deleted afterwards."""
    require_nats()
    tag = uuid.uuid4().hex[:12]
    found = Destination(prefix=f"test.relay{tag}", stream=f"TEST_RELAY_{tag}")
    yield found
    asyncio.run(_delete_stream(found.stream))


@dataclass(frozen=True)
class Received:
    subject: str
    msg_id: str
    position: int
    body: dict[str, Any]


def consume(destination: Destination) -> list[Received]:
    """Every message of the stream, in stream order, through a JetStream pull consumer."""

    async def run() -> list[Received]:
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            total = (await js.stream_info(destination.stream)).state.messages
            subscription = await js.pull_subscribe(
                f"{destination.prefix}.>", stream=destination.stream
            )
            received: list[Received] = []
            deadline = time.monotonic() + 60
            while len(received) < total and time.monotonic() < deadline:
                try:
                    messages = await subscription.fetch(batch=1000, timeout=2)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    headers = message.headers or {}
                    received.append(
                        Received(
                            message.subject,
                            headers["Nats-Msg-Id"],
                            int(headers["Mlevents-Position"]),
                            json.loads(message.data),
                        )
                    )
                    await message.ack()
            await subscription.unsubscribe()
            return received
        finally:
            await nc.close()

    return asyncio.run(run())


def fill(store: es.EventStore, batches: int, size: int = 7) -> list[es.RecordedEvent]:
    recorded: list[es.RecordedEvent] = []
    for n in range(batches):
        event_type = ["epoch_tick", "custom.metric*", "model deployed"][n % 3]
        recorded += store.append(
            f"run-{n % 4}", [es.NewEvent(event_type, {"n": n, "i": i}) for i in range(size)]
        )
    return recorded


def test_relay_publishes_every_event_once_in_position_order(
    store_url: str, destination: Destination
) -> None:
    with es.connect(store_url, validate=False) as store:
        recorded = fill(store, 30)
        with destination.sink() as sink:
            stats = Relay(store, sink, name="r", page_size=50).run(until_caught_up=True)
        head = store.head_position()
        assert relay_lag(store, "r") == (head, head)

    assert (stats.published, stats.duplicates, stats.checkpoint) == (210, 0, head)
    assert stats.caught_up and stats.pages == 5
    received = consume(destination)
    assert [m.msg_id for m in received] == [e.id for e in recorded]
    assert [m.position for m in received] == [e.position for e in recorded]
    assert [m.subject for m in received] == [
        f"{destination.prefix}.{subject_token(e.event_type)}" for e in recorded
    ]
    assert {m.subject.rsplit(".", 1)[1] for m in received} == {
        "epoch_tick", "custom_metric_", "model_deployed"
    }
    assert received[3].body == json.loads(json.dumps(recorded[3].to_dict()))


def test_the_broker_drops_a_republished_event_by_its_id(
    tmp_path: Path, destination: Destination
) -> None:
    with es.connect(f"sqlite:///{tmp_path / 'e.db'}", validate=False) as store:
        recorded = fill(store, 2)
    with destination.sink() as sink:
        first = sink.publish(recorded)
        again = sink.publish(recorded[5:])
    assert not any(ack.duplicate for ack in first)
    assert all(ack.duplicate for ack in again)
    assert [ack.sequence for ack in again] == [ack.sequence for ack in first[5:]]
    assert [m.msg_id for m in consume(destination)] == [e.id for e in recorded]


def test_a_lost_checkpoint_commit_resumes_after_what_the_broker_holds(
    store_url: str, destination: Destination
) -> None:
    with es.connect(store_url, validate=False) as store, destination.sink() as sink:
        recorded = fill(store, 6)
        relay = Relay(store, sink, name="r", page_size=4)
        relay.run(until_caught_up=True)
        set_checkpoint(store, "r", recorded[10].position)  # as if the last commits were lost
        later = fill(store, 2)
        again = relay.run(until_caught_up=True)
        assert read_checkpoint(store, "r") == store.head_position()

    # Nothing is sent twice, whenever the relay comes back (the broker's window is no limit).
    assert (again.published, again.duplicates) == (len(later), 0)
    assert [m.msg_id for m in consume(destination)] == [e.id for e in recorded + later]


def test_a_second_store_on_the_same_subjects_is_refused(
    tmp_path: Path, destination: Destination
) -> None:
    with es.connect(f"sqlite:///{tmp_path / 'a.db'}", validate=False) as first:
        fill(first, 2)
        with destination.sink() as sink:
            Relay(first, sink, name="r").run(until_caught_up=True)
    with es.connect(f"sqlite:///{tmp_path / 'b.db'}", validate=False) as second:
        fill(second, 1)
        with destination.sink() as sink, pytest.raises(RelayError, match="another store"):
            Relay(second, sink, name="r").run(until_caught_up=True)
        assert read_checkpoint(second, "r") == 0


def test_the_checkpoint_never_moves_past_what_the_broker_refused(
    store_url: str, destination: Destination
) -> None:
    with es.connect(store_url, validate=False) as store, destination.sink() as sink:
        fill(store, 3)
        relay = Relay(store, sink, name="r", page_size=5)
        relay.run(until_caught_up=True)
        checkpoint = relay.checkpoint()
        fill(store, 3)
        asyncio.run(_delete_stream(destination.stream))  # the broker loses the stream

        with pytest.raises(RelayError, match="no JetStream stream takes this subject"):
            relay.run(until_caught_up=True)
        assert relay.checkpoint() == checkpoint == 21


def test_two_relays_keep_separate_checkpoints_that_never_go_back(
    tmp_path: Path, destination: Destination
) -> None:
    with es.connect(f"sqlite:///{tmp_path / 'e.db'}", validate=False) as store:
        fill(store, 2)
        assert read_checkpoint(store, "a") == 0  # creates the table on first use
        with destination.sink() as sink:
            Relay(store, sink, name="a").run(until_caught_up=True)
        assert (read_checkpoint(store, "a"), read_checkpoint(store, "b")) == (14, 0)
        # A second relay of the same name that read the checkpoint before the first one
        # advanced it commits an older position: the checkpoint does not go back.

        class Stale(Relay):
            def checkpoint(self) -> int:
                return 0

        class Forgetful(JetStreamSink):
            def last_position(self) -> int | None:
                return None

        with Forgetful(NATS_URL, prefix=destination.prefix, stream=destination.stream) as sink:
            stale = Stale(store, sink, name="a", page_size=3).run(max_seconds=0.0)
        assert (stale.checkpoint, stale.duplicates) == (3, 3)
        assert read_checkpoint(store, "a") == 14


def stream_config(destination: Destination) -> Any:
    async def run() -> Any:
        nc = await nats.connect(NATS_URL)
        try:
            return (await nc.jetstream().stream_info(destination.stream)).config
        finally:
            await nc.close()

    return asyncio.run(run())


def test_the_relay_creates_its_stream_with_a_duplicate_window(
    tmp_path: Path, destination: Destination
) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with es.connect(url, validate=False) as store:
        fill(store, 1)
    command = ["relay", "--url", url, NATS_URL, "--prefix", destination.prefix, "--stream",
               destination.stream, "--duplicate-window", "300", "--until-caught-up"]
    assert cli_main(command) == 0
    config = stream_config(destination)
    assert (config.subjects, config.duplicate_window) == ([f"{destination.prefix}.>"], 300)
    with destination.sink(duplicate_window=60):  # an existing stream is used as it is
        assert stream_config(destination).duplicate_window == 300
    asyncio.run(_delete_stream(destination.stream))
    with destination.sink():
        assert stream_config(destination).duplicate_window == 120  # JetStream's default


def test_bad_destinations_are_relay_errors_that_say_what_to_do(tmp_path: Path) -> None:
    require_nats()
    with pytest.raises(RelayError, match=r"cannot connect to NATS at nats://127.0.0.1:1: .*-js"):
        JetStreamSink("nats://127.0.0.1:1", connect_timeout=1)
    with pytest.raises(RelayError, match="subject prefix"):
        JetStreamSink(NATS_URL, prefix="bad prefix.>")
    with pytest.raises(RelayError, match="does not exist"):
        JetStreamSink(NATS_URL, stream=f"NO_SUCH_{uuid.uuid4().hex}", create_stream=False)
    url = f"sqlite:///{tmp_path / 'e.db'}"
    assert cli_main(["relay", url, "nats://127.0.0.1:1", "--until-caught-up"]) == 2
    assert cli_main(["relay", url, "http://127.0.0.1:4222"]) == 2
    assert cli_main(["relay", url, NATS_URL, "extra"]) == 2


def _relay_command(url: str, destination: Destination, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "event_sourcing.cli", "relay", url, NATS_URL,
        "--prefix", destination.prefix, "--stream", destination.stream, "--interval", "0.05",
        *extra,
    ]


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_cli_relay_stops_cleanly_on_a_signal(
    tmp_path: Path, destination: Destination, signum: int
) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with es.connect(url, validate=False) as store:
        recorded = fill(store, 5)
        process = subprocess.Popen(
            _relay_command(url, destination), cwd=ROOT, stdout=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        try:
            _wait_for(lambda: read_checkpoint(store, destination.stream) == 35, 120, "the relay")
            later = fill(store, 1)  # live tailing picks new events up
            _wait_for(lambda: read_checkpoint(store, destination.stream) == 42, 120, "tailing")
        finally:
            process.send_signal(signum)
            out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    stats = json.loads(out)
    assert (stats["published"], stats["checkpoint"]) == (42, 42)
    assert [m.msg_id for m in consume(destination)] == [e.id for e in recorded + later]


_WRITER = """
import sys, time
import event_sourcing as es
url, count = sys.argv[1], int(sys.argv[2])
written = 0
with es.connect(url, validate=False) as store:
    while written < count:
        size = 1 + written % 5
        store.append(f"w-{written % 7}", [es.NewEvent("tick", {"n": written + i})
                                          for i in range(size)])
        written += size
        time.sleep(0.005)
"""


def _writer_total(count: int) -> int:
    written = 0
    while written < count:
        written += 1 + written % 5
    return written


@pytest.mark.slow
def test_kill_9_at_random_points_while_events_arrive_loses_and_repeats_nothing(
    store_url: str, destination: Destination
) -> None:
    """The relay is SIGKILLed 15 times while a writer appends; a consumer then sees every
    event exactly once, in position order."""
    rng = random.Random(14)
    kills = 15
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, store_url, "6000"], cwd=ROOT, start_new_session=True
    )
    checkpoints: list[int] = []
    try:
        with es.connect(store_url, validate=False) as store:
            for kill in range(kills):
                before = read_checkpoint(store, destination.stream)
                relay = subprocess.Popen(
                    _relay_command(store_url, destination, "--page-size", "40"),
                    cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True,
                )
                if kill % 2:  # every other time, let it publish first, however slow it starts

                    def progressed(before: int = before, relay: Any = relay) -> bool:
                        now = read_checkpoint(store, destination.stream)
                        head = store.head_position()
                        return now > before or before == head or relay.poll() is not None

                    _wait_for(progressed, 120, "the relay to make progress")
                time.sleep(rng.uniform(0.0, 1.0))
                relay.kill()  # SIGKILL: no clean-up, no last commit
                relay.wait(timeout=60)
                assert relay.returncode == -signal.SIGKILL
                checkpoints.append(read_checkpoint(store, destination.stream))
            assert writer.wait(timeout=300) == 0
            with destination.sink() as sink:
                final = Relay(store, sink, name=destination.stream).run(until_caught_up=True)
            everything = list(store.read_all())
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    assert len(everything) == _writer_total(6000)
    received = consume(destination)
    assert [m.msg_id for m in received] == [e.id for e in everything]
    assert [m.position for m in received] == [e.position for e in everything]
    assert checkpoints == sorted(checkpoints) and checkpoints[-1] > 0, checkpoints
    assert final.checkpoint == everything[-1].position


# -- Dagster: the schedule-driven relay job and its lag check ------------------------------------


def test_the_dagster_relay_publishes_and_its_check_reports_the_lag(
    tmp_path: Path, destination: Destination
) -> None:
    import dagster as dg

    from pipelines.relay import NatsRelayResource, relay_lag_check, relayed_events
    from resources import EventStoreResource

    url = f"sqlite:///{tmp_path / 'e.db'}"
    resources = {
        "event_store": EventStoreResource(url=url),
        "nats_relay": NatsRelayResource(
            url=NATS_URL, prefix=destination.prefix, stream=destination.stream, max_lag=5
        ),
    }
    with es.connect(url, validate=False) as store:
        recorded = fill(store, 2)
    with dg.instance_for_test() as instance:
        check_only = dg.materialize(
            [relayed_events, relay_lag_check], resources=resources, instance=instance,
            selection=dg.AssetSelection.checks(relay_lag_check),
        )
        (before,) = check_only.get_asset_check_evaluations()
        assert not before.passed and before.metadata["lag"].value == 14

        result = dg.materialize(
            [relayed_events, relay_lag_check], resources=resources, instance=instance
        )
        assert result.success
        (materialization,) = result.get_asset_materialization_events()
        metadata = materialization.materialization.metadata  # type: ignore[union-attr]
        assert (metadata["published"].value, metadata["lag"].value) == (14, 0)
        (after,) = result.get_asset_check_evaluations()
        assert after.passed and after.metadata["checkpoint"].value == 14
    assert [m.msg_id for m in consume(destination)] == [e.id for e in recorded]


def test_the_relay_schedule_skips_until_configured_and_while_a_slice_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.relay import NatsRelayResource, relay_every_minute

    monkeypatch.delenv("MLEVENTS_RELAY_NATS_URL", raising=False)
    with dg.instance_for_test() as instance:

        def tick(resource: NatsRelayResource) -> Any:
            context = dg.build_schedule_context(
                instance=instance, resources={"nats_relay": resource}
            )
            return relay_every_minute.evaluate_tick(context)

        assert "MLEVENTS_RELAY_NATS_URL" in (tick(NatsRelayResource()).skip_message or "")
        monkeypatch.setenv("MLEVENTS_RELAY_NATS_URL", NATS_URL)
        assert len(tick(NatsRelayResource()).run_requests or []) == 1

        job = defs.resolve_job_def("relay_to_nats")
        run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
        assert run.run_id in (tick(NatsRelayResource(url=NATS_URL)).skip_message or "")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_relay_benchmark_runs_and_prints_its_table(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No timing assertion: the benchmark relays every event and reports each figure."""
    require_nats()
    bench_dir = str(ROOT / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import bench_relay

    pg_url = os.environ.get("MLEVENTS_TEST_PG_URL", bench_relay.DEFAULT_PG_URL)
    if backend == "postgresql":
        request.getfixturevalue("pg_schema_url")  # skips (fails in CI) if PostgreSQL is down
    settings = bench_relay.Settings(
        events=500, repeats=1, backends=(backend,), pg_url=pg_url, nats_url=NATS_URL
    )
    (row,) = bench_relay.run_benchmark(settings, tmp_path)
    assert row.backend == backend and row.events == 500
    assert min(row.relay, row.relay_cpu, row.read, row.publish) > 0
    assert f"| {backend} |" in bench_relay.render([row], settings)


@pytest.mark.slow
def test_two_relays_of_one_name_at_once_still_deliver_each_event_once_in_order(
    store_url: str, destination: Destination
) -> None:
    """Two replicas of the relay by mistake: both publish every page, the broker keeps the
    first copy of each event id, and each publisher sends in position order, so the stream
    stays in order."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, store_url, "2000"], cwd=ROOT, start_new_session=True
    )
    relays = [
        subprocess.Popen(
            _relay_command(store_url, destination, "--page-size", "40"),
            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        with es.connect(store_url, validate=False) as store:
            assert writer.wait(timeout=300) == 0
            head = store.head_position()
            _wait_for(lambda: read_checkpoint(store, destination.stream) == head, 120,
                      "the relays to catch up")
            everything = list(store.read_all())
    finally:
        for process in [writer, *relays]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = [relay.communicate(timeout=60)[0] for relay in relays]
    assert [relay.returncode for relay in relays] == [0, 0]
    stats = [json.loads(out) for out in outputs]
    assert sum(s["published"] for s in stats) >= len(everything) == _writer_total(2000)
    received = consume(destination)
    assert [m.msg_id for m in received] == [e.id for e in everything]
