"""supabase/migrations/ is the hub's migrations, byte for byte, in the Supabase CLI's layout.

The hub applies hub/migrations/NNNN_name.sql (Store.migrate); the Supabase CLI applies
supabase/migrations/<timestamp>_NNNN_name.sql (`supabase db push`). Either may set up a
database, and the other must then find nothing to do: so the files are the same, the CLI's
order is the hub's, and every migration records its own version in schema_migrations.
"""

import re
import shutil
import subprocess
from pathlib import Path

from hub.store import _load_migrations

ROOT = Path(__file__).resolve().parents[3]
HUB = ROOT / "hub/migrations"
SUPABASE = ROOT / "supabase/migrations"
FIX = "run supabase/sync-migrations.sh"
COPY = re.compile(r"^(\d{14})_(\d{4}_[a-z0-9_]+\.sql)$")


def hub_files() -> list[Path]:
    return sorted(HUB.glob("[0-9]*.sql"))


def supabase_copies() -> dict[str, tuple[str, Path]]:
    """Hub file name -> (CLI version, path) for every file in supabase/migrations."""
    copies: dict[str, tuple[str, Path]] = {}
    for path in sorted(SUPABASE.iterdir()):
        match = COPY.match(path.name)
        assert match, f"supabase/migrations/{path.name} is not <14-digit timestamp>_NNNN_name.sql"
        assert match.group(2) not in copies, f"two copies of {match.group(2)}"
        copies[match.group(2)] = (match.group(1), path)
    return copies


def test_the_hub_reads_the_files_this_test_reads() -> None:
    assert [name for _, name, _ in _load_migrations()] == [p.name for p in hub_files()]
    assert len(hub_files()) >= 2


def test_every_hub_migration_has_one_identical_supabase_copy() -> None:
    copies = supabase_copies()
    for path in hub_files():
        assert path.name in copies, f"no copy of hub/migrations/{path.name}: {FIX}"
        assert copies[path.name][1].read_bytes() == path.read_bytes(), (
            f"{copies[path.name][1].name} differs from hub/migrations/{path.name}: {FIX}")


def test_every_supabase_migration_is_a_hub_migration() -> None:
    # A migration only the CLI applies would be unknown to a hub that migrates by itself.
    extra = set(supabase_copies()) - {p.name for p in hub_files()}
    assert not extra, f"supabase/migrations has files with no hub migration: {sorted(extra)}"


def test_the_cli_applies_them_in_the_hubs_order() -> None:
    copies = supabase_copies()
    by_timestamp = sorted(copies, key=lambda name: copies[name][0])
    assert by_timestamp == sorted(copies), (
        "the timestamps of supabase/migrations must increase with the hub's numbers")


def test_every_migration_records_its_own_version() -> None:
    for version, name, text in _load_migrations():
        statement = (f"insert into schema_migrations (version, name) values ({version}, "
                     f"'{name}')\n    on conflict (version) do nothing;\n")
        assert text.endswith(statement), (
            f"hub/migrations/{name} must end with:\n{statement}(so that the hub knows it is "
            "applied when the Supabase CLI applied it)")


def test_the_first_migration_creates_the_table_the_others_record_in() -> None:
    first = _load_migrations()[0][2]
    assert "create table if not exists schema_migrations (" in first
    assert "alter table schema_migrations enable row level security;" in first


def test_the_sync_script_copies_a_new_migration_after_the_others_and_only_once(
        tmp_path: Path) -> None:
    for folder in ("hub/migrations", "supabase"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    new = tmp_path / "hub/migrations/0099_later.sql"
    new.write_bytes(b"select 99;\n")
    last = max(path.name for path in (tmp_path / "supabase/migrations").iterdir())

    first = subprocess.run(["sh", str(tmp_path / "supabase/sync-migrations.sh")],
                           capture_output=True, text=True, check=True)
    again = subprocess.run(["sh", str(tmp_path / "supabase/sync-migrations.sh")],
                           capture_output=True, text=True, check=True)

    copies = sorted((tmp_path / "supabase/migrations").iterdir())
    assert copies[-1].name.endswith("_0099_later.sql") and copies[-1].name > last
    assert copies[-1].read_bytes() == new.read_bytes()
    assert first.stdout == f"added supabase/migrations/{copies[-1].name}\n"
    assert again.stdout == ""
    assert len(copies) == len(list(SUPABASE.iterdir())) + 1
