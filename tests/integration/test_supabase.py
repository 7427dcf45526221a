"""The Supabase CLI and the hub set up the same database, and each finds the other's work done.

`supabase db push --db-url` (the CLI from tests/supabase-cli, no Docker) applies
supabase/migrations/ to a real PostgreSQL; the hub then migrates nothing and stores readings.
The other way round, a database the hub migrated: `db push` refuses without changing
anything, `supabase migration repair --status applied` records the versions, and `db push`
then has nothing to do (README, Database, Supabase). And the README's sample policy opens
what it says to a signed-in user, read-only, and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hub.ingest.batch import Ack, Batcher, Inbound
from hub.ingest.validate import validate
from hub.store import Store
from tests.servers import PostgresServer
from tests.unit.hub.messages import NOW, meta_bytes, metrics_bytes

ROOT = Path(__file__).resolve().parents[2]
CLI_DIR = ROOT / "tests/supabase-cli"
PREFIX = "fp"


@pytest.fixture(scope="session")
def supabase_cli() -> Path:
    """The pinned Supabase CLI (.ci/run installs it; missing is a failure, not a skip)."""
    wanted = json.loads((CLI_DIR / "package.json").read_text())["dependencies"]["supabase"]
    binary = Path(os.environ.get("FLEETPULSE_SUPABASE_CLI",
                                 CLI_DIR / "node_modules/.bin/supabase"))
    if not binary.exists():
        raise RuntimeError(f"the Supabase CLI is not installed at {binary}: run npm install "
                           f"--prefix tests/supabase-cli --no-package-lock")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
    assert version == wanted, f"Supabase CLI {version} at {binary}, the tests pin {wanted}"
    return binary


@pytest.fixture
def project(private_dir: Path) -> Path:
    """A copy of the repository's supabase/ directory, as a project checkout has it."""
    shutil.copytree(ROOT / "supabase", private_dir / "supabase")
    return private_dir


