"""The store under hostile input and least privilege, on SQLite and real PostgreSQL: history
cannot be replaced or reordered, user names cannot inject SQL, secrets never show, roles get
exactly their job, and read-only opens create nothing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import latest_schema_version, sqlite_texts_inline
from psycopg import sql

import event_sourcing as es
from event_sourcing.cli import main
from event_sourcing.projections import Projection, ProjectionError, ProjectionRunner
from event_sourcing.projections.read_models import builtin_projections
from event_sourcing.stores.recorder import redact_text, redact_url

PG_URL = os.environ.get("MLEVENTS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

COLUMNS = (
    "position, id, stream_id, stream_type, version, event_type, schema_version, payload, "
    "metadata, created_at"
)
PG_COLUMNS = COLUMNS.removeprefix("position, ")


def ev(**payload: Any) -> es.NewEvent:
    return es.NewEvent("thing_happened", payload or {"n": 1})


def raw(store_url: str, statement: str, params: Any = None) -> None:
    """Run SQL outside the library, as a person with a SQL shell would."""
    if store_url.startswith("sqlite"):
        connection = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            connection.execute(statement, params or ())
            connection.commit()
        finally:
            connection.close()
    else:
        base, _, schema = store_url.partition("?schema=")
        with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
            conn.execute(statement, params)  # type: ignore[arg-type]


def rewrite(dialect: str, statement: str, id1: str) -> str:
    """One of the rewrites below for `dialect`, about the event `id1` and a fresh id, with
    each id as the backend stores it."""
    if dialect == "sqlite":
        return statement.format(
            c=COLUMNS, id1=f"X'{uuid.UUID(id1).hex}'", new=f"X'{uuid.uuid4().hex}'"
        )
    return statement.format(c=PG_COLUMNS, id1=id1, new=str(uuid.uuid4()))


def schema_of(url: str) -> str:
    return url.partition("?schema=")[2]


def schema_exists(name: str) -> bool:
    with psycopg.connect(PG_URL) as connection:
        row = connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))
        return row.fetchone() is not None


# -- 1. history cannot be replaced, slipped in before the head, or given a forged position ----
# (SQLite stores an id as its UUID's 16 bytes: {id1} and {new} are blob literals.)
SQLITE_REWRITES = [
    # REPLACE on the position: the old row is deleted without a DELETE trigger firing.
    "INSERT OR REPLACE INTO event_store ({c}) VALUES (1, {id1}, 's', 'default', 1, "
    "'thing_happened', 1, '{{\"hacked\": 1}}', '{{}}', '2020-01-01T00:00:00.000000+00:00')",
    # REPLACE on the id, at a new position.
    "REPLACE INTO event_store ({c}) VALUES (3, {id1}, 's', 'default', 3, "
    "'thing_happened', 1, '{{\"hacked\": 1}}', '{{}}', '2020-01-01T00:00:00.000000+00:00')",
    # REPLACE on (stream_id, version), with a fresh id and position.
    "REPLACE INTO event_store ({c}) VALUES (3, {new}, 's', 'default', 1, "
    "'thing_happened', 1, '{{\"hacked\": 1}}', '{{}}', '2020-01-01T00:00:00.000000+00:00')",
    # An upsert.
    "INSERT INTO event_store ({c}) VALUES (1, {id1}, 's', 'default', 1, 'thing_happened', 1, "
    "'{{}}', '{{}}', '2020-01-01T00:00:00.000000+00:00') "
    "ON CONFLICT (position) DO UPDATE SET payload = '{{\"hacked\": 1}}'",
    "INSERT OR REPLACE INTO event_store ({c}) SELECT 2, {id1}, 's', 'default', 9, "
    "'thing_happened', 1, '{{}}', '{{}}', '2020-01-01T00:00:00.000000+00:00'",
    # An event slipped in below the head (position 0), where a reader has already been.
    "INSERT INTO event_store ({c}) VALUES (0, {new}, 'other', 'default', 1, "
    "'thing_happened', 1, '{{}}', '{{}}', '2020-01-01T00:00:00.000000+00:00')",
    "UPDATE OR REPLACE event_store SET position = 1 WHERE position = 2",
]
PG_REWRITES = [
    # A forged position, far ahead or below the head.
    "INSERT INTO event_store (position, {c}) VALUES (1000000, '{new}', 'x', 'default', 1, "
    "'thing_happened', 1, '{{}}', '{{}}', now())",
    "INSERT INTO event_store (position, {c}) VALUES (0, '{new}', 'x', 'default', 1, "
    "'thing_happened', 1, '{{}}', '{{}}', now())",
    "INSERT INTO event_store (position, {c}) VALUES (1, '{new}', 'x', 'default', 1, "
    "'thing_happened', 1, '{{}}', '{{}}', now()) ON CONFLICT DO NOTHING",
    "INSERT INTO event_store (position, {c}) SELECT nextval('event_position_seq') + 5, "
    "'{new}', 'x', 'default', 1, 'thing_happened', 1, '{{}}', '{{}}', now()",
    # An upsert.
    "INSERT INTO event_store ({c}) VALUES ('{id1}', 's', 'default', 1, 'thing_happened', 1, "
    "'{{}}', '{{}}', now()) ON CONFLICT (id) DO UPDATE SET payload = '{{\"hacked\": 1}}'",
]


@pytest.mark.parametrize(
    ("dialect", "statement"),
    [("sqlite", statement) for statement in SQLITE_REWRITES]
    + [("postgresql", statement) for statement in PG_REWRITES],
)
def test_history_cannot_be_replaced_or_reordered_with_raw_sql(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str, statement: str
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'events.db'}" if dialect == "sqlite"
        else str(request.getfixturevalue("pg_schema_url"))
    )
    with es.connect(url, validate=False) as store:
        store.append("s", [ev(n=1), ev(n=2)])
        before = list(store.read_all())
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error)) as caught:
            raw(url, rewrite(dialect, statement, before[0].id))
        refused = ["append-only", "set by the store"]
        if dialect == "postgresql":  # partitioned: no unique index on id for an upsert to use
            refused.append("no unique or exclusion constraint matching the ON CONFLICT")
        assert any(reason in str(caught.value) for reason in refused)
        assert list(store.read_all()) == before
        store.append("s", [ev(n=3)], expected_version=2)  # the store itself still appends
        positions = [e.position for e in store.read_all()]  # (a refused nextval leaves a gap)
        assert positions[:2] == [1, 2] and len(positions) == 3 and positions[2] > 2


def test_copy_cannot_name_positions_on_postgres(pg_schema_url: str) -> None:
    with es.connect(pg_schema_url, validate=False) as store:
        store.append("s", [ev()])
        copy = f"COPY event_store (position, {PG_COLUMNS}) FROM STDIN"
        row = (0, str(uuid.uuid4()), "x", "default", 1, "t", 1, "{}", "{}", "2020-01-01Z")
        with (
            psycopg.connect(
                PG_URL, options=f"-c search_path={schema_of(pg_schema_url)}"
            ) as conn,
            pytest.raises(psycopg.Error, match="set by the store"),
            conn.cursor().copy(copy) as cp,
        ):
            cp.write_row(row)
        assert store.head_position() == 1


def test_a_temporary_sequence_cannot_shadow_the_positions(pg_schema_url: str) -> None:
    """pg_temp is searched first: a session's own `event_position_seq` must not be used."""
    with es.connect(pg_schema_url, validate=False) as store:
        store.append("s", [ev()])
        with psycopg.connect(
            PG_URL, autocommit=True, options=f"-c search_path={schema_of(pg_schema_url)}"
        ) as conn:
            conn.execute("CREATE TEMP SEQUENCE event_position_seq START 1000000")
            conn.execute(
                f"INSERT INTO event_store ({PG_COLUMNS}) VALUES (%s, 'x', 'default', 1, 't', 1, "
                "'{}', '{}', now())",
                (str(uuid.uuid4()),),
            )
        assert [e.position for e in store.read_all()] == [1, 2]


