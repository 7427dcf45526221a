"""Row level security: an API role like Supabase's ``anon`` can read and write nothing.

Supabase grants its API roles (anon, authenticated) every privilege on the tables in
``public`` and relies on row level security to keep rows private; without a policy RLS
denies everything. The hub owns the tables (as Supabase's ``postgres`` role, which is not
a superuser: a superuser would bypass RLS and prove nothing), so it is not affected.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hub.ingest.batch import Ack, Batcher, Inbound
from hub.ingest.validate import validate
from hub.store import Store
from tests.servers import PostgresServer
from tests.unit.hub.messages import NOW, meta_bytes, metrics_bytes

PREFIX = "fp"


def write_batch(store: Store, payloads: list[tuple[str, bytes]]) -> None:
    batcher = Batcher(max_rows=10_000, max_age_s=60)
    for i, (topic, payload) in enumerate(payloads):
        message = Inbound(topic, payload, NOW, Ack(i, 1, 0))
        batcher.add(message, validate(topic, payload, NOW, PREFIX), 0)
    batch = batcher.take()
    assert batch is not None
    store.write(batch.rows, batch.quarantine, batch.devices)


@dataclass(frozen=True)
class Roles:
    owner_url: str  # the hub's connection: a login role that owns the tables
    anon: str  # the API role, reached with SET ROLE


@pytest.fixture
def roles(postgres: PostgresServer, db_url: str) -> Iterator[Roles]:
    """The hub's database owned by a non-superuser role, and an ``anon`` role set up as
    Supabase does it; the hub's migrations applied and two days of data written."""
    suffix = uuid.uuid4().hex[:8]
    owner, anon = f"hub_owner_{suffix}", f"anon_{suffix}"
    dbname = db_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(owner)))
        # nologin like Supabase's anon (PostgREST switches to it with SET ROLE); the
        # owner may switch to it so the test can do the same.
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(anon)))
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(anon),
                                                      sql.Identifier(owner)))
        conn.execute(sql.SQL("alter database {} owner to {}").format(
            sql.Identifier(dbname), sql.Identifier(owner)))
    owner_url = postgres.url_for(dbname, owner)

    store = Store(owner_url)
    store.migrate()
    old = NOW - timedelta(days=2)
    write_batch(store, [
        (f"{PREFIX}/pi-1/metrics", metrics_bytes(seq=1, epoch_s=old.timestamp())),
        (f"{PREFIX}/pi-1/metrics", metrics_bytes(seq=2)),
        (f"{PREFIX}/pi-1/meta", meta_bytes()),
        (f"{PREFIX}/pi-1/status", b"online"),
        (f"{PREFIX}/pi-1/metrics", b"not json"),  # -> quarantine
    ])
    store.close()

    with psycopg.connect(owner_url, autocommit=True) as conn:
        # What Supabase grants its API roles on the public schema.
        for statement in ("grant usage on schema public to {}",
                          "grant select, insert, update, delete on all tables in schema public "
                          "to {}",
                          "grant usage, select on all sequences in schema public to {}"):
            conn.execute(sql.SQL(statement).format(sql.Identifier(anon)))
    yield Roles(owner_url, anon)


def tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table and partition in the public schema."""
    rows = conn.execute("select c.relname from pg_class c join pg_namespace n on "
                        "n.oid = c.relnamespace where n.nspname = 'public' and "
                        "c.relkind in ('r', 'p') order by 1").fetchall()
    return [row[0] for row in rows]


def views(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("select c.relname from pg_class c join pg_namespace n on "
                        "n.oid = c.relnamespace where n.nspname = 'public' and "
                        "c.relkind in ('v', 'm') order by 1").fetchall()
    return [row[0] for row in rows]


def counts(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, int]:
    return {name: conn.execute(sql.SQL("select count(*) from {}").format(
        sql.Identifier(name))).fetchone()[0] for name in names}  # type: ignore[index]


def insertable_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute("select column_name from information_schema.columns where "
                        "table_schema = 'public' and table_name = %s and is_generated = 'NEVER' "
                        "and coalesce(identity_generation, '') <> 'ALWAYS' "
                        "order by ordinal_position", (table,)).fetchall()
    return [row[0] for row in rows]


def test_every_table_and_partition_has_row_level_security_on(roles: Roles) -> None:
    with psycopg.connect(roles.owner_url) as conn:
        names = tables(conn)
        off = conn.execute("select c.relname from pg_class c join pg_namespace n on "
                           "n.oid = c.relnamespace where n.nspname = 'public' and "
                           "c.relkind in ('r', 'p') and not c.relrowsecurity").fetchall()
    assert {"metrics", "quarantine", "devices", "schema_migrations"} <= set(names)
    assert sum(name.startswith("metrics_2") for name in names) >= 2  # two daily partitions
    assert off == []


def test_anon_reads_no_row_of_any_table_partition_or_view(roles: Roles) -> None:
    with psycopg.connect(roles.owner_url) as conn:
        names = tables(conn) + views(conn)
        as_owner = counts(conn, names)
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(roles.anon)))
        as_anon = counts(conn, names)
    assert "metrics_seed" in names
    for name in ("metrics", "quarantine", "devices", "metrics_seed"):
        assert as_owner[name] > 0, f"the test wrote no row into {name}"
    assert as_anon == dict.fromkeys(names, 0)


def test_anon_cannot_insert_into_any_table_or_partition(roles: Roles) -> None:
    with psycopg.connect(roles.owner_url, autocommit=True) as conn:
        names = tables(conn)
        before = counts(conn, names)
        samples = {name: conn.execute(sql.SQL("select to_jsonb(t) from {} t limit 1").format(
            sql.Identifier(name))).fetchone() for name in names}
        refused = {}
        for name in names:
            columns = sql.SQL(", ").join(sql.Identifier(c)
                                         for c in insertable_columns(conn, name))
            sample = samples[name]
            # A copy of a real row (only RLS can refuse it: RLS is checked before
            # constraints), or default values for a table still empty.
            statement = (sql.SQL("insert into {0} ({1}) select {1} from "
                                 "jsonb_populate_record(null::{0}, %s::jsonb)").format(
                             sql.Identifier(name), columns)
                         if sample else sql.SQL("insert into {} default values").format(
                             sql.Identifier(name)))
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(roles.anon)))
            try:
                conn.execute(statement, (Jsonb(sample[0]),) if sample else None)
            except psycopg.errors.InsufficientPrivilege as exc:
                refused[name] = "row-level security" in str(exc)
            finally:
                conn.execute("reset role")
        after = counts(conn, names)
    assert refused == dict.fromkeys(names, True)
    assert after == before


def test_anon_updates_and_deletes_nothing(roles: Roles) -> None:
    with psycopg.connect(roles.owner_url, autocommit=True) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(roles.anon)))
        updated = conn.execute("update devices set hostname = 'pwned'").rowcount
        deleted = conn.execute("delete from metrics").rowcount
        conn.execute("reset role")
        hostnames = conn.execute("select hostname from devices").fetchall()
        remaining = conn.execute("select count(*) from metrics").fetchone()
    assert (updated, deleted) == (0, 0)
    assert ("pwned",) not in hostnames
    assert remaining is not None and remaining[0] == 2


def test_the_owning_hub_role_still_reads_and_writes(roles: Roles) -> None:
    store = Store(roles.owner_url)
    try:
        assert store.migrate() == []
        write_batch(store, [(f"{PREFIX}/pi-2/metrics", metrics_bytes(device_id="pi-2", seq=1))])
        fleet = {row["device_id"]: row for row in store.fleet_status()}
        seed = store.query("select count(*) as n from metrics_seed")
    finally:
        store.close()
    assert set(fleet) == {"pi-1", "pi-2"}
    assert fleet["pi-1"]["status"] == "online"
    assert seed == [{"n": 3}]