def supabase(cli: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(project)}  # the CLI's own files stay in the test's dir
    return subprocess.run([str(cli), *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def push(cli: Path, project: Path, db_url: str) -> subprocess.CompletedProcess[str]:
    # The test server has no TLS, which the CLI tries first.
    return supabase(cli, project, "db", "push", "--db-url", f"{db_url}?sslmode=disable", "--yes")


def cli_versions() -> list[str]:
    """The versions (timestamps) of supabase/migrations, oldest first."""
    return sorted(p.name.split("_", 1)[0] for p in (ROOT / "supabase/migrations").glob("*.sql"))


def hub_migration_names() -> list[str]:
    return sorted(p.name for p in (ROOT / "hub/migrations").glob("[0-9]*.sql"))


def query(db_url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(statement.encode()).fetchall()


def cli_recorded(db_url: str) -> list[str]:
    if not query(db_url, "select to_regclass('supabase_migrations.schema_migrations')")[0][0]:
        return []
    return [row[0] for row in query(
        db_url, "select version from supabase_migrations.schema_migrations order by 1")]


def hub_recorded(db_url: str) -> list[tuple[int, str]]:
    return [(row[0], row[1]) for row in query(
        db_url, "select version, name from schema_migrations order by 1")]


def schema(postgres: PostgresServer, db_url: str) -> str:
    """The public schema as pg_dump prints it: tables, columns, indexes, views, RLS."""
    dump = subprocess.run([str(postgres.bindir / "pg_dump"), "--schema-only", "--schema=public",
                           "--no-owner", db_url], capture_output=True, text=True,
                          check=True).stdout
    # Recent pg_dump wraps the dump in \restrict / \unrestrict with a random key.
    return "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))


def hub(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.main", *args, "--db", db_url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def write_readings(db_url: str, device: str, seqs: range) -> None:
    """Store readings (and the device's meta) the way the hub's writer does."""
    batcher = Batcher(max_rows=10_000, max_age_s=60)
    payloads = [(f"{PREFIX}/{device}/metrics",
                 metrics_bytes(device_id=device, seq=seq, epoch_s=NOW.timestamp() - 60 + seq))
                for seq in seqs] + [(f"{PREFIX}/{device}/meta", meta_bytes(device_id=device))]
    for i, (topic, payload) in enumerate(payloads):
        message = Inbound(topic, payload, NOW, Ack(i, 1, 0))
        batcher.add(message, validate(topic, payload, NOW, PREFIX), 0)
    batch = batcher.take()
    assert batch is not None
    store = Store(db_url)
    try:
        assert store.migrate() == []
        store.write(batch.rows, batch.quarantine, batch.devices)
    finally:
        store.close()


def stored(db_url: str) -> tuple[int, int, int]:
    """(readings, minute rollup readings, devices) in the database."""
    row = query(db_url, "select (select count(*) from metrics), "
                        "(select coalesce(sum(readings), 0) from metrics_1m), "
                        "(select count(*) from devices)")[0]
    return int(row[0]), int(row[1]), int(row[2])


def test_db_push_applies_every_migration_and_the_hub_finds_nothing_to_do(
        supabase_cli: Path, project: Path, postgres: PostgresServer) -> None:
    by_cli, by_hub = postgres.create_database("cli"), postgres.create_database("hub")

    result = push(supabase_cli, project, by_cli)
    assert result.returncode == 0, result.stdout + result.stderr
    for version in cli_versions():
        assert f"Applying migration {version}_" in result.stdout + result.stderr
    assert cli_recorded(by_cli) == cli_versions()
    # Versions from the file names: numbers reserved for work not merged yet leave gaps.
    assert hub_recorded(by_cli) == [(int(n.split("_", 1)[0]), n) for n in hub_migration_names()]

    # The hub's command and the hub's store: nothing to apply.
    migrate = hub(by_cli, "migrate")
    assert (migrate.returncode, migrate.stdout.strip()) == (0, "Schema is current."), migrate
    # The CLI and the hub build the very same schema.
    assert hub(by_hub, "migrate").returncode == 0
    assert schema(postgres, by_cli) == schema(postgres, by_hub)
    assert hub_recorded(by_cli) == hub_recorded(by_hub)

    write_readings(by_cli, "pi-1", range(1, 31))
    assert stored(by_cli) == (30, 30, 1)
    # The partition the hub made for the readings has row level security, as on the hub's.
    assert query(by_cli, "select bool_and(c.relrowsecurity) and count(*) > 0 from pg_inherits i "
                         "join pg_class c on c.oid = i.inhrelid "
                         "where i.inhparent = 'metrics'::regclass") == [(True,)]

    # A second push has nothing to do.
    again = push(supabase_cli, project, by_cli)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Remote database is up to date" in again.stdout + again.stderr
    assert stored(by_cli) == (30, 30, 1)


def test_db_push_on_a_hub_migrated_database_changes_nothing_until_repaired(
        supabase_cli: Path, project: Path, postgres: PostgresServer, db_url: str) -> None:
    assert hub(db_url, "migrate").stdout.split() == hub_migration_names()
    write_readings(db_url, "pi-1", range(1, 11))
    before = schema(postgres, db_url)

    # Without repair the CLI tries the first migration again; the database refuses it
    # (its tables exist) and the CLI's transaction leaves everything as it was.
    refused = push(supabase_cli, project, db_url)
    assert refused.returncode != 0
    assert "already exists" in refused.stdout + refused.stderr
    assert (schema(postgres, db_url), stored(db_url), cli_recorded(db_url)) == (
        before, (10, 10, 1), [])

    # README: record the hub's migrations as applied, then push as usual.
    repair = supabase(supabase_cli, project, "migration", "repair", "--status", "applied",
                      *cli_versions(), "--db-url", f"{db_url}?sslmode=disable")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert cli_recorded(db_url) == cli_versions()
    pushed = push(supabase_cli, project, db_url)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "Remote database is up to date" in pushed.stdout + pushed.stderr
    assert (schema(postgres, db_url), stored(db_url)) == (before, (10, 10, 1))

    write_readings(db_url, "pi-2", range(1, 6))
    assert stored(db_url) == (15, 15, 2)


def readme_sample_policy() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("<!-- sample-policy -->\n```sql\n", 1)[1].split("```", 1)[0]


def test_the_readmes_sample_policy_lets_signed_in_users_read_devices_and_minutes_only(
        postgres: PostgresServer, db_url: str) -> None:
    assert hub(db_url, "migrate").returncode == 0
    write_readings(db_url, "pi-1", range(1, 11))
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Supabase's role, and what Supabase grants it on public; here a superuser creates it
        # (the role is the cluster's, shared by the tests' databases).
        conn.execute("do $$ begin if not exists (select from pg_roles where rolname = "
                     "'authenticated') then create role authenticated nologin; end if; end $$")
        conn.execute("grant usage on schema public to authenticated")
        conn.execute("grant select, insert, update, delete on all tables in schema public "
                     "to authenticated")
        conn.execute(readme_sample_policy().encode())
        as_owner = counts(conn)
        conn.execute("set role authenticated")
        as_user = counts(conn)
        updated = conn.execute("update devices set hostname = 'changed'").rowcount
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("insert into metrics_1m (device_id, bucket) values ('pi-9', now())")
        conn.execute("reset role")
        hostnames = conn.execute("select hostname from devices").fetchall()
        # README: a policy on metrics opens it and metrics_seed, not a partition read directly.
        conn.execute("create policy everything on metrics for select to authenticated "
                     "using (true)")
        partition = conn.execute("select tableoid::regclass::text from metrics "
                                 "limit 1").fetchone()  # one that holds readings
        assert partition is not None
        conn.execute("set role authenticated")
        opened = counts(conn)
        direct = conn.execute(f"select count(*) from {partition[0]}".encode()).fetchone()
        conn.execute("reset role")
    assert (opened["metrics"], opened["metrics_seed"]) == (
        as_owner["metrics"], as_owner["metrics_seed"])
    assert direct == (0,)
    assert all(as_owner[table] > 0 for table in ("devices", "metrics_1m", "metrics",
                                                  "metrics_seed", "metrics_1h"))
    readable = {"devices", "metrics_1m"}
    assert as_user == {table: as_owner[table] if table in readable else 0 for table in as_owner}
    assert updated == 0 and ("changed",) not in hostnames


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    tables = ("devices", "metrics_1m", "metrics", "metrics_seed", "metrics_1h", "quarantine",
              "alerts", "schema_migrations")
    return {table: conn.execute(f"select count(*) from {table}".encode()).fetchone()[0]  # type: ignore[index]
            for table in tables}