def test_an_existing_store_gets_the_protection_when_migrated(
    make_store: Callable[..., es.EventStore], store_url: str
) -> None:
    old = make_store(validate=False)
    old.append("s", [ev()])
    first = next(iter(old.read_all()))
    with old.transaction() as tx:  # back to the version 2 shape
        if old.dialect == "sqlite":
            sqlite_texts_inline(tx)
            tx.execute("DROP TRIGGER event_store_no_replace")
        else:
            tx.execute("DROP TRIGGER event_store_assign_position ON event_store")
            tx.execute(
                "ALTER TABLE event_store ALTER COLUMN position "
                "SET DEFAULT nextval('event_position_seq')"
            )
        tx.execute("DELETE FROM mlevents_schema")
        tx.execute(
            "INSERT INTO mlevents_schema (version, applied_at, description) "
            "VALUES (2, '2026-01-01', 'v2')"
        )
    old.close()
    migrated = make_store(validate=False)
    with migrated.transaction() as tx:
        assert tx.execute("SELECT max(version) FROM mlevents_schema").fetchone()[0] == (
            latest_schema_version(migrated.dialect))
    statement = (SQLITE_REWRITES if migrated.dialect == "sqlite" else PG_REWRITES)[0]
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error)):
        raw(store_url, rewrite(migrated.dialect, statement, first.id))
    assert list(migrated.read_all()) == [first]
    assert [e.position for e in migrated.append("s", [ev()])] == [2]


