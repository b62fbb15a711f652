"""Personal data on both backends: marking, encryption at rest, forgetting (crypto-shredding),
and what is left on disk afterwards (the SQLite file, a pg_dump of the schema)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from conftest import PG_URL

import event_sourcing as es
from event_sourcing.catalog import DomainEvent, TrainingStarted, default_registry
from event_sourcing.errors import (
    ConfigurationError,
    EventValidationError,
    KeyEncryptionKeyError,
)
from event_sourcing.privacy import (
    ERASED_OBJECT,
    ERASED_TEXT,
    LocalKeyProvider,
    Personal,
    is_erased,
    personal_spec,
)
from event_sourcing.privacy.forget import erasure_report
from event_sourcing.privacy.impact import record_dataset_subjects
from event_sourcing.privacy.keys import TABLE
from event_sourcing.projections import ProjectionRunner, builtin_projections, list_trainings
from event_sourcing.projections.temporal import as_of
from event_sourcing.provenance.lineage import build_graph
from event_sourcing.stores.sqlite_texts import text_of
from event_sourcing.training import log_feedback, log_prediction

MakeStore = Callable[..., es.EventStore]
SHA = "a" * 64
ALICE = "alice-7f3c9e@example.com"  # the subject ids are personal data themselves
BOB = "bob-52d1a0@example.com"


class PatientRegistered(DomainEvent):
    """A user-defined type: its subject is a payload field."""

    event_type = "patient_registered"
    subject_path = "patient_id"
    patient_id: Annotated[str, Personal()]
    email: Annotated[str, Personal()]
    visits: Annotated[dict[str, int], Personal(erased={})]
    ward: str


REGISTRY = default_registry.copy()
REGISTRY.register(PatientRegistered)


@pytest.fixture
def kek() -> LocalKeyProvider:
    return LocalKeyProvider(os.urandom(32))


@pytest.fixture
def private(make_store: MakeStore, kek: LocalKeyProvider) -> es.EventStore:
    return make_store(registry=REGISTRY, key_provider=kek)


def predict(store: es.EventStore, subject: str | None, email: str) -> es.RecordedEvent:
    metadata = {"subject_id": subject} if subject else None
    [event] = store.append(
        f"inference-{uuid.uuid4()}",  # never personal data in a stream id: it is not sealed
        [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"email": email, "age": 41},
        })],
        metadata=metadata,
    )
    return event


def register(store: es.EventStore, patient: str, email: str) -> es.RecordedEvent:
    [event] = store.append(
        f"patient-{uuid.uuid4()}",
        [PatientRegistered(patient_id=patient, email=email, visits={"x": 2}, ward="B")],
    )
    return event


def raw_texts(store: es.EventStore) -> str:
    """Every payload and metadata as stored, one text."""
    columns = (  # (SQLite stores a metadata text once, in event_texts)
        f"payload, {text_of('metadata')}" if store.dialect == "sqlite"
        else "payload::text, metadata::text"
    )
    rows = store.recorder.query(f"SELECT {columns} FROM event_store")
    return "\n".join(f"{payload}\n{metadata}" for payload, metadata in rows)


# -- marking -------------------------------------------------------------------------------------


def test_the_catalog_marks_what_is_personal() -> None:
    requested = personal_spec(default_registry.model_for("inference_requested"))
    completed = personal_spec(default_registry.model_for("inference_completed"))
    feedback = personal_spec(default_registry.model_for("inference_feedback"))
    started = personal_spec(TrainingStarted)
    assert requested and requested.fields == {"inputs": ERASED_OBJECT}
    assert completed and completed.fields == {"prediction": ERASED_TEXT, "probabilities": None}
    assert feedback and feedback.fields == {"actual": ERASED_TEXT}
    assert started and started.fields == {"user_id": ERASED_TEXT}
    for name in ("model_deployed", "data_ingested", "training_completed", "subject_erased"):
        assert personal_spec(default_registry.model_for(name)) is None
    mine = personal_spec(PatientRegistered)
    assert mine is not None and mine.subject_path == ("patient_id",)
    assert mine.fields == {"patient_id": ERASED_TEXT, "email": ERASED_TEXT, "visits": {}}


def test_a_subject_path_must_be_personal_and_a_marker_must_fit() -> None:
    class Unmarked(DomainEvent):
        event_type = "unmarked"
        subject_path = "user"
        user: str
        note: Annotated[str, Personal()]

    class NoMarkerFits(DomainEvent):
        event_type = "no_marker_fits"
        count: Annotated[int, Personal()]

    with pytest.raises(ConfigurationError, match="not marked Personal"):
        personal_spec(Unmarked)
    with pytest.raises(ConfigurationError, match=r"Personal\(erased=...\)"):
        personal_spec(NoMarkerFits)


# -- encryption ----------------------------------------------------------------------------------


def test_personal_values_are_stored_encrypted_and_read_back_plain(
    private: es.EventStore,
) -> None:
    appended = predict(private, ALICE, "alice@example.com")
    patient = register(private, ALICE, "alice.p@example.com")
    assert appended.payload["inputs"] == {"email": "alice@example.com", "age": 41}
    assert appended.metadata == {"subject_id": ALICE}
    stored = raw_texts(private)
    for plaintext in ("alice@example.com", "alice.p@example.com", ALICE, '"age"'):
        assert plaintext not in stored
    assert '"ward":"B"' in stored.replace(" ", "")  # what is not personal stays readable
    for read in (
        private.get_event(appended.id),
        private.read_stream(appended.stream_id)[0],
        next(iter(private.read_all(event_types=["inference_requested"]))),
    ):
        assert read is not None
        assert (read.payload, read.metadata) == (appended.payload, appended.metadata)
    read_patient = private.get_event(patient.id)
    assert read_patient is not None and read_patient.payload == patient.payload
    assert REGISTRY.parse(read_patient) == PatientRegistered(
        patient_id=ALICE, email="alice.p@example.com", visits={"x": 2}, ward="B"
    )


def test_an_idempotent_retry_of_an_encrypted_event_returns_the_recorded_one(
    private: es.EventStore,
) -> None:
    event = es.NewEvent(
        "inference_requested", {"model_id": "m", "model_version": 1, "inputs": {"a": 1}},
        id="0190b5f0-0000-7000-8000-000000000001", metadata={"subject_id": ALICE},
    )
    [first] = private.append("retry", [event])
    [again] = private.append("retry", [event])  # fresh nonces: the ciphertexts differ
    assert again == first and private.stream_version("retry") == 1


def test_events_naming_no_subject_need_no_key_and_cost_no_key(
    make_store: MakeStore,
) -> None:
    store = make_store()  # no key-encryption key anywhere
    event = predict(store, None, "anon@example.com")
    assert event.payload["inputs"]["email"] == "anon@example.com"
    assert not store.privacy.keys.holds_any()  # nothing was looked up or created
    with pytest.raises(EventValidationError, match="reserved for encrypted values"):
        store.append("x", [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"$enc": "forged"},
        })])


def test_a_subject_without_a_key_encryption_key_is_refused_and_nothing_written(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLEVENTS_KEK", raising=False)
    store = make_store()
    with pytest.raises(KeyEncryptionKeyError, match="MLEVENTS_KEK"):
        predict(store, ALICE, "alice@example.com")
    assert store.head_position() == 0
    with pytest.raises(EventValidationError, match="subject id must be a non-empty string"):
        store.append("x", [es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"a": 1},
        })], metadata={"subject_id": 42})


def test_the_key_encryption_key_from_the_environment(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLEVENTS_KEK", base64.b64encode(os.urandom(32)).decode())
    event = predict(make_store(), ALICE, "alice@example.com")
    assert make_store().get_event(event.id) == event
    monkeypatch.setenv("MLEVENTS_KEK", "not base64!")
    with pytest.raises(ConfigurationError, match="not base64"):
        make_store().get_event(event.id)
    monkeypatch.setenv("MLEVENTS_KEK", base64.b64encode(b"short").decode())
    with pytest.raises(ConfigurationError, match="32 bytes"):
        make_store().get_event(event.id)


def test_a_lost_or_wrong_key_encryption_key_is_a_clear_error_never_plaintext(
    make_store: MakeStore, private: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLEVENTS_KEK", raising=False)
    event = predict(private, ALICE, "alice@example.com")
    predict(private, None, "anon@example.com")
    wrong = make_store(key_provider=LocalKeyProvider(os.urandom(32)))
    lost = make_store()
    for store, message in ((wrong, "cannot unwrap"), (lost, "no key-encryption key")):
        with pytest.raises(KeyEncryptionKeyError, match=message):
            store.get_event(event.id)
        with pytest.raises(KeyEncryptionKeyError):
            list(store.read_all())
        with pytest.raises(KeyEncryptionKeyError):
            store.forget(ALICE, reason="with the wrong key")
    with pytest.raises(KeyEncryptionKeyError):
        predict(wrong, BOB, "bob@example.com")  # nothing is sealed under a wrong KEK
    # Events without personal data of a subject still read.
    assert [e.payload["inputs"]["email"] for e in wrong.read_all(after=event.position)] == [
        "anon@example.com"
    ]
    assert private.get_event(event.id) == event


# -- forgetting ----------------------------------------------------------------------------------


def test_forget_erases_one_subject_and_everything_keeps_working(
    private: es.EventStore,
) -> None:
    alice = [predict(private, ALICE, "alice@example.com"), register(private, ALICE, "a@x.org")]
    bob = [predict(private, BOB, "bob@example.com"), register(private, BOB, "b@x.org")]
    inference = log_prediction(
        private, "m", 1, {"email": "alice@example.com"}, "churn", metadata={"subject_id": ALICE}
    )
    feedback = log_feedback(private, inference, "stay", metadata={"subject_id": ALICE})
    private.append("run-1", [es.NewEvent.of(
        TrainingStarted(config={}, dataset_id="d", dataset_version=SHA, user_id=ALICE),
        metadata={"subject_id": ALICE},
    )])
    before = private.head_position()

    erased = private.forget(ALICE, reason="GDPR art. 17 request #12")

    assert erased.event_type == "subject_erased"
    assert ALICE not in str(erased.to_dict()) and "alice" not in str(erased.to_dict())
    assert erased.payload["keys_destroyed"] == 1
    assert erased.payload["affected_count"] == 6
    assert set(erased.payload["affected_events"]) >= {alice[0].id, alice[1].id, feedback.id}
    assert erased.payload["affected_types"]["inference_requested"] == 2
    first = private.get_event(alice[0].id)
    assert first is not None
    assert first.payload["inputs"] == ERASED_OBJECT and is_erased(first.payload["inputs"])
    assert first.metadata == {"subject_id": ERASED_TEXT}
    assert first.payload["model_id"] == "m"  # what is not personal is untouched
    patient = private.get_event(alice[1].id)
    assert patient is not None
    assert REGISTRY.parse(patient) == PatientRegistered(
        patient_id=ERASED_TEXT, email=ERASED_TEXT, visits={}, ward="B"
    )
    for event in bob:
        assert private.get_event(event.id) == event
    # Every event still parses; projections, as_of and lineage run; nothing raises.
    events = list(private.read_all())
    assert len(events) == before + 1
    for event in events:
        REGISTRY.parse(event)
    stats = ProjectionRunner(private, builtin_projections()).run()
    assert all(s.parked == 0 for s in stats.values()), stats
    [run] = list_trainings(private)
    assert run["user_id"] == ERASED_TEXT
    with as_of(private, "training_summaries", before) as snapshot:
        assert snapshot.query("SELECT user_id FROM training_summaries") == [
            {"user_id": ERASED_TEXT}
        ]
    build_graph(private)
    # The hash chains cover the ciphertext, so the log still verifies and seals.
    private.seal()
    report = private.verify()
    assert report.ok, report.problems
    # The erasure is idempotent in effect: forgetting again destroys nothing more.
    again = private.forget(ALICE, reason="repeated request")
    assert (again.payload["keys_destroyed"], again.payload["affected_count"]) == (0, 0)


def test_the_same_subject_after_erasure_gets_a_fresh_forgettable_key(
    private: es.EventStore,
) -> None:
    old = predict(private, ALICE, "alice@example.com")
    private.forget(ALICE, reason="first request")
    new = register(private, ALICE, "alice.again@example.com")
    found = private.get_event(new.id)
    assert found is not None and found.payload["email"] == "alice.again@example.com"
    gone = private.get_event(old.id)
    assert gone is not None and gone.payload["inputs"] == ERASED_OBJECT  # stays erased
    second = private.forget(ALICE, reason="second request")
    assert second.payload["affected_events"] == [new.id]
    found = private.get_event(new.id)
    assert found is not None and found.payload["email"] == ERASED_TEXT
    report = erasure_report(private, ALICE)
    assert [e["reason"] for e in report["erasures"]] == ["first request", "second request"]
    assert report["erasures"][1]["affected_events"] == [new.id]
    assert not report["holds_live_key"]


def test_forget_checks_its_arguments(private: es.EventStore) -> None:
    with pytest.raises(EventValidationError, match="needs a reason"):
        private.forget(ALICE, reason=" ")
    with pytest.raises(EventValidationError, match="non-empty string"):
        private.forget("", reason="x")


def test_concurrent_forget_and_append_for_one_subject(private: es.EventStore) -> None:
    errors: list[BaseException] = []
    appended: list[es.RecordedEvent] = []
    stop = threading.Event()

    def append() -> None:
        try:
            for n in range(60):
                appended.append(predict(private, ALICE, f"alice-{n}@example.com"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def forget() -> None:
        try:
            while not stop.is_set():
                private.forget(ALICE, reason="race")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append), threading.Thread(target=forget)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(appended) == 60
    private.forget(ALICE, reason="final")
    for event in private.read_all(event_types=["inference_requested"]):
        assert event.payload["inputs"] == ERASED_OBJECT
        assert event.metadata["subject_id"] == ERASED_TEXT
    assert "alice-" not in raw_texts(private)


# -- what is left on disk ------------------------------------------------------------------------


def _key_material(store: es.EventStore, kek: LocalKeyProvider) -> list[bytes]:
    """The stored (wrapped) data keys of the store and the data keys themselves."""
    found = []
    for key_id, wrapped in store.recorder.query(
        f"SELECT key_id, wrapped_key FROM {TABLE} WHERE key_id != 'hash-key'"
    ):
        found.append(wrapped.encode())
        found.append(kek.unwrap(base64.b64decode(wrapped), key_id.encode()))
    return found


def test_after_forget_the_sqlite_file_holds_no_plaintext_and_no_key(
    tmp_path: Path, kek: LocalKeyProvider
) -> None:
    path = tmp_path / "events.db"
    store = es.connect(f"sqlite:///{path}", registry=REGISTRY, key_provider=kek)
    try:
        with store.transaction() as tx:  # as in SQLite builds without SQLITE_SECURE_DELETE
            tx.execute("PRAGMA secure_delete = OFF")
        register(store, ALICE, "alice.secret@example.com")
        alice_keys = _key_material(store, kek)
        bob_event = register(store, BOB, "bob.secret@example.com")
        bob_keys = [k for k in _key_material(store, kek) if k not in alice_keys]
        store.recorder.checkpoint()  # type: ignore[attr-defined]
        before = path.read_bytes()
        assert all(key in before for key in alice_keys[:1])  # the check below can fail
        store.forget(ALICE, reason="GDPR art. 17")
        store.recorder.checkpoint()  # type: ignore[attr-defined]
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = path.read_bytes() + b"".join(
            p.read_bytes() for p in tmp_path.glob("events.db-*")
        )
        for secret in [ALICE.encode(), b"alice.secret@example.com", *alice_keys]:
            assert secret not in data
        assert bob_keys[0] in data
        [bob] = store.read_stream(bob_event.stream_id)
        assert bob.payload["email"] == "bob.secret@example.com"
    finally:
        store.close()


def test_after_forget_a_pg_dump_of_the_schema_holds_no_plaintext_and_no_key(
    pg_schema_url: str, kek: LocalKeyProvider
) -> None:
    pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
    schema = pg_schema_url.rpartition("schema=")[2]
    store = es.connect(pg_schema_url, registry=REGISTRY, key_provider=kek)
    try:
        register(store, ALICE, "alice.secret@example.com")
        predict(store, ALICE, "alice.inputs@example.com")
        alice_keys = _key_material(store, kek)
        bob_event = register(store, BOB, "bob.secret@example.com")
        store.forget(ALICE, reason="GDPR art. 17")

        def dump() -> bytes:
            return subprocess.run(
                [pg_dump, "--schema", schema, "--dbname", PG_URL.partition("?")[0]],
                check=True, capture_output=True, timeout=120,
            ).stdout

        data = dump()
        assert f"CREATE TABLE {schema}.{TABLE}".encode() in data  # the dump holds the keys
        for secret in [ALICE.encode(), b"alice.secret", b"alice.inputs", *alice_keys]:
            assert secret not in data
        with psycopg.connect(PG_URL) as connection:
            wrapped = connection.execute(
                f'SELECT wrapped_key FROM "{schema}".{TABLE} WHERE key_id != %s', ("hash-key",)
            ).fetchall()
        assert len(wrapped) == 1 and wrapped[0][0].encode() in data  # bob's key is kept
        [bob] = store.read_stream(bob_event.stream_id)
        assert bob.payload["email"] == "bob.secret@example.com"
    finally:
        store.close()


# -- command line --------------------------------------------------------------------------------


def test_cli_forget_and_erasure_report(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from event_sourcing.cli import main

    monkeypatch.setenv("MLEVENTS_KEK", base64.b64encode(os.urandom(32)).decode())
    store = es.connect(store_url)
    try:
        event = predict(store, ALICE, "alice@example.com")
        bob = predict(store, BOB, "bob@example.com")
    finally:
        store.close()
    assert main(["erasure-report", ALICE, "--url", store_url, "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["erasures"] == [] and before["holds_live_key"]
    assert main(["subject-impact", ALICE, "--url", store_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == [event.id]
    assert main(["forget", ALICE, "--url", store_url]) == 2  # --reason is required
    capsys.readouterr()
    assert main(["forget", ALICE, "--reason", "ticket 4711", "--url", store_url]) == 0
    forgot = json.loads(capsys.readouterr().out)
    assert forgot["affected_events"] == [event.id] and forgot["keys_destroyed"] == 1
    assert main(["erasure-report", ALICE, "--url", store_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [erasure] = report["erasures"]
    assert (erasure["event_id"], erasure["reason"]) == (forgot["erasure_event_id"], "ticket 4711")
    assert erasure["affected_events"] == [event.id] and not report["holds_live_key"]
    assert ALICE not in json.dumps(report)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["erasure-report", ALICE, "--url", store_url]) == 0
    text = capsys.readouterr().out
    assert "reason: ticket 4711" in text and event.id in text and erasure["event_id"] in text
    assert "holds no live key" in text
    assert main(["subject-impact", ALICE, "--url", store_url]) == 0
    assert f"prediction events: {event.id}" in capsys.readouterr().out
    with es.connect(store_url) as reopened:
        assert reopened.get_event(bob.id) == bob
        gone = reopened.get_event(event.id)
        assert gone is not None and gone.payload["inputs"] == ERASED_OBJECT


def test_cli_erasure_report_on_a_store_that_never_sealed_anything(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from event_sourcing.cli import main

    es.connect(store_url).close()
    assert main(["erasure-report", ALICE, "--url", store_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "subject_hash": None, "erasures": [], "holds_live_key": False
    }


def test_lineage_reads_sealed_events_before_and_after_forget(
    private: es.EventStore, tmp_path: Path
) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from event_sourcing.artifacts import ArtifactStore
    from event_sourcing.provenance.lineage import lineage
    from event_sourcing.training import TrainingService

    iris = load_iris(as_frame=True).frame

    def train(dataset: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
        X, y = dataset.drop(columns="target"), dataset["target"]
        return LogisticRegression(max_iter=300, random_state=seed).fit(X, y)

    service = TrainingService(private, ArtifactStore(tmp_path / "artifacts"))
    outcome = service.train(
        train, iris, seed=1, model_name="iris", user_id=ALICE, metadata={"subject_id": ALICE}
    )
    stored = raw_texts(private)
    assert ALICE not in stored
    graph = lineage(private, outcome.model_id)
    assert graph.of_kind("training_run")
    private.forget(ALICE, reason="left the company")
    assert lineage(private, outcome.model_id).nodes.keys() == graph.nodes.keys()
    [run] = [e for e in private.read_all(event_types=["training_started"])]
    assert run.payload["user_id"] == ERASED_TEXT


# -- datasets and models -------------------------------------------------------------------------


def test_impact_of_a_subject_and_models_flagged_by_their_erasure(
    private: es.EventStore, tmp_path: Path
) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from event_sourcing.artifacts import ArtifactStore
    from event_sourcing.privacy.impact import subject_impact
    from event_sourcing.projections import get_model
    from event_sourcing.training import TrainingService

    iris = load_iris(as_frame=True).frame

    def train(dataset: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
        X, y = dataset.drop(columns="target"), dataset["target"]
        return LogisticRegression(max_iter=300, random_state=seed).fit(X, y)

    service = TrainingService(private, ArtifactStore(tmp_path / "artifacts"))
    with_alice = service.train(train, iris.iloc[::2], seed=1, model_name="iris")
    without = service.train(train, iris.iloc[1::2], seed=1, model_name="iris")
    version = {
        e.stream_id: e.payload["dataset_version"]
        for e in private.read_all(event_types=["training_started"])
    }
    v1, v2 = version[with_alice.training_id], version[without.training_id]
    record_dataset_subjects(private, "iris", v1, [ALICE, BOB])
    record_dataset_subjects(private, "iris", v2, [BOB])
    prediction = log_prediction(
        private, with_alice.model_id, 1, {"x": 1}, 0, metadata={"subject_id": ALICE}
    )
    stored = raw_texts(private)
    assert ALICE not in stored and BOB not in stored

    before = subject_impact(private, ALICE)
    assert before["dataset_versions"] == [v1]
    assert before["model"] == [with_alice.model_id]
    assert before["training_run"] == [with_alice.training_id]
    assert prediction in {private.get_event(i).stream_id for i in before["predictions"]}  # type: ignore[union-attr]
    assert subject_impact(private, BOB)["dataset_versions"] == [v1, v2]

    erased = private.forget(ALICE, reason="art. 17")
    assert erased.payload["dataset_versions"] == [v1]
    assert erased.payload["model_ids"] == [with_alice.model_id]
    ProjectionRunner(private, builtin_projections()).run()
    flagged, kept = get_model(private, with_alice.model_id), get_model(private, without.model_id)
    assert flagged is not None and flagged["erased_by"] == erased.id
    assert kept is not None and kept["erased_by"] is None
    after = subject_impact(private, ALICE)
    assert after["model"] == [with_alice.model_id] and after["predictions"] == before["predictions"]
    report = erasure_report(private, ALICE)
    assert report["erasures"][0]["flagged_models"] == [with_alice.model_id]
    assert report["erasures"][0]["dataset_versions"] == [v1]


def test_grants_on_the_key_table(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Appenders add keys, readers decrypt, nobody but the owner deletes keys; a projector
    grant does not take over the key table."""
    from psycopg import sql

    from event_sourcing.cli import main

    monkeypatch.setenv("MLEVENTS_KEK", base64.b64encode(os.urandom(32)).decode())
    with es.connect(pg_schema_url) as owner:
        event = predict(owner, ALICE, "alice@example.com")  # the owner made the key table
    schema = pg_schema_url.rpartition("schema=")[2]
    host = PG_URL.removeprefix("postgresql://").partition("@")[2].partition("?")[0]
    roles = {kind: f"mlev_{uuid.uuid4().hex[:12]}" for kind in ("appender", "reader", "projector")}
    try:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            for role in roles.values():
                connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for kind, role in roles.items():
            assert main(["grant", role, f"--{kind}", pg_schema_url, "--apply"]) == 0
        capsys.readouterr()
        url = {kind: f"postgresql://{role}@{host}?schema={schema}" for kind, role in roles.items()}
        with es.connect(url["appender"]) as appender:
            bob = predict(appender, BOB, "bob@example.com")  # a new key, inserted
            assert appender.get_event(event.id) == event
            with pytest.raises(es.AccessDeniedError):
                appender.forget(ALICE, reason="not the appender's job")
        with es.connect(url["reader"]) as reader:
            assert reader.get_event(bob.id) == bob
        with psycopg.connect(PG_URL) as connection:
            owner_of = connection.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                (schema, TABLE),
            ).fetchone()
        assert owner_of is not None and owner_of[0] not in roles.values()
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            for role in roles.values():
                connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("made_before_the_key_table_joined_the_schema", [False, True])
def test_an_appender_without_create_seals_personal_data_in_a_fresh_store(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    made_before_the_key_table_joined_the_schema: bool,
) -> None:
    """The key table comes with the store's schema (or, for a store made before, with
    `mlevents grant`): the first personal event may come from a least-privilege appender."""
    from psycopg import sql

    from event_sourcing.cli import main

    monkeypatch.setenv("MLEVENTS_KEK", base64.b64encode(os.urandom(32)).decode())
    es.connect(pg_schema_url).close()  # the owner made the store, and sealed nothing
    schema = pg_schema_url.rpartition("schema=")[2]
    if made_before_the_key_table_joined_the_schema:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP TABLE {}.{}").format(
                sql.Identifier(schema), sql.Identifier(TABLE)))
    host = PG_URL.removeprefix("postgresql://").partition("@")[2].partition("?")[0]
    role = f"mlev_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        assert main(["grant", role, "--appender", pg_schema_url, "--apply"]) == 0
        capsys.readouterr()
        with es.connect(f"postgresql://{role}@{host}?schema={schema}") as appender:
            event = predict(appender, ALICE, "alice@example.com")  # hash secret + a key
            assert appender.get_event(event.id) == event
            record_dataset_subjects(appender, "customers", "ab" * 32, [ALICE, BOB])
        with psycopg.connect(PG_URL) as connection:
            owner_of = connection.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                (schema, TABLE),
            ).fetchone()
        assert owner_of is not None and owner_of[0] != role
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_batch_reads_each_subjects_key_once_and_a_page_reads_keys_once(
    private: es.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    predict(private, "carol", "warm@example.com")  # the key table, the store's hash key
    calls: list[str] = []
    query = private.recorder.query

    def counted(sql: str, params: Any = ()) -> Any:
        calls.append(sql)
        return query(sql, params)

    monkeypatch.setattr(private.recorder, "query", counted)
    events = [
        es.NewEvent("inference_requested", {
            "model_id": "m", "model_version": 1, "inputs": {"n": n},
        }, metadata={"subject_id": ALICE if n % 2 else BOB})
        for n in range(50)
    ]
    private.append("batch", events)
    assert len(calls) == 2 + 2  # alice's and bob's keys, made: a read before and after each
    calls.clear()
    read = private.read_stream("batch")
    assert [e.payload["inputs"]["n"] for e in read] == list(range(50))
    assert len(calls) == 1


def test_another_process_forgetting_is_seen_by_appends_within_the_key_cache_time(
    make_store: MakeStore, kek: LocalKeyProvider
) -> None:
    from datetime import UTC, datetime, timedelta

    from event_sourcing.privacy.keys import KEY_CACHE_SECONDS

    now = [datetime(2026, 12, 1, tzinfo=UTC)]
    appender = make_store(key_provider=kek, clock=lambda: now[0])
    other = make_store(key_provider=kek)
    predict(appender, ALICE, "alice@example.com")  # alice's key, remembered for appends
    other.forget(ALICE, reason="erased by another process")
    late = predict(appender, ALICE, "alice.late@example.com")
    read = other.get_event(late.id)
    assert read is not None and read.payload["inputs"] == ERASED_OBJECT  # never plaintext
    now[0] += timedelta(seconds=KEY_CACHE_SECONDS + 0.001)
    fresh = predict(appender, ALICE, "alice.new@example.com")  # a fresh key now
    read = other.get_event(fresh.id)
    assert read is not None and read.payload["inputs"]["email"] == "alice.new@example.com"