# -- 2. no SQL injection through projection definitions ----------------------------------------
def _handler(tx: Any, event: es.RecordedEvent, typed: Any) -> None:
    tx.execute("INSERT INTO seen (id) VALUES (?)", (event.id,))


@pytest.mark.parametrize(
    "table",
    [
        "t; DROP TABLE event_store",
        't"; DROP TABLE event_store; --',
        "event_store --",
        "Mixed",
        "",
        "a b",
        "café",
        "1abc",
        "x" * 64,
        42,
    ],
)
def test_projection_table_names_are_checked_when_defined(table: Any) -> None:
    with pytest.raises(ProjectionError, match="table name"):
        Projection(name="evil", handlers={"thing_happened": _handler}, tables=[table])


def test_projection_tables_must_be_a_list() -> None:
    with pytest.raises(ProjectionError, match="list of names"):
        Projection(name="evil", handlers={"thing_happened": _handler}, tables="seen")


def test_a_rebuild_quotes_table_names(make_store: Callable[..., es.EventStore]) -> None:
    """A table named by an SQL keyword is dropped by its (quoted) name on rebuild."""
    store = make_store(validate=False)
    store.append("s", [ev()])

    def handler(tx: Any, event: es.RecordedEvent, typed: Any) -> None:
        tx.execute('INSERT INTO "order" (id) VALUES (?)', (event.id,))

    projection = Projection(
        name="orders", handlers={"thing_happened": handler},
        ddl=['CREATE TABLE IF NOT EXISTS "order" (id TEXT PRIMARY KEY)'], tables=["order"],
    )
    runner = ProjectionRunner(store, [projection])
    assert runner.run()["orders"].applied == 1
    assert runner.rebuild("orders").applied == 1
    with store.transaction() as tx:
        assert tx.execute('SELECT count(*) FROM "order"').fetchone()[0] == 1


def test_read_model_sql_runs_one_statement_per_call(
    make_store: Callable[..., es.EventStore],
) -> None:
    """Read-model SQL cannot smuggle a second statement on either backend."""
    store = make_store(validate=False)
    store.append("s", [ev()])
    # A driver error escaping store.transaction() is an EventStoreError on both backends.
    with pytest.raises(es.EventStoreError), store.transaction() as tx:
        tx.execute("SELECT 1; DROP TABLE event_store")
    assert store.head_position() == 1
    assert len(list(store.read_all())) == 1


# -- 6. secrets never show ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://u:hunter2@h:5432/db", ["hunter2"]),
        ("postgresql://u:hunter2@h/db?password=s3cret&schema=x", ["hunter2", "s3cret"]),
        ("postgresql://u@h/db?sslpassword=k3y&sslkey=/keys/client.key", ["k3y"]),
        ("postgresql://u@h/db?pass%77ord=enc0ded", ["enc0ded"]),
        ("postgresql://u:p%40ss@h/db", ["p%40ss", "p@ss"]),
        ("postgres://u:a:b@h/db", ["a:b"]),
        ("host=h user=u password=dsnpass dbname=db", ["dsnpass"]),
        ("host=h password = 'with space' user=u", ["with space"]),
    ],
)
def test_every_credential_form_is_redacted(url: str, secrets: list[str]) -> None:
    shown = redact_url(url)
    for secret in secrets:
        assert secret not in shown
        assert secret not in redact_text(f"error for {url}: {secret} rejected", url)
    assert "***" in shown
    assert "sslkey=/keys/client.key" in redact_url(
        "postgresql://u@h/db?sslkey=/keys/client.key"
    )  # paths are not secrets


def test_unreachable_postgres_hides_every_credential(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = "postgresql://u:hunter2@127.0.0.1:1/db?password=s3cret&sslpassword=k3y"
    with pytest.raises(es.StoreUnavailableError) as caught:
        es.connect(url, connect_timeout=1)
    for secret in ("hunter2", "s3cret", "k3y"):
        assert secret not in str(caught.value) and secret not in caplog.text


def test_a_password_in_the_query_never_shows(
    pg_schema_url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL here trusts local connections, so the password is sent and ignored."""
    caplog.set_level(logging.DEBUG)
    url = f"{pg_schema_url}&password=s3cret&sslpassword=k3y"
    with es.connect(url, validate=False) as store:
        store.append("s", [ev()])
        list(store.read_all())
        shown = f"{store.recorder.description} {store!r}"
    assert main(["init", url]) == 0
    assert main(["status", url]) == 0
    out, err = capsys.readouterr()
    for secret in ("s3cret", "k3y"):
        assert secret not in shown and secret not in out + err and secret not in caplog.text
    assert "password=***" in shown and "password=***" in out


@pytest.mark.parametrize(
    "url",
    ["host=h password=s3cret", "sqlite:/x.db?password=s3cret", "sqlite://u:s3cret@host/x.db"],
)
def test_configuration_errors_hide_passwords(url: str) -> None:
    with pytest.raises(es.ConfigurationError) as caught:
        es.connect(url)
    assert "s3cret" not in str(caught.value)


# -- 8. schema names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ("", "empty"),
        ("pg_catalog", "reserved"),
        ("pg_toast", "reserved"),
        ("PG_mine", "reserved"),
        ("information_schema", "reserved"),
        ("Information_Schema", "reserved"),
        ("a;b", "letters, digits and underscores"),
        ('a"b', "letters, digits and underscores"),
        ("a b", "letters, digits and underscores"),
        ("a%00b", "letters, digits and underscores"),
        ("x" * 64, "64 bytes"),
        ("é" * 32, "64 bytes"),
    ],
)
def test_bad_schema_names_are_refused_before_connecting(schema: str, match: str) -> None:
    url = f"postgresql://u@127.0.0.1:1/db?schema={schema}"
    with pytest.raises(es.ConfigurationError, match=match):
        es.connect(url)
    with pytest.raises(es.ConfigurationError, match=match):
        es.connect("postgresql://u@127.0.0.1:1/db", schema=schema)


def test_mixed_case_and_non_ascii_schema_names_are_their_own_stores(pg_schema_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"Mixed_{tag}", f"mixed_{tag}", f"café_{tag}", "é" * 27 + f"_{tag}"]
    try:
        for n, name in enumerate(names):
            with es.connect(PG_URL, schema=name, validate=False) as store:
                store.append("s", [ev(n=n)] * 1 if n else [ev(n=n), ev(n=n)])
        for n, name in enumerate(names):
            with es.connect(PG_URL, schema=name, create=False) as store:
                assert {e.payload["n"] for e in store.read_all()} == {n}
            assert schema_exists(name)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            for name in names:
                connection.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )


def test_two_long_names_that_share_63_bytes_cannot_share_a_log() -> None:
    common = "é" * 31  # 62 bytes
    for name in (common + "ab", common + "ac"):
        with pytest.raises(es.ConfigurationError, match="64 bytes"):
            es.connect(PG_URL, schema=name)


# -- 11. read-only opens create nothing ----------------------------------------------------------
def test_a_read_only_open_of_a_missing_sqlite_store_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'dir' / 'e.db'}"
    with pytest.raises(es.StoreNotFoundError) as caught:
        es.connect(url, create=False)
    assert str(caught.value) == f"no event store at {url} (create it with `mlevents init {url}`)"
    assert not (tmp_path / "no").exists()
    with pytest.raises(es.StoreNotFoundError):
        es.connect("sqlite:///:memory:", create=False)


def test_a_read_only_open_of_a_file_without_a_store_writes_no_schema(tmp_path: Path) -> None:
    path = tmp_path / "other file #1.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE theirs (x)")
    before = path.read_bytes()
    with pytest.raises(es.StoreNotFoundError):
        es.connect(f"sqlite:///{path}", create=False)
    assert path.read_bytes() == before  # not even its journal mode changed
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_read_only_open_of_a_missing_schema_creates_nothing(pg_schema_url: str) -> None:
    typo = f"typo_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://u:s3cret@127.0.0.1:5432/test?schema={typo}".replace(
        "u:s3cret@127.0.0.1:5432/test", PG_URL.removeprefix("postgresql://")
    )
    with pytest.raises(es.StoreNotFoundError, match=f"no event store at .*schema={typo}"):
        es.connect(url, create=False)
    assert not schema_exists(typo)


def test_a_read_only_open_of_an_empty_schema_creates_nothing(pg_schema_url: str) -> None:
    empty = f"empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(empty)))
        try:
            with pytest.raises(es.StoreNotFoundError):
                es.connect(PG_URL, schema=empty, create=False)
            row = connection.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s", (empty,),
            ).fetchone()
            assert row is not None and row[0] == 0
        finally:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(empty)))


def test_a_read_only_open_of_an_existing_store_works(
    store_url: str, make_store: Callable[..., es.EventStore]
) -> None:
    make_store(validate=False).append("s", [ev()])
    with es.connect(store_url, create=False) as store:
        assert store.head_position() == 1


# -- 7. least privilege -------------------------------------------------------------------------
@pytest.fixture
def make_role(pg_schema_url: str) -> Iterator[Callable[[], tuple[str, str]]]:
    """Create LOGIN roles with unique names; return (role, its store URL). Dropped afterwards
    with everything they own or were granted in the test database."""
    roles: list[str] = []

    def make() -> tuple[str, str]:
        role = f"mlev_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        roles.append(role)
        host = PG_URL.removeprefix("postgresql://").partition("@")[2]
        return role, f"postgresql://{role}@{host}?schema={schema_of(pg_schema_url)}"

    yield make
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        for role in roles:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _grant(url: str, role: str, kind: str) -> None:
    assert main(["grant", role, f"--{kind}", url, "--apply"]) == 0


ATTACKS = [
    "UPDATE event_store SET payload = '{\"hacked\": 1}'",
    "DELETE FROM event_store",
    "TRUNCATE event_store",
    "DROP TABLE event_store",
    "ALTER TABLE event_store DISABLE TRIGGER ALL",
    "ALTER TABLE event_store DISABLE TRIGGER event_store_no_update",
    "SELECT setval('event_position_seq', 1)",
    f"INSERT INTO event_store (position, {PG_COLUMNS}) VALUES (1000000, "
    "'00000000-0000-7000-8000-000000000000', 'x', 'default', 1, 't', 1, '{}', '{}', now())",
    "DROP SCHEMA {schema} CASCADE",
    "CREATE OR REPLACE FUNCTION mlevents_horizon() RETURNS bigint LANGUAGE sql AS 'SELECT 0'",
]


def _refused_everything(url: str, store: es.EventStore) -> None:
    before = list(store.read_all())
    for attack in ATTACKS:
        with pytest.raises(psycopg.Error):
            raw(url, attack.replace("{schema}", schema_of(url)))
    assert list(store.read_all()) == before


SEEN = Projection(
    name="seen", handlers={"thing_happened": _handler},
    ddl=["CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)"], tables=["seen"],
)


@pytest.mark.parametrize("kind", ["appender", "reader", "projector"])
def test_each_role_can_do_its_job_and_nothing_more(
    pg_schema_url: str,
    make_role: Callable[[], tuple[str, str]],
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with es.connect(pg_schema_url, validate=False) as owner:
        owner.append("s", [ev()])
        ProjectionRunner(owner, [SEEN]).run()  # projection tables the owner made
    role, url = make_role()
    assert main(["grant", role, f"--{kind}", pg_schema_url]) == 0  # prints, applies nothing
    assert "GRANT USAGE ON SCHEMA" in capsys.readouterr().out
    with pytest.raises(es.AccessDeniedError, match=f"role '{role}'.*mlevents grant {role}"):
        es.connect(url)
    _grant(pg_schema_url, role, kind)
    assert main(["status", url]) == 0
    with es.connect(url, validate=False) as store:
        assert len(list(store.read_all())) == 1 and store.head_position() == 1
        if kind == "appender":
            store.append("s", [ev(n=2)], expected_version=1)
            store.append("new", [ev(n=3)], expected_version=0)
            assert [e.position for e in store.read_all()] == [1, 2, 3]
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw(url, f"INSERT INTO event_store ({PG_COLUMNS}) VALUES ("
                    "'00000000-0000-7000-8000-000000000001', 'x', 'default', 1, 't', 1, '{}', "
                    "'{}', now())")
        if kind == "projector":
            store_head = store.head_position()
            runner = ProjectionRunner(store, [SEEN, *builtin_projections()])
            assert runner.rebuild("seen").applied == 1
            assert all(stats.checkpoint == store_head for stats in runner.run().values())
            assert main(["project", url]) == 0
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw(url, "DROP TABLE seen")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw(url, "CREATE TABLE mine (x int)")
        if kind == "reader":
            with store.transaction() as tx:
                assert tx.execute("SELECT count(*) FROM seen").fetchone()[0] == 1
        _refused_everything(url, store)


def test_a_role_without_privileges_gets_a_clear_error(
    pg_schema_url: str, make_role: Callable[[], tuple[str, str]]
) -> None:
    es.connect(pg_schema_url).close()
    role, url = make_role()
    with pytest.raises(es.AccessDeniedError, match=f"no USAGE on schema.*grant {role}"):
        es.connect(url)
    with pytest.raises(es.AccessDeniedError, match="may not create the event store"):
        es.connect(url.replace(schema_of(url), f"fresh_{uuid.uuid4().hex[:8]}"))
    with psycopg.connect(PG_URL, autocommit=True) as connection:  # usage, but no SELECT
        connection.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema_of(url)), sql.Identifier(role)
            )
        )
    with pytest.raises(es.AccessDeniedError, match="may not read the event store"):
        es.connect(url)


def test_grant_refuses_sqlite_and_unknown_roles(
    tmp_path: Path, pg_schema_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'e.db'}"
    es.connect(sqlite_url).close()
    assert main(["grant", "someone", "--reader", sqlite_url]) == 2
    assert "grant is for PostgreSQL" in capsys.readouterr().err
    es.connect(pg_schema_url).close()
    assert main(["grant", f"nobody_{uuid.uuid4().hex[:8]}", "--reader", pg_schema_url,
                 "--apply"]) == 2
    assert "create the role first" in capsys.readouterr().err
